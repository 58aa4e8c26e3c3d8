"""Reading HuBERT weight files so that a damaged or wrong file is one line naming it, not a traceback.

- :func:`read_torch_file`: runs a ``torch.load``-style reader; an empty file, a Git LFS pointer, an HTML page
  (a failed download), another text file, random bytes or a file cut short becomes a
  :class:`~stok.models.hubert.configs.ConfigError` that names the file, says what it is and what to do.
- :func:`check_safetensors`: checks a ``.safetensors`` file's header against its size before any tensor is read
  (a cut download is named as such, with the byte counts).
- :func:`read_json`: ``config.json`` and friends; a cut or hand-broken file names the line and column.

The original exception stays chained (``STOK_DEBUG=1`` shows it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

from stok.models.hubert.configs import ConfigError

AGAIN = "the file is damaged or incomplete (a cut download or copy?): download or copy it again"


def sniff(path: str) -> Optional[str]:
    """What a file that is not a weights file looks like it is (None when it looks binary)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the weights: fetch them (git lfs pull) or download the file itself"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "is an HTML/XML page (a failed or redirected download?), not weights: download the file again"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a multi-byte character cut at the 4 KB boundary
                return None
        return "is a text file, not a PyTorch checkpoint: check the path"
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(". ")[0]
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_torch_file(path: str, reader: Callable[[str], Any], what: str = "PyTorch checkpoint") -> Any:
    """``reader(path)``, with every failure to decode the file turned into a one-line :class:`ConfigError`."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file")
    looks = sniff(path)
    if looks is not None:
        raise ConfigError(f"{path} {looks}")
    try:
        return reader(path)
    except ConfigError:
        raise
    except MemoryError as e:  # a damaged length field can ask for absurd allocations
        raise ConfigError(f"{path}: cannot be read as a {what} ({_reason(e)}); {AGAIN}") from e
    except Exception as e:  # whatever the bytes make the unpickler/zip reader do: it is the file
        if "TORCH_FORCE_WEIGHTS_ONLY_LOAD" in str(e) or "pickle_module" in str(e):
            raise ConfigError(f"{path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which forbids the restricted "
                              "unpickler this file needs; unset it for this command") from e
        if "Weights only load failed" in str(e):
            raise ConfigError(f"{path}: holds more than tensors (a pickled object), which a {what} must not; "
                              "save it as a plain state dict") from e
        raise ConfigError(f"{path}: cannot be read as a {what} ({_reason(e)}); {AGAIN}") from e


def check_safetensors(path: str) -> None:
    """Raise :class:`ConfigError` unless the header of ``path`` is sound and its data ranges fit the file."""
    looks = sniff(path)
    if looks is not None and "text file" not in looks:
        raise ConfigError(f"{path} {looks}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n <= 0 or n > 100_000_000:
            raise ConfigError(f"{path}: not a safetensors file (no valid header length); {AGAIN}")
        if 8 + n > size:
            raise ConfigError(f"{path}: cut short: its header alone needs {8 + n} bytes, the file has {size}; {AGAIN}")
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ConfigError(f"{path}: the safetensors header is unreadable ({_reason(e)}); {AGAIN}") from e
    data = size - 8 - n
    need = max(ends, default=0)
    if need > data:
        raise ConfigError(f"{path}: cut short: its header lists {need} bytes of tensor data, the file holds {data}; "
                          f"{AGAIN}")
    if need < data:
        raise ConfigError(f"{path}: {data - need} bytes past the last tensor the header lists; {AGAIN}")


def read_json(path: str, what: str = "file") -> dict:
    """A JSON object from ``path``; a missing, cut or malformed file is a one-line :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    if not raw.strip():
        raise ConfigError(f"{path}: the {what} is empty; restore it from the model's download")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {e.start}); restore it from the model's "
                          "download") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: the {what} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}): "
                          "it is cut short or was edited by hand; restore it from the model's download") from e
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: the {what} must hold a JSON object, not {type(obj).__name__}")
    return obj

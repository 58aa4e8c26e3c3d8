"""What produced a dump, recorded in its output dir, so that a resumed dump never mixes two models' outputs.

``<output_dir>/<name>.fingerprint.json`` holds the dump's fingerprint: the model's own
(:meth:`stok.dump.model_api.DumpModel.fingerprint`: its identity, checksums of its weights files, every
setting that changes the values) plus the engine settings that change what is stored. A rerun into the same
dir compares first (:func:`check_fingerprint`) and refuses, naming what differs, unless ``--overwrite``;
then :func:`start_output` creates the dir, removes old outputs (``--overwrite``) and records the fingerprint.

Weights checksums (SHA-256) are cached in ``$STOK_CACHE/checksums.json`` (else ``~/.cache/stok/``), keyed by
the file's path, size, mtime, ctime and inode, so a 1 GB checkpoint is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional

from stok.cli import UserError
from stok.fileio import atomic_open, atomic_write_text

log = logging.getLogger("stok.dump")
_memo: Dict[str, tuple] = {}
RACY_SECONDS = 2.0  # coarse filesystem timestamps (FAT: 2 s)


def _cache_path() -> str:
    root = os.environ.get("STOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "stok")
    return os.path.join(root, "checksums.json")


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _read_cache() -> dict:
    try:
        with open(_cache_path(), encoding="utf-8") as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, from the cache when the file is unchanged since it was last read.

    A file changed less than ``RACY_SECONDS`` ago is not cached: a rewrite within the same timestamp tick
    would keep its size, times and inode."""
    path = os.path.abspath(path)
    key = list(_stat_key(path))
    hit = _memo.get(path)
    if hit and list(hit[0]) == key:
        return hit[1]
    cache = _read_cache()
    entry = cache.get(path)
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
        _memo[path] = (key, entry["sha256"])
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if time.time_ns() - max(key[1], key[2]) < RACY_SECONDS * 1e9:
        return digest
    _memo[path] = (key, digest)
    cache = {p: e for p, e in cache.items() if os.path.exists(p)}  # forget deleted files
    cache[path] = {"stat": key, "sha256": digest}
    try:
        with atomic_open(_cache_path(), "w") as f:
            json.dump(cache, f)
    except OSError as e:  # a read-only home: checksums are recomputed next time
        log.debug("checksum cache not written: %s", e)
    return digest


def weights_checksum(spec: str):
    """Identity of a weights source: a file's SHA-256, ``{file: sha256}`` for the files of a model dir,
    or ``{"name": spec}`` for what is not on disk (a torchaudio bundle name)."""
    if os.path.isfile(spec):
        return file_sha256(spec)
    if os.path.isdir(spec):
        return {n: file_sha256(os.path.join(spec, n)) for n in sorted(os.listdir(spec))
                if os.path.isfile(os.path.join(spec, n))}
    return {"name": spec}


def module_checksum(module) -> str:
    """SHA-256 of a torch module's state dict (names, dtypes, shapes, bytes): for weights not read from a file."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}.fingerprint.json")


def _leaves(d, prefix: str = "") -> Dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty dicts and other values are leaves)."""
    if not (isinstance(d, dict) and d):
        return {prefix: d}
    out: Dict[str, object] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


def differences(old: dict, new: dict) -> List[str]:
    """``key: old -> new`` for every leaf that differs (nested keys dotted), in the new fingerprint's order
    (a model's identity comes first)."""
    a, b = _leaves(old), _leaves(new)
    keys = list(b) + [k for k in a if k not in b]
    return [f"{k}: {_short(a.get(k, '(absent)'))} -> {_short(b.get(k, '(absent)'))}"
            for k in keys if a.get(k, "(absent)") != b.get(k, "(absent)")]


def _has_outputs(out_dir: str, name: str) -> bool:
    from stok.dump.merge import done_keys

    return os.path.isdir(out_dir) and bool(done_keys(out_dir, name))


def _normalise(fp: dict) -> dict:
    """As read back from JSON (tuples become lists ...), in the same key order."""
    return json.loads(json.dumps(fp))


def refuse_other_record(path: str, record: dict, holds: str) -> None:
    """Raise :class:`UserError` unless the JSON record at ``path`` equals ``record``; ``holds`` says what the
    output dir holds (``"dump/x holds a s3_tokens dump"``). Used wherever outputs are added to a dir that
    already holds some: dumps here, decoded audio in ``stok-decode``."""
    fix = "use --overwrite to replace it, or another --output_dir"
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{holds} with no record of what made it ({path} is missing: an earlier stok, or "
                        f"another tool); adding to it could mix outputs: {fix}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); {fix}") from None
    diff = differences(old, _normalise(record))
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise UserError(f"{holds} made by another model or settings ({shown}); adding to it would mix the two: {fix}")


def check_fingerprint(out_dir: str, name: str, fp: dict) -> None:
    """Raise :class:`UserError` if ``out_dir`` holds ``name`` outputs made with another fingerprint (nothing is
    written). A dir without outputs of ``name`` (fresh, or a run that stopped before its first record) passes."""
    if _has_outputs(out_dir, name):
        refuse_other_record(fingerprint_path(out_dir, name), fp, f"{out_dir} holds a {name} dump")


def start_output(out_dir: str, name: str, fp: dict, overwrite: bool) -> None:
    """After every check passed: create ``out_dir``, remove old ``name`` outputs (``overwrite``) and record
    ``fp`` atomically."""
    from stok.dump.merge import remove_outputs

    os.makedirs(out_dir, exist_ok=True)
    if overwrite:
        remove_outputs(out_dir, name)
    atomic_write_text(json.dumps(_normalise(fp), indent=2) + "\n", fingerprint_path(out_dir, name))


def read_fingerprint(out_dir: str, name: str) -> Optional[dict]:
    try:
        with open(fingerprint_path(out_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

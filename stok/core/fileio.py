"""Crash-safe file writing used by every writer in stok: a temporary file beside the target, fsync, rename.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never a torn one;
the temporary file is removed when writing fails. :func:`check_output_dir` tells, without touching anything,
whether an output directory could be created and written (tools check it before they write).
:func:`cache_dir` is where stok keeps what it caches between runs (weights checksums, converted models, the MKL shim).
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Any, Iterator

from stok.core.errors import UserError


def fsync_dir(path: str) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", suffix: str = "") -> Iterator[IO[Any]]:
    """``with atomic_open(p) as f: ...`` writes ``p`` atomically (``mode`` "wb" or "w"; text is UTF-8).

    ``suffix`` ends the temporary name, for writers that pick a format by extension (e.g. ``.wav``)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}{suffix}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(d)


def atomic_write_text(text: str, path: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str) -> None:
    import torch

    with atomic_open(path) as f:
        torch.save(obj, f)


def check_output_dir(path: str, what: str = "--output_dir") -> None:
    """Raise :class:`UserError` unless ``path`` is (or could be created as) a writable directory.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    if not path:
        raise UserError(f"{what} is empty; give a directory for the output")
    p = os.path.abspath(path)
    if os.path.exists(p):
        if not os.path.isdir(p):
            raise UserError(f"{what} {path} exists and is not a directory; choose another path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{what} {path} is not writable; fix its permissions or choose another directory")
        return
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be created: {parent} is not writable")


def cache_dir(*parts: str) -> str:
    """``$STOK_CACHE`` (default ``~/.cache/stok``), joined with ``parts``; nothing is created."""
    root = os.environ.get("STOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "stok")
    return os.path.join(root, *parts)

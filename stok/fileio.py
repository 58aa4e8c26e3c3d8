"""Crash-safe file writing used by every writer in stok: a temporary file beside the target, fsync, rename.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never a torn one;
the temporary file is removed when writing fails.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Any, Iterator


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

"""Identity of model weights: SHA-256 of files (cached), of model dirs, of in-memory modules.

Checksums are cached in ``$STOK_CACHE/checksums.json`` (else ``~/.cache/stok/``), keyed by the file's path,
size, mtime, ctime and inode, so a 1 GB checkpoint is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict

from stok.core.fileio import atomic_open, cache_dir

log = logging.getLogger("stok")
_memo: Dict[str, tuple] = {}
RACY_SECONDS = 2.0  # coarse filesystem timestamps (FAT: 2 s)


def _cache_path() -> str:
    return cache_dir("checksums.json")


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


def sha256_of(path: str) -> str:
    """SHA-256 of a file's bytes, read now (no cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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
    digest = sha256_of(path)
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

"""The on-disk k-means sample: the sampled frames in one ``.npy`` file, read block by block by the Lloyd passes.

A sample directory (``stok-kmeans learn``: ``<model stem>.sample/`` beside the model, or ``--sample_dir``):

- ``frames.npy``: ``[n, D]`` float16 (default: 2 bytes a value) or float32, rows in the sampler's order; a
  plain NumPy file (``numpy.load(path, mmap_mode="r")`` reads it).
- ``sample.json``: what made the sample (the feature scp's path and SHA-256, the size and modification time of
  every ark file it names, percent, max_frames, sample_by, seed, dtype) and what it holds (frame and utterance
  counts, failed entries). Written last: a directory without it holds no finished sample.

A rerun with the same settings on unchanged features reuses a finished sample; any difference samples again and
replaces it (two samples are never mixed). Frames are read with plain ``pread`` calls into reused buffers, not
through a memory map (mapped file pages would count in the process's resident memory), by a reader thread
that fetches the next block while the current one is computed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import queue
import struct
import threading
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from stok.core.fileio import atomic_open, fsync_dir
from stok.models.kmeans.sample import _OFFSET, FeatsError

log = logging.getLogger("stok.kmeans")

FRAMES, RECORD = "frames.npy", "sample.json"
FORMAT_VERSION = 1
HEADER_BYTES = 128  # the .npy header, padded to a fixed size so that it can be rewritten with the final count
FLOAT16_MAX = 65504.0
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def npy_header(n: int, dim: int, dtype: np.dtype) -> bytes:
    """A NumPy format 1.0 header for a C-order ``[n, dim]`` array, padded with spaces to HEADER_BYTES."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (np.dtype(dtype).str, n, dim)
    length = HEADER_BYTES - 10
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


def made_by(scp: str, entries: Sequence[Tuple[str, str]], percent: float, max_frames: int, sample_by: str,
            seed: int, dtype: str) -> dict:
    """What decides a sample's rows and storage: settings, the scp's checksum, its ark files' sizes and times."""
    h = hashlib.sha256()
    with open(scp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    arks: Dict[str, List[int]] = {}
    for _, spec in entries:
        m = _OFFSET.match(spec)
        if m and m.group("path") not in arks and os.path.isfile(m.group("path")):
            st = os.stat(m.group("path"))
            arks[m.group("path")] = [st.st_size, st.st_mtime_ns]
    return {"version": FORMAT_VERSION, "feats_scp": os.path.abspath(scp), "scp_sha256": h.hexdigest(),
            "arks": {os.path.abspath(p): v for p, v in sorted(arks.items())}, "percent": percent,
            "max_frames": max_frames, "sample_by": sample_by, "seed": seed, "dtype": dtype}


def remove_sample(directory: str) -> None:
    """Remove a sample (finished or not) from ``directory``: its record first, then its frames."""
    for path in [os.path.join(directory, RECORD), os.path.join(directory, FRAMES),
                 *glob.glob(os.path.join(glob.escape(directory), FRAMES + ".tmp*"))]:
        if os.path.exists(path):
            os.remove(path)
    try:
        os.rmdir(directory)  # only when nothing else is in it
    except OSError:
        pass


def find_sample(directory: str, record: dict) -> Tuple[Optional[dict], str]:
    """(the stored record, "") of a finished sample in ``directory`` made exactly by ``record``, else (None, why)."""
    path = os.path.join(directory, RECORD)
    if not os.path.isfile(path):
        return None, "no finished sample"
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        before = stored["made_by"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable {RECORD} ({e})"
    diff = [k for k in sorted(set(record) | set(before)) if record.get(k) != before.get(k)]
    if diff:
        return None, "made with other settings or features (" + ", ".join(diff) + " differ)"
    try:
        frames = DiskFrames(os.path.join(directory, FRAMES))
    except (OSError, ValueError) as e:
        return None, f"unreadable {FRAMES} ({e})"
    if (frames.n, frames.dim) != (stored["sample"]["sampled_frames"], stored["sample"]["dim"]):
        return None, f"{FRAMES} holds [{frames.n}, {frames.dim}], {RECORD} says otherwise"
    return stored, ""


class FileSink:
    """Receives the sampled rows in order and writes ``frames.npy`` (through a temporary file); ``finish``
    then writes ``sample.json`` and returns the frames as a :class:`DiskFrames`."""

    def __init__(self, directory: str, n: int, dim: int, dtype: str, record: dict, buffer_bytes: int = 16 << 20):
        os.makedirs(directory, exist_ok=True)
        remove_sample(directory)  # an older or unfinished sample is replaced, never extended
        os.makedirs(directory, exist_ok=True)
        self.directory, self.dim, self.record = directory, dim, record
        self.dtype = DTYPES[dtype]
        self.tmp = os.path.join(directory, f"{FRAMES}.tmp{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.f.write(npy_header(n, dim, self.dtype))
        self.buf = np.empty((max(1, buffer_bytes // (dim * self.dtype.itemsize)), dim), self.dtype)
        self.fill = self.count = 0

    def put(self, rows: np.ndarray, key: str = "") -> None:
        if self.dtype.itemsize == 2 and len(rows):
            big = float(np.abs(rows).max())
            if big > FLOAT16_MAX:
                raise FeatsError(f"{key or 'a sampled utterance'}: values up to {big:.4g} exceed float16's range "
                                 f"({FLOAT16_MAX:g}): use --sample_dtype float32")
        pos = 0
        while pos < len(rows):
            take = min(len(rows) - pos, len(self.buf) - self.fill)
            self.buf[self.fill:self.fill + take] = rows[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == len(self.buf):
                self._flush()
        self.count += len(rows)

    def _flush(self) -> None:
        self.f.write(memoryview(self.buf[:self.fill]).cast("B"))
        self.fill = 0

    def finish(self, info: dict, failures: Dict[str, str]) -> "DiskFrames":
        self._flush()
        self.f.seek(0)
        self.f.write(npy_header(self.count, self.dim, self.dtype))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        frames = os.path.join(self.directory, FRAMES)
        os.replace(self.tmp, frames)
        with atomic_open(os.path.join(self.directory, RECORD), "w") as f:
            json.dump({"made_by": self.record, "sample": info, "failures": failures}, f, indent=1)
        fsync_dir(self.directory)
        return DiskFrames(frames)

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        remove_sample(self.directory)


class DiskFrames:
    """The frames of a ``.npy`` file, read in blocks of rows (a frame source for ``lloyd.Lloyd``)."""

    def __init__(self, path: str, buffers: int = 3):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype not in DTYPES.values():
            raise ValueError(f"{path}: expected a C-order [n, D] float16/float32 array, got {shape} {dtype}")
        self.n, self.dim = int(shape[0]), int(shape[1])
        self.dtype = dtype
        self.row_bytes = self.dim * dtype.itemsize
        size = os.path.getsize(path)
        if size != self.offset + self.n * self.row_bytes:
            raise ValueError(f"{path}: {size} bytes, expected {self.offset + self.n * self.row_bytes}")
        self.buffers = buffers
        self._pool: List[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    def _read(self, fd: int, out: np.ndarray, row: int) -> None:
        view = memoryview(out).cast("B")
        off, done = self.offset + row * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], off + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at byte {off + done}")
            done += got

    def blocks(self, block_rows: int, ids: Optional[Sequence[int]] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(start, rows [r, D] in the storage dtype)`` per block; a block's rows are valid until the next one."""
        ids = list(range(-(-self.n // block_rows)) if ids is None else ids)
        if not ids:
            return
        rows_max = min(block_rows, self.n)
        if not self._pool or self._pool[0].shape[0] != rows_max:
            self._pool = []  # the old buffers go before the new ones come
            self._pool = [np.empty((rows_max, self.dim), self.dtype) for _ in range(self.buffers)]
        free: "queue.Queue[int]" = queue.Queue()
        ready: "queue.Queue" = queue.Queue()
        for i in range(len(self._pool)):
            free.put(i)
        stop = threading.Event()
        fd = os.open(self.path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def reader():
            try:
                for b in ids:
                    slot = free.get()
                    if stop.is_set():
                        return
                    s = b * block_rows
                    rows = min(self.n, s + block_rows) - s
                    self._read(fd, self._pool[slot][:rows], s)
                    ready.put((s, slot, rows))
                ready.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                ready.put(e)

        thread = threading.Thread(target=reader, name="kmeans-sample-reader", daemon=True)
        thread.start()
        held = None
        try:
            while True:
                item = ready.get()
                if held is not None:
                    free.put(held)
                    held = None
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                s, held, rows = item
                yield s, torch.from_numpy(self._pool[held][:rows])
        finally:
            stop.set()
            free.put(0)
            thread.join()
            os.close(fd)

    def rows(self, idx) -> torch.Tensor:
        """float32 rows ``idx`` (any order, repeats allowed), read run by run of consecutive rows."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"row index out of range [0, {self.n})")
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), self.dim), self.dtype)
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)
        ends = np.append(starts[1:], len(uniq))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for a, b in zip(starts.tolist(), ends.tolist()):
                self._read(fd, out[a:b], int(uniq[a]))
        finally:
            os.close(fd)
        return torch.from_numpy(out[inverse]).float()

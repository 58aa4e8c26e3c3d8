"""A dump record as a cut field that plain lhotse reads exactly, every frame, without stok installed.

Each cut of a dump's cut set carries its record as a lhotse ``Array`` named after the dump (``s3_tokens``,
``st_codes``, ``km_labels``, ``feats``) and the model's frame shift as ``<name>_frame_shift`` (seconds);
``cut.load_<name>()`` returns the whole record, every frame. Not a ``TemporalArray``: lhotse loads one for
a cut as ``round(duration / frame_shift)`` frames, and stok's models give a frame to every started hop, so
the last frame of about half the cuts would be lost.

Where the array lives, by the record's Kaldi type (the arks themselves are never changed):

- float matrices (``FM``; ``CM``/``CM2``/``CM3`` compressed): lhotse's built-in ``kaldiio`` storage type at
  the record itself (``storage_path`` = the scp's ``/abs/x.ark:offset``), read by ``kaldi_native_io``
  (Kaldi's own decoder: float32, as ``copy-matrix``/``copy-feats`` print). Features, and SpeechTokenizer codes
  (exact integers in float32: ``.astype(np.int64)`` needs no rounding; two-byte code records of earlier stok
  versions also decode to exact integers there). Nothing is copied.
- Kaldi int32 vectors (S3 tokens, k-means labels), which no lhotse reader decodes: a copy in
  ``<name>.h5`` beside the scp, one int32 dataset per utterance (lhotse's ``numpy_hdf5`` type, read with
  h5py): ~4 bytes a token plus ~400 bytes an utterance, written when the cut set is written (under a
  temporary name, renamed before the cut set; at scale in a child process, beside the cut lines). So are any
  other record types (never written by stok).

A reader needs ``lhotse``, ``kaldi_native_io`` (matrices) and ``h5py`` (tokens, labels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import BinaryIO, Dict, Optional, Tuple

import numpy as np

from stok.core.ark import COMPRESSED, read_array, read_shape, split_location

KALDI_TYPE, HDF5_TYPE = "kaldiio", "numpy_hdf5"
KALDI_KINDS = ("FM",) + COMPRESSED  # record types lhotse's kaldiio type returns as stored
FRAME_SHIFT_SUFFIX = "_frame_shift"


def h5_name(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}.h5")


def h5_key(utt: str) -> str:
    """The dataset name of ``utt`` (HDF5 reads ``/`` as a group separator): ``%`` and ``/`` percent-encoded."""
    return utt.replace("%", "%25").replace("/", "%2F") if ("/" in utt or "%" in utt) else utt


COPY_IN_CHILD_FROM = 5000  # records; fewer are copied in this process (a child costs ~0.5 s to start)


class ArrayCopy:
    """An HDF5 file of one dataset per key (contiguous, no chunking or filters: lhotse's ``NumpyHdf5Reader``
    reads it with a cached handle)."""

    def __init__(self, path: str):
        import h5py

        self.h5py, self.path = h5py, path
        self.file = h5py.File(path, "w")
        self.dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self.lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
        self.lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)
        self.types: Dict[np.dtype, object] = {}

    def add(self, key: str, array: np.ndarray) -> None:
        h5 = self.h5py
        array = np.ascontiguousarray(array)
        tid = self.types.get(array.dtype)
        if tid is None:
            tid = self.types[array.dtype] = h5.h5t.py_create(array.dtype)
        space = h5.h5s.create_simple(array.shape) if array.ndim else h5.h5s.create(h5.h5s.SCALAR)
        dataset = h5.h5d.create(self.file.id, h5_key(key).encode("utf-8"), tid, space, dcpl=self.dcpl, lcpl=self.lcpl)
        if array.size:
            dataset.write(h5.h5s.ALL, h5.h5s.ALL, array)

    def close(self) -> None:
        self.file.close()
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())


def write_copy(h5_path: str, list_path: str) -> int:
    """Copy the records of ``list_path`` (lines ``offset<TAB>key<TAB>ark``, in offset order) into a new
    ``h5_path``; returns how many."""
    copy = ArrayCopy(h5_path)
    handles: Dict[str, BinaryIO] = {}
    n = 0
    try:
        with open(list_path, encoding="utf-8") as f:
            for line in f:
                offset, key, path = line.rstrip("\n").split("\t", 2)
                if path not in handles:
                    handles[path] = open(path, "rb")
                array, _ = read_array(handles[path], int(offset), f"{path}:{offset}")
                copy.add(key, array)
                n += 1
        copy.close()
    finally:
        if copy.file.id.valid:
            copy.file.close()
        for fd in handles.values():
            fd.close()
    return n


class RecordCopy:
    """``<name>.h5``, the copy of the records lhotse cannot read in the ark: listed while the arks are scanned,
    then written under a temporary name, in a child process when there are many (in parallel with the cut
    lines: HDF5 takes ~30 us a dataset) and renamed into place by :meth:`commit`."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.list_path, self.log_path = self.tmp + ".list", self.tmp + ".log"
        self.list = open(self.list_path, "w", encoding="utf-8")
        self.count = 0
        self.proc: Optional[subprocess.Popen] = None

    def add(self, path: str, offset: int, key: str) -> None:
        self.list.write(f"{offset}\t{key}\t{path}\n")
        self.count += 1

    def start(self) -> None:
        self.list.close()
        if not self.count:
            return
        if self.count < COPY_IN_CHILD_FROM:
            write_copy(self.tmp, self.list_path)
            return
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "stok.dump.cut_fields", self.tmp, self.list_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def commit(self) -> int:
        """Wait for the copy and rename it into place (or remove a stale one when no record needed it); returns
        the number of records copied."""
        if self.proc is not None:
            if self.proc.wait():
                with open(self.log_path, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"copying the int32 records into {self.path} failed:\n{tail}")
            self.proc = None
        if self.count:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.path):
            os.remove(self.path)
        return self.count

    def discard(self) -> None:
        """Stop a running copy and remove the temporary files (after :meth:`commit` too)."""
        if not self.list.closed:
            self.list.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in (self.tmp, self.list_path, self.log_path):
            if os.path.exists(p):
                os.remove(p)


Record = Tuple[Tuple[int, ...], bool]  # shape, and whether the array is in the h5 copy


def scan_records(entries: Dict[str, str], copy: RecordCopy) -> Dict[str, Record]:
    """Shape and place of every record, from its header (each ark opened once and read in offset order);
    the records lhotse's ``kaldiio`` type cannot return as stored (int32 vectors ...) are listed in ``copy``."""
    by_ark: Dict[str, list] = {}
    for key, loc in entries.items():
        path, offset = split_location(loc)
        by_ark.setdefault(path, []).append((offset, key))
    out: Dict[str, Record] = {}
    for path, items in by_ark.items():
        items.sort()
        with open(path, "rb") as fd:
            for offset, key in items:
                shape, kind = read_shape(fd, offset, f"{path}:{offset}")
                copied = kind not in KALDI_KINDS
                if copied:
                    copy.add(path, offset, key)
                out[key] = (tuple(shape), copied)
    return out


def field(name: str, key: str, location: str, record: Record, h5_path: str, frame_shift: float) -> dict:
    """The custom fields of one cut: ``<name>`` (a serialised lhotse ``Array``) and ``<name>_frame_shift``."""
    shape, copied = record
    if copied:
        array = {"storage_type": HDF5_TYPE, "storage_path": h5_path, "storage_key": h5_key(key), "shape": list(shape)}
    else:
        path = location if os.path.isabs(location) else os.path.abspath(location)
        array = {"storage_type": KALDI_TYPE, "storage_path": path, "storage_key": key, "shape": list(shape)}
    return {name: array, name + FRAME_SHIFT_SUFFIX: frame_shift}


if __name__ == "__main__":  # the child of RecordCopy.start
    write_copy(sys.argv[1], sys.argv[2])

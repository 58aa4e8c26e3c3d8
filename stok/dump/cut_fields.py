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
  h5py): ~4 bytes a token plus ~400 bytes an utterance, written once (to a temporary name, then renamed) when
  the cut set is written. So are any other record types (never written by stok).

A reader needs ``lhotse``, ``kaldi_native_io`` (matrices) and ``h5py`` (tokens, labels).
"""

from __future__ import annotations

import os
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


class ArrayCopy:
    """``<name>.h5`` written under a temporary name: one dataset per key (contiguous, no chunking or
    filters: lhotse's ``NumpyHdf5Reader`` reads it with a cached handle); :meth:`commit` renames it."""

    def __init__(self, path: str):
        import h5py

        self.h5py, self.path = h5py, path
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.file = h5py.File(self.tmp, "w")
        self.dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self.lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
        self.lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)
        self.types: Dict[np.dtype, object] = {}
        self.count = 0

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
        self.count += 1

    def commit(self) -> None:
        self.file.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.file.id.valid:
            self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


Record = Tuple[Tuple[int, ...], bool]  # shape, and whether the array is in the h5 copy


def scan_records(entries: Dict[str, str], copy: "LazyCopy") -> Dict[str, Record]:
    """Shape and place of every record: each ark is opened once and read in offset order; matrices from
    their headers only, int32 vectors (and other types) read whole and added to ``copy``."""
    by_ark: Dict[str, list] = {}
    for key, loc in entries.items():
        path, offset = split_location(loc)
        by_ark.setdefault(path, []).append((offset, key))
    out: Dict[str, Record] = {}
    for path, items in by_ark.items():
        items.sort()
        with open(path, "rb") as fd:
            for offset, key in items:
                out[key] = _scan_one(fd, offset, f"{path}:{offset}", key, copy)
    return out


def _scan_one(fd: BinaryIO, offset: int, where: str, key: str, copy: "LazyCopy") -> Record:
    shape, kind = read_shape(fd, offset, where)
    if kind in KALDI_KINDS:
        return tuple(shape), False
    array, _ = read_array(fd, offset, where)
    copy.get().add(key, array)
    return tuple(array.shape), True


class LazyCopy:
    """The dump's ``ArrayCopy``, created when the first record needs it."""

    def __init__(self, path: str):
        self.path = path
        self.copy: Optional[ArrayCopy] = None

    def get(self) -> ArrayCopy:
        if self.copy is None:
            self.copy = ArrayCopy(self.path)
        return self.copy

    def commit(self) -> int:
        """Rename the copy into place (or remove a stale one when no record needed it); its dataset count."""
        if self.copy is None:
            if os.path.exists(self.path):
                os.remove(self.path)
            return 0
        self.copy.commit()
        return self.copy.count

    def discard(self) -> None:
        if self.copy is not None:
            self.copy.discard()


def field(name: str, key: str, location: str, record: Record, h5_path: str, frame_shift: float) -> dict:
    """The custom fields of one cut: ``<name>`` (a serialised lhotse ``Array``) and ``<name>_frame_shift``."""
    shape, copied = record
    if copied:
        array = {"storage_type": HDF5_TYPE, "storage_path": h5_path, "storage_key": h5_key(key), "shape": list(shape)}
    else:
        path = location if os.path.isabs(location) else os.path.abspath(location)
        array = {"storage_type": KALDI_TYPE, "storage_path": path, "storage_key": key, "shape": list(shape)}
    return {name: array, name + FRAME_SHIFT_SUFFIX: frame_shift}

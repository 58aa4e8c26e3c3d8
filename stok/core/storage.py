"""How dumps are stored in Kaldi ark/scp (through kaldiio's serialiser), written crash-safely, and read back.

Storage by what a model returns per utterance (kaldiio 2.18 cannot write int 2-D arrays or float16):

- **tokens** ``[T]`` integer            -> Kaldi int32 vector, 4 bytes a token (``copy-int-vector`` reads it).
- **codes** ``[T, n_q]`` integer        -> Kaldi float32 matrix (``FM``), 4 bytes a code: frames are rows,
  codebooks columns, so the record is self-describing, and every integer below 2^24 is stored exactly, so
  plain ``kaldiio.load_scp``, Kaldi's C++ readers and ``kaldi_io`` all return exact integers
  (``array.astype(int)`` needs no rounding). Read back as int64 with :func:`load_codes`.
  Dumps written before by stok stored codes as Kaldi compressed matrices (method 4, two-byte integer,
  ``CM2``): exact in the file, but kaldiio decodes them in float32 and returns ``v + 2^-8`` for every
  ``v = 128 (mod 256)``. :func:`load_codes` still reads them exactly: for compressed records only, it rounds
  values within 2^-7 of an integer (the decoder's error is below that).
- **features** ``[T, D]`` float         -> Kaldi float32 matrix, or with ``compressed16`` a Kaldi compressed
  matrix, method 3 (two-byte, linear over the matrix's global range): half the bytes of float32, the same
  size as float16, read back transparently as float32 by kaldiio/Kaldi; the error is at most
  (max - min) / 65535 per value (about 1e-4 for HuBERT features).

Crash safety: a record is written to the ark and flushed **before** its scp line is written and flushed,
so the scp never names an incomplete record. On resume, :class:`ShardWriter` drops a torn last scp line,
checks the last recorded record and truncates any partial tail of the ark.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

import kaldiio
import numpy as np
from kaldiio.matio import read_kaldi, write_array

from stok.core.ark import COMPRESSED, read_array, split_location
from stok.core.tables import read_table

FEATURE_STORAGES = ("float32", "compressed16")
_FLOAT16_METHOD = 3  # kTwoByteAuto
MAX_EXACT_CODE = 2**24  # float32 holds every integer below this exactly
_COMPRESSED_TOLERANCE = 2.0**-7  # kaldiio's float32 decoding error on old two-byte integer code records


def encode_record(array: np.ndarray, feature_storage: str = "float32") -> Tuple[np.ndarray, Optional[int]]:
    """The array and compression method a model output is stored with (see module docstring)."""
    array = np.asarray(array)
    if array.ndim not in (1, 2):
        raise ValueError(f"a dump record must be 1-D tokens or a 2-D matrix, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if array.size and (array.min() < -(2**31) or array.max() >= 2**31):
            raise ValueError("integer codes do not fit int32")
        if array.ndim == 1:
            return array.astype(np.int32), None
        if array.size and np.abs(array.astype(np.int64)).max() >= MAX_EXACT_CODE:
            raise ValueError("integer code matrices are stored exactly only below 2^24 (float32 matrices)")
        return array.astype(np.float32), None
    if array.ndim != 2:
        raise ValueError(f"float records must be [T, D] matrices, got shape {array.shape}")
    if feature_storage not in FEATURE_STORAGES:
        raise ValueError(f"feature_storage must be one of {FEATURE_STORAGES}")
    method = _FLOAT16_METHOD if feature_storage == "compressed16" and array.size else None
    return array.astype(np.float32, copy=False), method  # no copy of a long utterance's float32 features


def read_scp(path: str) -> Dict[str, str]:
    """``key -> 'ark:offset'`` of a dump scp (empty if the file does not exist); a torn last line (written
    without its newline by a killed run) is ignored."""
    if not os.path.exists(path):
        return {}
    return read_table(path, scp=True, torn_tail=True)


def _record_end(ark_path: str, offset: int) -> Optional[int]:
    """Byte position just past the record at ``offset``, or None if it is unreadable."""
    try:
        with open(ark_path, "rb") as fd:
            fd.seek(offset)
            read_kaldi(fd)
            return fd.tell()
    except Exception:
        return None


class ShardWriter:
    """Appends records to ``<stem>.ark`` + ``<stem>.scp`` (one per rank); resumable.

    ``done`` holds the keys already recorded in this shard when it was opened.
    """

    def __init__(self, stem: str, feature_storage: str = "float32"):
        self.ark_path, self.scp_path = stem + ".ark", stem + ".scp"
        self.feature_storage = feature_storage
        entries = self._recover()
        self.done = {k for k, _ in entries}
        self._ark = open(self.ark_path, "ab")
        self._scp = open(self.scp_path, "ab")

    def _recover(self) -> List[Tuple[str, str]]:
        entries = list(read_scp(self.scp_path).items())
        ark_size = os.path.getsize(self.ark_path) if os.path.exists(self.ark_path) else 0
        # keep the longest prefix of entries whose last record is intact
        good_end = 0
        while entries:
            offset = int(entries[-1][1].rsplit(":", 1)[1])
            end = _record_end(self.ark_path, offset) if offset < ark_size else None
            if end is not None:
                good_end = end
                break
            entries.pop()
        if ark_size > good_end or os.path.exists(self.scp_path):
            with open(self.ark_path, "ab") as f:
                f.truncate(good_end)
            tmp = self.scp_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(f"{k} {v}\n" for k, v in entries)
            os.replace(tmp, self.scp_path)
        return entries

    def write(self, key: str, array: np.ndarray) -> None:
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"utterance id {key!r} is empty or contains whitespace")
        array, method = encode_record(array, self.feature_storage)
        self._ark.write((key + " ").encode("utf-8"))
        offset = self._ark.tell()
        if method is None and array.dtype == np.float32 and array.ndim == 2:
            write_float_matrix(self._ark, array)
        else:
            write_array(self._ark, array, compression_method=method)
        self._ark.flush()  # the record is complete on disk before the scp names it
        self._scp.write(f"{key} {os.path.abspath(self.ark_path)}:{offset}\n".encode("utf-8"))
        self._scp.flush()

    def close(self) -> None:
        for f in (self._ark, self._scp):
            f.flush()
            os.fsync(f.fileno())
            f.close()


def write_float_matrix(fd: BinaryIO, array: np.ndarray) -> None:
    """The bytes kaldiio's ``write_array`` writes for an uncompressed float32 matrix (binary marker, ``FM``, rows,
    columns, little-endian data), the data written from the array itself: no copy of an hour's features."""
    fd.write(b"\0BFM \4" + struct.pack("<i", array.shape[0]) + b"\4" + struct.pack("<i", array.shape[1]))
    fd.write(memoryview(np.ascontiguousarray(array, dtype="<f4").reshape(-1)).cast("B"))


def read_scp_entries(paths: List[str]) -> Dict[str, str]:
    """Merged key -> location of several scp files; a key in two files is an error."""
    out: Dict[str, str] = {}
    for path in paths:
        for key, loc in read_scp(path).items():
            if key in out and out[key] != loc:
                raise ValueError(f"{path}: key {key!r} was also written elsewhere ({out[key]})")
            out[key] = loc
    return out


def load_scp(path: str):
    """Lazy dict-like reader: ``load_scp(p)[key]`` -> numpy array (float32 matrices, int32 vectors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scp not found: {path}")
    return kaldiio.load_scp(path)


def to_codes(array: np.ndarray, where: str = "", compressed: bool = False) -> np.ndarray:
    """Integer codes back from a stored record (int vector or integer-valued matrix) as int64.

    Matrices must hold exact integers; ``compressed`` records (old two-byte code dumps, decoded by kaldiio
    in float32) may be off by less than 2^-7 and are rounded.
    """
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    codes = np.rint(array)
    tolerance = _COMPRESSED_TOLERANCE if compressed else 0.0
    if array.size and not np.abs(codes - array).max() <= tolerance:
        raise ValueError(f"{where}: stored values are not exact integers; is this a features scp?")
    return codes.astype(np.int64)


def load_codes(path: str) -> Iterator[Tuple[str, np.ndarray]]:
    """(key, int64 codes) in scp order: ``[T]`` tokens or ``[T, n_q]`` codes, exactly as dumped."""
    handles: Dict[str, BinaryIO] = {}
    try:
        for key, location in read_scp(path).items():
            where = f"{path}:{key}"
            ark, offset = split_location(location)
            if ark not in handles:
                handles[ark] = open(ark, "rb")
            array, kind = read_array(handles[ark], offset, where)
            yield key, to_codes(array, where, compressed=kind in COMPRESSED)
    finally:
        for fd in handles.values():
            fd.close()

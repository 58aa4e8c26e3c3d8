"""One record of a dump's Kaldi ark, at its byte offset: its shape from the header alone, or the array itself.

The lhotse cut sets of a dump (``stok.dump.cuts``) point at these records instead of copying them: building a
cut set reads only each record's header (a few bytes, so a feature dump is not read again), and loading a
cut's field reads its one record (decoded by kaldiio). The record's kind (``int32_vector``, ``FM``, ``CM2`` ...)
comes with it, so readers of codes know when a value may carry kaldiio's two-byte decoding error.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Tuple

import numpy as np
from kaldiio.matio import read_kaldi

COMPRESSED = ("CM", "CM2", "CM3")


class ArkRecordError(ValueError):
    """A record that is not where its scp/cut says, or not a binary Kaldi record; names the file and offset."""


def _kind(fd: BinaryIO, where: str) -> str:
    """The record's type token (``int32_vector``, ``FM``, ``DM``, ``CM``, ``CM2``, ``CM3`` ...); ``fd`` is left after it."""
    head = fd.read(3)
    if head[:2] != b"\0B":
        raise ArkRecordError(f"{where}: no binary Kaldi record here (read {head!r}); was the ark rewritten "
                             "after the cut set was made? Run the dump again to rewrite both")
    if head[2:3] == b"\4":
        return "int32_vector"
    token = head[2:]
    while not token.endswith(b" "):
        c = fd.read(1)
        if not c or len(token) > 8:
            raise ArkRecordError(f"{where}: unreadable Kaldi record header {token!r}")
        token += c
    return token.decode("ascii", "replace").strip()


def _int(fd: BinaryIO, where: str) -> int:
    data = fd.read(5)
    if len(data) != 5 or data[0] != 4:
        raise ArkRecordError(f"{where}: malformed size in the Kaldi record header")
    return struct.unpack("<i", data[1:])[0]


def read_shape(fd: BinaryIO, offset: int, where: str = "") -> Tuple[Tuple[int, ...], str]:
    """(shape, kind) of the record at ``offset``, from its header only."""
    fd.seek(offset)
    kind = _kind(fd, where)
    if kind == "int32_vector":
        return (struct.unpack("<i", fd.read(4))[0],), kind
    if kind in ("FM", "DM"):
        return (_int(fd, where), _int(fd, where)), kind
    if kind in COMPRESSED:  # global header: min, range (float32), rows, cols (int32)
        _, _, rows, cols = struct.unpack("<ffii", fd.read(16))
        return (rows, cols), kind
    fd.seek(offset)
    return tuple(np.shape(read_kaldi(fd))), kind


_INT_PAIR = np.dtype([("size", "u1"), ("value", "<i4")])


def _int32_vector(fd: BinaryIO, where: str) -> np.ndarray:
    """The values of a Kaldi binary int32 vector (after its ``\\0B\\4`` token), read at once (kaldiio reads them
    one by one)."""
    n = struct.unpack("<i", fd.read(4))[0]
    buf = fd.read(5 * n)
    if len(buf) != 5 * n:
        raise ArkRecordError(f"{where}: truncated int32 vector")
    pairs = np.frombuffer(buf, dtype=_INT_PAIR)
    if n and not (pairs["size"] == 4).all():
        raise ArkRecordError(f"{where}: malformed int32 vector")
    return pairs["value"].astype(np.int32)


def read_array(fd: BinaryIO, offset: int, where: str = "") -> Tuple[np.ndarray, str]:
    """(array, kind) of the record at ``offset``: int32 vectors as int32, matrices as float32 (decoded by kaldiio)."""
    fd.seek(offset)
    kind = _kind(fd, where)
    if kind == "int32_vector":
        return _int32_vector(fd, where), kind
    fd.seek(offset)
    return np.asarray(read_kaldi(fd)), kind


def split_location(location: str) -> Tuple[str, int]:
    """``/path/x.ark:1234`` (an scp value) -> (path, offset)."""
    path, sep, offset = location.rpartition(":")
    if not sep or not offset.isdigit():
        raise ArkRecordError(f"{location!r} is not an 'ark_path:offset' scp entry")
    return path, int(offset)

"""lhotse readers of the cut sets that earlier stok versions wrote (``TemporalArray`` fields in stok's own storage).

Cut sets written now need none of this: their fields are in lhotse's own storage types
(:mod:`stok.dump.cut_fields`). Cut sets of earlier stok versions point into the dump's ark with two storage
types that only this module's readers know; importing it registers them with lhotse (``stok-export-shar``
does), so those cut sets still load:

- ``stok_kaldi_ark``: the record as stored: int32 vectors (S3 tokens, k-means labels) as int32,
  float matrices (features) as float32;
- ``stok_kaldi_ark_codes``: integer code matrices (SpeechTokenizer codes, stored as exact float32 matrices)
  as int32 ``[T, n_q]``; a record that does not hold exact integers is an error (earlier stok versions'
  two-byte compressed code records are rounded within 2^-7, as ``stok.core.storage.load_codes`` does).

``storage_path`` is the ark file; ``storage_key`` is the record's byte offset (the number after the colon in
the scp), optionally followed by ``:<frames>``, lhotse's frame count for the whole cut: a read that reaches it
returns every frame to the end of the record (lhotse cuts a temporal array at ``round(duration /
frame_shift)`` frames, stok's models give a frame to every started hop).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from lhotse.features.io import FeaturesReader, register_reader

from stok.core.ark import COMPRESSED, read_array
from stok.core.storage import to_codes

STORAGE_TYPE = "stok_kaldi_ark"
CODES_STORAGE_TYPE = "stok_kaldi_ark_codes"


def parse_key(key: str) -> Tuple[int, Optional[int]]:
    offset, _, frames = str(key).partition(":")
    return int(offset), (int(frames) if frames else None)


@register_reader
class StokArkReader(FeaturesReader):
    """lhotse reader of one record of a stok dump ark (see the module docstring)."""

    name = STORAGE_TYPE

    def __init__(self, storage_path: str, *args, **kwargs):
        super().__init__()
        self.storage_path = str(storage_path)

    def convert(self, array: np.ndarray, kind: str, where: str) -> np.ndarray:
        return array

    def read(self, key: str, left_offset_frames: int = 0, right_offset_frames: Optional[int] = None) -> np.ndarray:
        offset, cut_frames = parse_key(key)
        where = f"{self.storage_path}:{offset}"
        with open(self.storage_path, "rb") as fd:
            array, kind = read_array(fd, offset, where)
        array = self.convert(array, kind, where)
        if cut_frames is not None and right_offset_frames is not None and right_offset_frames >= cut_frames:
            right_offset_frames = None  # the read reaches the cut's end: every frame to the record's end
        return array[left_offset_frames:right_offset_frames]


@register_reader
class StokArkCodesReader(StokArkReader):
    """Integer code matrices stored as float32 matrices -> int32."""

    name = CODES_STORAGE_TYPE

    def convert(self, array: np.ndarray, kind: str, where: str) -> np.ndarray:
        return to_codes(array, where, compressed=kind in COMPRESSED).astype(np.int32)

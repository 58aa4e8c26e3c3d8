"""The training set's index in a few numpy arrays: utterances of a Kaldi dir and their teacher entries.

At LibriSpeech 960 h (281,241 utterances) one Python object per utterance (an ``Utterance``, dict entries for
every table, kaldiio's lazy scp dict) cost ~870 bytes each (232 MB held, 416 MB at the peak of reading, measured
with ``bench/corpus.py``'s corpus) and, worse, each DataLoader worker built its own scp table (150 MB private per
worker) and forked workers copy the objects they touch (reference counts and the garbage collector write to every
object, so forked pages stop being shared). Here an utterance is one row of flat arrays (115 bytes at that size:
ids 15, audio row 4, times 24, ``wav.scp`` values 60, teacher location 12) that forked workers share untouched:

- ``ids``: the utterance ids, UTF-8, one fixed-width ``bytes`` array in C-locale (byte) order, as Kaldi sorts;
- ``rec`` (int32): the row of the utterance's audio in ``specs``, the ``wav.scp`` values (one buffer + offsets);
- ``start``, ``end``, ``duration`` (float64 seconds, NaN when unknown): from ``segments`` and ``utt2dur``;
- optionally the teacher location of each row (:class:`TeacherColumn`): an ark file number and byte offset
  (``path:offset`` entries, as every stok dump writes), other locations kept as strings.

Only what training reads is read: ``wav.scp``, ``segments``, ``utt2dur`` (not ``text``/``utt2spk``). Tables are
parsed line by line into arrays chunk by chunk, so reading never holds per-line objects for the whole file; every
malformed line is an error naming ``file:line`` (the messages of :func:`stok.core.tables.read_table`).
Row access builds a :class:`stok.data.kaldi_dir.Utterance` on the fly, so code written for a list still works.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np

from stok.core.tables import TableError, split_line
from stok.data.kaldi_dir import KaldiDirError, Utterance

_CHUNK = 8192
_ARK_OFFSET = re.compile(r"^(.*):(\d+)$")


# ---------------------------------------------------------------------------------------------- table reading
def _lines(path: str, min_fields: int, max_fields: Optional[int], scp: bool, what: str,
           error: Type[TableError]) -> Iterator[List[Tuple[int, str, str]]]:
    """Chunks of ``(line number, key, rest)`` of a Kaldi table, checked as :func:`read_table` checks them."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); check the path and its permissions") from None
    with f:
        if scp:
            head = f.read(4096)
            f.seek(0)
            try:
                head.decode("utf-8")
                binary = b"\0" in head
            except UnicodeDecodeError as e:
                binary = e.start < len(head) - 4  # a character cut at the end of the sniffed block is fine
            if binary:
                raise error(f"{(what + ' ') if what else ''}{path} is not a text scp (an .ark given instead of its "
                            ".scp?)")
        chunk: List[Tuple[int, str, str]] = []
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                if scp:
                    raise error(f"{(what + ' ') if what else ''}{path} is not a text scp (an .ark given instead of "
                                "its .scp?)") from None
                raise error(f"{path}:{n}: not UTF-8 text; Kaldi lists are UTF-8") from None
            if not line:
                continue
            chunk.append((n, *split_line(line, path, n, min_fields, max_fields, scp, error)))
            if len(chunk) >= _CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _keys(keys: Sequence[str]) -> np.ndarray:
    return np.array([k.encode("utf-8") for k in keys], dtype=bytes)


def _concat(parts: List[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _sorted_unique(keys: np.ndarray, path: str, error: Type[TableError]) -> np.ndarray:
    """The permutation that sorts ``keys`` (bytes order); a repeated key is an error naming its second line."""
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    dup = np.flatnonzero(s[1:] == s[:-1]) if len(s) > 1 else np.zeros(0, dtype=np.int64)
    if len(dup):
        key = s[dup[0]].decode("utf-8")
        seen = 0
        for chunk in _lines(path, 1, None, False, "", error):
            for n, k, _ in chunk:
                if k == key:
                    seen += 1
                    if seen == 2:
                        raise error(f"{path}:{n}: duplicate key {key!r}; keys must be unique")
        raise error(f"{path}: duplicate key {key!r}; keys must be unique")
    return order


class Strings:
    """Strings in one UTF-8 buffer: row i is ``blob[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def build(cls, chunks: Iterable[List[str]]) -> "Strings":
        """The strings of ``chunks`` in order; each chunk is encoded when it comes (no list of them all is held)."""
        parts, lengths = [], []
        for strings in chunks:
            enc = [s.encode("utf-8") for s in strings]
            parts.append(np.frombuffer(b"".join(enc), dtype=np.uint8))
            lengths.append(np.fromiter((len(b) for b in enc), dtype=np.int64, count=len(enc)))
        offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
        np.cumsum(_concat(lengths, np.int64), out=offsets[1:])
        return cls(_concat(parts, np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes + self.offsets.nbytes


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``). Parsing a table of 281,241 lines
    frees its per-line strings, but the heap keeps ~100 bytes a line resident (freed chunks between live ones),
    which the trainer's RSS would keep counting; no-op where the C library has no ``malloc_trim``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------- teacher entries
@dataclass
class TeacherColumn:
    """Where each row's teacher entry is: ``arks[ark[i]]:offset[i]``; ``ark[i] == -1``: ``other[id]`` holds the
    location as written (pipes, slices); ``-2``: no entry."""

    scp: str
    arks: List[str]
    ark: np.ndarray
    offset: np.ndarray
    other: Dict[str, str]

    def take(self, rows) -> "TeacherColumn":
        return TeacherColumn(self.scp, self.arks, self.ark[rows], self.offset[rows], self.other)

    def location(self, row: int, utt_id: str) -> Optional[str]:
        a = int(self.ark[row])
        if a >= 0:
            return f"{self.arks[a]}:{int(self.offset[row])}"
        return self.other.get(utt_id) if a == -1 else None

    @property
    def nbytes(self) -> int:
        return self.ark.nbytes + self.offset.nbytes


def read_teacher_scp(scp: str, ids: np.ndarray, what: str = "") -> TeacherColumn:
    """The entries of ``scp`` for the utterance ``ids`` (sorted bytes array); rows without one get ``ark -2``."""
    keys, arks, offsets, others = [], [], [], {}
    ark_ids: Dict[str, int] = {}
    for chunk in _lines(scp, 2, None, True, what, TableError):
        a = np.empty(len(chunk), dtype=np.int32)
        o = np.zeros(len(chunk), dtype=np.int64)
        for j, (_, key, loc) in enumerate(chunk):
            m = _ARK_OFFSET.match(loc)
            if m is None:
                a[j] = -1
                others[key] = loc
            else:
                a[j] = ark_ids.setdefault(m.group(1), len(ark_ids))
                o[j] = int(m.group(2))
        keys.append(_keys([k for _, k, _ in chunk]))
        arks.append(a)
        offsets.append(o)
    k = _concat(keys, bytes)
    order = _sorted_unique(k, scp, TableError)
    k, a, o = k[order], _concat(arks, np.int32)[order], _concat(offsets, np.int64)[order]
    pos = np.minimum(np.searchsorted(k, ids), max(0, len(k) - 1))
    found = (k[pos] == ids) if len(k) else np.zeros(len(ids), dtype=bool)
    ark = np.where(found, a[pos] if len(k) else -2, -2).astype(np.int32)
    off = np.where(found, o[pos] if len(k) else 0, 0).astype(np.int64)
    wanted = {i.decode("utf-8") for i, f, x in zip(ids, found, ark) if f and x == -1} if others else set()
    return TeacherColumn(scp, [p for p, _ in sorted(ark_ids.items(), key=lambda kv: kv[1])], ark, off,
                         {key: v for key, v in others.items() if key in wanted})


# ---------------------------------------------------------------------------------------------- the index
class UtteranceIndex:
    """Utterances of a data dir as arrays (see the module docstring); indexing gives :class:`Utterance`."""

    def __init__(self, ids: np.ndarray, rec: np.ndarray, specs: Strings, start: np.ndarray, end: np.ndarray,
                 duration: np.ndarray, teacher: Optional[TeacherColumn] = None):
        self.ids, self.rec, self.specs = ids, rec, specs
        self.start, self.end, self.duration, self.teacher = start, end, duration, teacher

    @classmethod
    def from_utterances(cls, utts: Sequence[Utterance]) -> "UtteranceIndex":
        """An index of a list of utterances (kept in the given order)."""
        nan = float("nan")
        return cls(_keys([u.utt_id for u in utts]), np.arange(len(utts), dtype=np.int32),
                   Strings.build([[u.spec for u in utts]]),
                   np.array([nan if u.start is None else u.start for u in utts], dtype=np.float64),
                   np.array([nan if u.end is None else u.end for u in utts], dtype=np.float64),
                   np.array([nan if u.duration is None else u.duration for u in utts], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.ids)

    def utt_id(self, i: int) -> str:
        return self.ids[i].decode("utf-8")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        opt = (lambda x: None if math.isnan(x) else float(x))  # noqa: E731
        return Utterance(self.utt_id(i), self.specs[int(self.rec[i])], opt(self.start[i]), opt(self.end[i]),
                         opt(self.duration[i]))

    def __iter__(self) -> Iterator[Utterance]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, UtteranceIndex):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def select(self, rows) -> "UtteranceIndex":
        """The rows ``rows`` (indices or a boolean mask), in that order; the audio table is shared."""
        return UtteranceIndex(self.ids[rows], self.rec[rows], self.specs, self.start[rows], self.end[rows],
                              self.duration[rows], self.teacher.take(rows) if self.teacher is not None else None)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (the audio table counted whole)."""
        n = sum(a.nbytes for a in (self.ids, self.rec, self.start, self.end, self.duration)) + self.specs.nbytes
        return n + (self.teacher.nbytes if self.teacher is not None else 0)


def read_index(data_dir: str) -> UtteranceIndex:
    """The utterances of a Kaldi data dir (``wav.scp``, optional ``segments`` and ``utt2dur``), in key order."""
    if not os.path.isdir(data_dir):
        raise KaldiDirError(f"data dir not found: {data_dir}")
    wav_scp = os.path.join(data_dir, "wav.scp")
    if not os.path.isfile(wav_scp):
        raise KaldiDirError(f"wav.scp not found: {wav_scp}")
    keys: List[np.ndarray] = []

    def spec_chunks():
        for chunk in _lines(wav_scp, 2, None, False, "", KaldiDirError):
            keys.append(_keys([k for _, k, _ in chunk]))
            yield [v for _, _, v in chunk]

    spec_table = Strings.build(spec_chunks())
    rec_keys = _concat(keys, bytes)
    order = _sorted_unique(rec_keys, wav_scp, KaldiDirError)
    rec_keys = rec_keys[order]
    segments = os.path.join(data_dir, "segments")
    nan = np.float64("nan")
    if os.path.isfile(segments):
        ids, rec, start, end = _read_segments(segments, rec_keys, order)
        duration = np.where(end >= 0, end - start, nan)
    else:
        ids, rec = rec_keys, order.astype(np.int32)
        start = np.full(len(ids), nan)
        end, duration = start.copy(), start.copy()
    utt2dur = os.path.join(data_dir, "utt2dur")
    if os.path.isfile(utt2dur):
        duration = _read_utt2dur(utt2dur, ids, duration)
    return UtteranceIndex(ids, rec, spec_table, start, end, duration)


def _read_segments(path: str, rec_keys: np.ndarray, rec_order: np.ndarray):
    """(ids, wav.scp rows, start, end) of a segments file, sorted by utterance id; recordings are checked."""
    ids, recs, starts, ends = [], [], [], []
    for chunk in _lines(path, 4, 4, False, "", KaldiDirError):
        s = np.empty(len(chunk))
        e = np.empty(len(chunk))
        names = []
        for j, (_, utt, rest) in enumerate(chunk):
            rec, a, b = rest.split()
            try:
                s[j], e[j] = float(a), float(b)
            except ValueError:
                raise KaldiDirError(f"{path}: utterance {utt!r}: start/end must be seconds, got {a!r} {b!r}") from None
            if s[j] < 0 or (0 <= e[j] <= s[j]):
                raise KaldiDirError(f"{path}: utterance {utt!r}: bad times {s[j]} {e[j]} (need 0 <= start < end, "
                                    "or end -1)")
            names.append(rec)
        r = _keys(names)
        pos = np.minimum(np.searchsorted(rec_keys, r), max(0, len(rec_keys) - 1))
        missing = np.flatnonzero(rec_keys[pos] != r) if len(rec_keys) else np.arange(len(r))
        if len(missing):
            j = int(missing[0])
            raise KaldiDirError(f"{path}: utterance {chunk[j][1]!r} refers to recording {names[j]!r}, which is not "
                                "in wav.scp")
        ids.append(_keys([u for _, u, _ in chunk]))
        recs.append(rec_order[pos].astype(np.int32))
        starts.append(s)
        ends.append(e)
    ids_a = _concat(ids, bytes)
    order = _sorted_unique(ids_a, path, KaldiDirError)
    return (ids_a[order], _concat(recs, np.int32)[order], _concat(starts, np.float64)[order],
            _concat(ends, np.float64)[order])


def _read_utt2dur(path: str, ids: np.ndarray, duration: np.ndarray) -> np.ndarray:
    keys, values = [], []
    for chunk in _lines(path, 2, 2, False, "", KaldiDirError):
        d = np.empty(len(chunk))
        for j, (_, utt, value) in enumerate(chunk):
            try:
                d[j] = float(value)
            except ValueError:
                raise KaldiDirError(f"{path}: utterance {utt!r}: duration {value!r} is not a number") from None
        keys.append(_keys([k for _, k, _ in chunk]))
        values.append(d)
    k = _concat(keys, bytes)
    order = _sorted_unique(k, path, KaldiDirError)
    k, d = k[order], _concat(values, np.float64)[order]
    pos = np.minimum(np.searchsorted(ids, k), max(0, len(ids) - 1))
    unknown = np.flatnonzero(ids[pos] != k) if len(ids) else np.arange(len(k))
    if len(unknown):
        raise KaldiDirError(f"{path}: {len(unknown)} keys not among the utterances, e.g. "
                            f"{k[unknown[0]].decode('utf-8')!r}")
    out = duration.copy()
    out[pos] = d
    return out

"""Kaldi data directories: read, validate and write ``wav.scp``, ``segments``, ``utt2spk``, ``spk2utt``, ``text``, ``utt2dur``.

Every file is ``key value...`` per line, sorted by key in C-locale (byte) order. Reading checks each
line and fails with ``file:line`` and the fix; a data dir read here yields the list of utterances
to process (:class:`Utterance`), with ``segments`` honoured: an utterance is then a part of a recording.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from stok.core.tables import TableError, read_table, sort_keys, write_table


class KaldiDirError(TableError):
    """A malformed, unreadable or inconsistent Kaldi data dir file; the message names the file and line."""


def _read(path: str, min_fields: int, max_fields: Optional[int] = None) -> Dict[str, str]:
    return read_table(path, min_fields, max_fields, error=KaldiDirError)


@dataclass(frozen=True)
class Utterance:
    """One unit of work: ``spec`` is the wav.scp value; ``start``/``end`` in seconds when from segments."""

    utt_id: str
    spec: str
    start: Optional[float] = None
    end: Optional[float] = None
    duration: Optional[float] = None


@dataclass
class KaldiDir:
    wav_scp: Dict[str, str]
    segments: Optional[Dict[str, Tuple[str, float, float]]] = None
    utt2spk: Optional[Dict[str, str]] = None
    text: Optional[Dict[str, str]] = None
    utt2dur: Optional[Dict[str, float]] = None
    extra: Dict[str, Dict[str, str]] = field(default_factory=dict)

    def utt_ids(self) -> List[str]:
        return sort_keys(self.segments if self.segments is not None else self.wav_scp)

    def spk2utt(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for utt in sort_keys(self.utt2spk or {}):
            out.setdefault(self.utt2spk[utt], []).append(utt)
        return out

    def utterances(self) -> List[Utterance]:
        """Utterances in key order, each with its audio source and duration when known."""
        durs = self.utt2dur or {}
        if self.segments is None:
            return [Utterance(u, self.wav_scp[u], duration=durs.get(u)) for u in self.utt_ids()]
        out = []
        for utt in self.utt_ids():
            rec, start, end = self.segments[utt]
            dur = durs.get(utt, end - start if end >= 0 else None)
            out.append(Utterance(utt, self.wav_scp[rec], start, end, dur))
        return out


def read_wav_scp(path: str) -> Dict[str, str]:
    if not os.path.isfile(path):
        raise KaldiDirError(f"wav.scp not found: {path}")
    return _read(path, 2)


def read_segments(path: str, wav_scp: Dict[str, str]) -> Dict[str, Tuple[str, float, float]]:
    out = {}
    for n, (utt, rest) in enumerate(_read(path, 4, 4).items(), 1):
        rec, start, end = rest.split()
        if rec not in wav_scp:
            raise KaldiDirError(f"{path}: utterance {utt!r} refers to recording {rec!r}, which is not in wav.scp")
        try:
            s, e = float(start), float(end)
        except ValueError:
            raise KaldiDirError(f"{path}: utterance {utt!r}: start/end must be seconds, got {start!r} {end!r}")
        if s < 0 or (0 <= e <= s):
            raise KaldiDirError(f"{path}: utterance {utt!r}: bad times {s} {e} (need 0 <= start < end, or end -1)")
        out[utt] = (rec, s, e)
    return out


def read_utt2dur(path: str) -> Dict[str, float]:
    out = {}
    for utt, value in _read(path, 2, 2).items():
        try:
            out[utt] = float(value)
        except ValueError:
            raise KaldiDirError(f"{path}: utterance {utt!r}: duration {value!r} is not a number")
    return out


def read_kaldi_dir(path: str) -> KaldiDir:
    """Read a data dir; only ``wav.scp`` is required. Cross-file consistency is checked."""
    if not os.path.isdir(path):
        raise KaldiDirError(f"data dir not found: {path}")
    wav_scp = read_wav_scp(os.path.join(path, "wav.scp"))
    p = lambda name: os.path.join(path, name)  # noqa: E731
    segments = read_segments(p("segments"), wav_scp) if os.path.isfile(p("segments")) else None
    kd = KaldiDir(
        wav_scp=wav_scp,
        segments=segments,
        utt2spk={k: v for k, v in _read(p("utt2spk"), 2, 2).items()} if os.path.isfile(p("utt2spk")) else None,
        text=_read(p("text"), 1) if os.path.isfile(p("text")) else None,
        utt2dur=read_utt2dur(p("utt2dur")) if os.path.isfile(p("utt2dur")) else None,
    )
    utts = set(kd.utt_ids())
    for name, table in (("utt2spk", kd.utt2spk), ("text", kd.text), ("utt2dur", kd.utt2dur)):
        if table is not None:
            unknown = sorted(set(table) - utts)
            if unknown:
                raise KaldiDirError(f"{p(name)}: {len(unknown)} keys not among the utterances, e.g. {unknown[0]!r}")
    return kd


def write_kaldi_dir(path: str, kd: KaldiDir) -> None:
    """Write every table the dir holds (``spk2utt`` derived from ``utt2spk``), each sorted by key."""
    os.makedirs(path, exist_ok=True)
    write_table(os.path.join(path, "wav.scp"), kd.wav_scp)
    if kd.segments is not None:
        write_table(os.path.join(path, "segments"),
                    {u: (r, f"{s:.3f}", f"{e:.3f}") for u, (r, s, e) in kd.segments.items()})
    if kd.utt2spk is not None:
        write_table(os.path.join(path, "utt2spk"), kd.utt2spk)
        write_table(os.path.join(path, "spk2utt"), kd.spk2utt())
    if kd.text is not None:
        write_table(os.path.join(path, "text"), kd.text)
    if kd.utt2dur is not None:
        write_table(os.path.join(path, "utt2dur"), {u: f"{d:.3f}" for u, d in kd.utt2dur.items()})
    for name, table in kd.extra.items():
        write_table(os.path.join(path, name), table)


def utterances_from_scp(wav_scp: str, segments: Optional[str] = None) -> List[Utterance]:
    """The work list of a bare ``wav.scp`` (and optional ``segments`` file)."""
    table = read_wav_scp(wav_scp)
    kd = KaldiDir(wav_scp=table, segments=read_segments(segments, table) if segments else None)
    return kd.utterances()

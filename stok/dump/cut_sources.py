"""Where the cuts of a dump's cut set come from: id, recording and supervisions of each dumped utterance.

A source maps an utterance id to a lhotse cut without dump fields (``stok.dump.cuts`` adds those), or to
None when it does not know the utterance; :class:`ChainSource` asks several in turn.

- :class:`ManifestCuts`: stage 0's lhotse manifests (``<prefix>_cuts_<split>.jsonl.gz``, or the recordings
  and supervisions manifests), so audio, text and speakers travel with the tokens under the same ids.
  Without ``segments`` an utterance is its recording's cut; with ``segments`` it is the part of the recording
  the dump read (times of the Kaldi ``segments`` file) carrying its own supervision.
- :class:`KaldiCuts`: the dump's own input, a Kaldi dir or a bare ``wav.scp`` (+ ``segments``): recordings
  from the audio headers (``cmd |`` pipes are run once to learn their rate and length), a supervision with
  the ``text`` and speaker where the dir has them. Kaldi ark audio (``x.ark:123``) has no lhotse audio
  source: those cuts carry no recording.
- :class:`DumpCuts`: an earlier dump's cut set (k-means labels computed from a feature dump reuse the
  feature dump's cuts), without its dump fields.
- :class:`FramesOnlyCuts`: nothing known but the dumped frames: a cut without audio, ``frames x frame
  shift`` long.

Relative audio paths of manifests are made absolute (against the current directory, as the dump read them)
so a cut set works from anywhere, like the dump's scp.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Tuple

from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.array import Array, TemporalArray
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from stok.data.audio import is_ark, is_pipe, read_raw
from stok.data.kaldi_dir import KaldiDir

log = logging.getLogger("stok.dump")

Segments = Dict[str, Tuple[str, float, float]]


def _absolute_sources(rec: Recording) -> Recording:
    if not any(s.type == "file" and not os.path.isabs(s.source) for s in rec.sources):
        return rec
    sources = [fastcopy(s, source=os.path.abspath(s.source)) if s.type == "file" and not os.path.isabs(s.source)
               and os.path.exists(s.source) else s for s in rec.sources]
    return fastcopy(rec, sources=sources)


def segment_cut(rec: Recording, utt: str, start: float, end: float,
                supervision: Optional[SupervisionSegment]) -> Cut:
    """The part ``[start, end)`` of ``rec`` (``end`` < 0: to its end) as a cut named ``utt``."""
    end = rec.duration if end is None or end < 0 else min(end, rec.duration)
    base = rec.to_cut()
    duration = end - start
    sups = []
    if supervision is not None:
        sups = [fastcopy(supervision, id=utt, start=0.0, duration=duration, channel=base.channel)]
    return fastcopy(base, id=utt, start=start, duration=duration, supervisions=sups)


class ChainSource:
    """The first source that knows an utterance gives its cut; counts which source gave how many."""

    def __init__(self, sources: List[object]):
        self.sources = [s for s in sources if s is not None]
        self.counts: Dict[str, int] = {}

    def prepare(self, keys: List[str]) -> None:
        for s in self.sources:
            if hasattr(s, "prepare"):
                s.prepare(keys)

    def cut(self, utt: str, frames: int, frame_shift: float) -> Cut:
        for s in self.sources:
            c = s.cut(utt, frames, frame_shift)
            if c is not None:
                self.counts[s.describe()] = self.counts.get(s.describe(), 0) + 1
                return c
        raise KeyError(utt)


class FramesOnlyCuts:
    def describe(self) -> str:
        return "frames only (no audio)"

    def cut(self, utt: str, frames: int, frame_shift: float) -> Cut:
        return MonoCut(id=utt, start=0.0, duration=round(frames * frame_shift, 6), channel=0)


class KaldiCuts:
    """Cuts of a Kaldi dir or bare wav.scp (+ segments); see the module docstring."""

    def __init__(self, kd: KaldiDir, where: str):
        self.kd, self.where = kd, os.path.abspath(where)
        self.recordings: Dict[str, Optional[Recording]] = {}
        self.durations: Dict[str, float] = {}  # recordings without a lhotse audio source
        self.problems: List[str] = []

    def describe(self) -> str:
        return self.where

    def _rec_id(self, utt: str) -> Optional[str]:
        if self.kd.segments is not None:
            seg = self.kd.segments.get(utt)
            return seg[0] if seg else None
        return utt if utt in self.kd.wav_scp else None

    def _load(self, rec_id: str) -> None:
        spec = self.kd.wav_scp[rec_id]
        try:
            if is_pipe(spec) or is_ark(spec):
                data, rate = read_raw(spec)
                frames, channels = data.shape
                if is_ark(spec):
                    self.durations[rec_id] = frames / rate
                    self.recordings[rec_id] = None
                    return
                self.recordings[rec_id] = Recording(
                    id=rec_id, sources=[AudioSource(type="command", channels=list(range(channels)),
                                                    source=spec.rstrip()[:-1].strip())],
                    sampling_rate=rate, num_samples=frames, duration=frames / rate,
                    channel_ids=list(range(channels)))
            else:
                self.recordings[rec_id] = Recording.from_file(os.path.abspath(spec), recording_id=rec_id)
        except Exception as e:  # noqa: BLE001 - the cut is still written, without audio
            self.problems.append(f"{rec_id}: {type(e).__name__}: {e}")
            self.recordings[rec_id] = None

    def prepare(self, keys: Iterable[str]) -> None:
        """Read the headers (and run the pipes) of the recordings of ``keys``, 8 at a time."""
        recs = sorted({r for r in (self._rec_id(k) for k in keys) if r is not None and r not in self.recordings})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._load, recs))
        if self.problems:
            log.warning("%d recordings of %s have no lhotse audio source, their cuts carry no audio; first: %s",
                        len(self.problems), self.where, self.problems[0])

    def _supervision(self, utt: str, rec_id: str) -> Optional[SupervisionSegment]:
        text = (self.kd.text or {}).get(utt)
        speaker = (self.kd.utt2spk or {}).get(utt)
        if text is None and speaker is None:
            return None
        return SupervisionSegment(id=utt, recording_id=rec_id, start=0.0, duration=0.0, text=text, speaker=speaker)

    def cut(self, utt: str, frames: int, frame_shift: float) -> Optional[Cut]:
        rec_id = self._rec_id(utt)
        if rec_id is None:
            return None
        if rec_id not in self.recordings:
            self._load(rec_id)
        rec = self.recordings[rec_id]
        start, end = (self.kd.segments[utt][1:] if self.kd.segments is not None else (0.0, -1.0))
        sup = self._supervision(utt, rec_id)
        if rec is not None:
            return segment_cut(rec, utt, start, end, sup)
        total = self.durations.get(rec_id, frames * frame_shift)
        duration = (total if end is None or end < 0 else min(end, total)) - start
        sups = [fastcopy(sup, duration=duration)] if sup is not None else []
        return MonoCut(id=utt, start=start, duration=duration, channel=0, supervisions=sups)


def load_manifest(path: str) -> CutSet:
    if "_recordings_" not in os.path.basename(path):
        return CutSet.from_file(path)
    from lhotse import RecordingSet, SupervisionSet

    recs = RecordingSet.from_file(path)
    sup_path = path.replace("_recordings_", "_supervisions_")
    sups = SupervisionSet.from_file(sup_path) if os.path.isfile(sup_path) else None
    return CutSet.from_manifests(recordings=recs, supervisions=sups)


class ManifestCuts:
    """Cuts of stage 0's manifests (see the module docstring); ``segments`` are the dump's own."""

    def __init__(self, cuts: CutSet, path: str, segments: Optional[Segments]):
        self.path, self.segments = path, segments
        self.by_id: Dict[str, Cut] = {}
        self.by_recording: Dict[str, Recording] = {}
        self.by_supervision: Dict[str, SupervisionSegment] = {}
        for c in cuts:
            self.by_id[c.id] = c
            if c.has_recording:
                self.by_recording.setdefault(c.recording_id, c.recording)
            for s in c.supervisions:
                self.by_supervision.setdefault(s.id, s)

    def describe(self) -> str:
        return self.path

    def cut(self, utt: str, frames: int, frame_shift: float) -> Optional[Cut]:
        if self.segments is None:
            c = self.by_id.get(utt)
            if c is None:
                return None
            return fastcopy(c, recording=_absolute_sources(c.recording)) if c.has_recording else c
        seg = self.segments.get(utt)
        rec = self.by_recording.get(seg[0]) if seg else None
        if rec is None:
            return None
        return segment_cut(_absolute_sources(rec), utt, seg[1], seg[2], self.by_supervision.get(utt))


def strip_arrays(cut: Cut) -> Cut:
    """The cut without its array fields (an earlier dump's ``feats`` ...)."""
    if not cut.custom:
        return cut
    custom = {k: v for k, v in cut.custom.items() if not isinstance(v, (Array, TemporalArray))}
    return fastcopy(cut, custom=custom or None)


class DumpCuts:
    """The cuts of an earlier dump's cut set, without its dump fields."""

    def __init__(self, path: str):
        self.path = path
        self.by_id = {c.id: c for c in CutSet.from_file(path)}

    def describe(self) -> str:
        return self.path

    def cut(self, utt: str, frames: int, frame_shift: float) -> Optional[Cut]:
        c = self.by_id.get(utt)
        return strip_arrays(c) if c is not None else None

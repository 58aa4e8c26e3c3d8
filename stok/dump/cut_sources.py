"""Where the cuts of a dump's cut set come from: id, recording and supervisions of each dumped utterance.

A source maps an utterance id to a :class:`CutEntry` (the cut without dump fields, as lhotse serialises it;
``stok.dump.cuts`` adds the fields and writes the line), or to None when it does not know the utterance;
:class:`ChainSource` asks several in turn. Entries are plain JSON-ready dicts, and a recording's JSON is made
once and shared by all its cuts: a cut set of 281k utterances is written without building and serialising a
lhotse object per cut (lhotse's ``to_dict`` was 70% of the time), and the lines are exactly what lhotse writes
for the same cuts (``tests/test_dump_cuts.py`` checks this).

- :class:`ManifestCuts`: stage 0's lhotse manifests (``<prefix>_cuts_<split>.jsonl.gz``, or the recordings
  and supervisions manifests), so audio, text and speakers travel with the tokens under the same ids.
  Without ``segments`` an utterance is its recording's cut; with ``segments`` it is the part of the recording
  the dump read (times of the Kaldi ``segments`` file) carrying its own supervision.
- :class:`KaldiCuts`: the dump's own input, a Kaldi dir or a bare ``wav.scp`` (+ ``segments``): recordings
  from the audio headers (each read once; ``cmd |`` pipes are run once to learn their rate and length), a
  supervision with the ``text`` and speaker where the dir has them. Kaldi ark audio (``x.ark:123``) has no
  lhotse audio source: those cuts carry no recording.
- :class:`DumpCuts`: an earlier dump's cut set (k-means labels computed from a feature dump reuse the
  feature dump's cuts), without its dump fields.
- :class:`FramesOnlyCuts`: nothing known but the dumped frames: a cut without audio, ``frames x frame
  shift`` long.

Memory: a manifest or earlier cut set is read as a stream in step with the dump's scp (both sorted by id); only
cuts asked for out of that order are held (see :class:`KeyedStream`). Relative audio paths of manifests are made
absolute (against the current directory, as the dump read them) so a cut set works from anywhere, like the scp.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from lhotse import AudioSource, Recording

from stok.data.audio import is_ark, is_pipe, read_raw
from stok.data.kaldi_dir import KaldiDir

log = logging.getLogger("stok.dump")

Segments = Dict[str, Tuple[str, float, float]]


def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # as lhotse's jsonl writer


class CutEntry(NamedTuple):
    """One cut as lhotse serialises it, in parts: ``fields`` (``id``, ``start``, ``duration``, ``channel``,
    ``supervisions`` ...), the recording's JSON (or None), the cut's own custom fields and its type."""

    fields: dict
    recording: Optional[str]
    custom: Optional[dict]
    type: str

    def line(self, extra_custom: Optional[dict] = None) -> str:
        """The cut's JSON line with ``extra_custom`` added to its custom fields (lhotse's key order)."""
        head = to_json(self.fields)[:-1]
        rec = f', "recording": {self.recording}' if self.recording is not None else ""
        custom = {**self.custom, **extra_custom} if self.custom and extra_custom else (self.custom or extra_custom)
        tail = {"custom": custom, "type": self.type} if custom else {"type": self.type}
        return f"{head}{rec}, {to_json(tail)[1:]}\n"


def _absolute_sources(rec: dict) -> dict:
    sources = rec.get("sources") or []
    if not any(s.get("type") == "file" and not os.path.isabs(s["source"]) for s in sources):
        return rec
    fixed = [{**s, "source": os.path.abspath(s["source"])} if s.get("type") == "file" and not
             os.path.isabs(s["source"]) and os.path.exists(s["source"]) else s for s in sources]
    return {**rec, "sources": fixed}


class RecordingInfo(NamedTuple):
    """What the cuts of one recording share: its JSON, duration, and the channel and type of its cut
    (lhotse's ``Recording.to_cut``: a MonoCut on its one channel, else a MultiCut on all)."""

    json: str
    duration: float
    channel: object
    type: str

    @classmethod
    def of(cls, rec: dict) -> "RecordingInfo":
        rec = _absolute_sources(rec)
        channels = rec["channel_ids"]
        mono = len(channels) == 1
        return cls(to_json(rec), rec["duration"], channels[0] if mono else list(channels),
                   "MonoCut" if mono else "MultiCut")


def segment_entry(info: RecordingInfo, utt: str, start: float, end: Optional[float],
                  supervision: Optional[dict]) -> CutEntry:
    """The part ``[start, end)`` of a recording (``end`` < 0: to its end) as a cut named ``utt``."""
    end = info.duration if end is None or end < 0 else min(end, info.duration)
    duration = end - start
    sups = []
    if supervision is not None:
        sups = [{**supervision, "id": utt, "start": 0.0, "duration": duration, "channel": info.channel}]
    return CutEntry({"id": utt, "start": start, "duration": duration, "channel": info.channel,
                     "supervisions": sups}, info.json, None, info.type)


def cut_entry(cut: dict, strip_fields: bool = False) -> CutEntry:
    """A serialised lhotse cut as an entry (recording paths made absolute); ``strip_fields`` drops its array
    fields (an earlier dump's ``feats`` ...) and their ``<field>_frame_shift``."""
    cut = dict(cut)
    rec = cut.pop("recording", None)
    custom = cut.pop("custom", None)
    kind = cut.pop("type", "MonoCut")
    if custom and strip_fields:
        arrays = {k for k, v in custom.items() if isinstance(v, dict) and ("storage_type" in v or "array" in v)}
        custom = {k: v for k, v in custom.items()
                  if k not in arrays and not (k.endswith("_frame_shift") and k[: -len("_frame_shift")] in arrays)}
    return CutEntry(cut, to_json(_absolute_sources(rec)) if rec is not None else None, custom or None, kind)


class KeyedStream:
    """Items of a stream of ``(key, value)`` fetched by key. Asked in the stream's order (a dump's scp and a
    manifest both sorted by id), it holds nothing; the items passed over to reach a key asked out of order are
    held until asked for (or to the end, for a key the stream does not have)."""

    def __init__(self, items: Iterable[Tuple[str, object]]):
        self.items: Iterator[Tuple[str, object]] = iter(items)
        self.held: Dict[str, object] = {}

    def get(self, key: str):
        if key in self.held:
            return self.held.pop(key)
        for k, v in self.items:
            if k == key:
                return v
            self.held[k] = v
        return None


def read_jsonl(path: str) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class ChainSource:
    """The first source that knows an utterance gives its cut; counts which source gave how many."""

    def __init__(self, sources: List[object]):
        self.sources = [s for s in sources if s is not None]
        self.counts: Dict[str, int] = {}

    def prepare(self, keys: List[str]) -> None:
        for s in self.sources:
            if hasattr(s, "prepare"):
                s.prepare(keys)

    def entry(self, utt: str, frames: int, frame_shift: float) -> CutEntry:
        for s in self.sources:
            e = s.entry(utt, frames, frame_shift)
            if e is not None:
                self.counts[s.describe()] = self.counts.get(s.describe(), 0) + 1
                return e
        raise KeyError(utt)


class FramesOnlyCuts:
    def describe(self) -> str:
        return "frames only (no audio)"

    def entry(self, utt: str, frames: int, frame_shift: float) -> CutEntry:
        return CutEntry({"id": utt, "start": 0.0, "duration": round(frames * frame_shift, 6), "channel": 0,
                         "supervisions": []}, None, None, "MonoCut")


class KaldiCuts:
    """Cuts of a Kaldi dir or bare wav.scp (+ segments); see the module docstring."""

    def __init__(self, kd: KaldiDir, where: str):
        self.kd, self.where = kd, os.path.abspath(where)
        self.recordings: Dict[str, Optional[RecordingInfo]] = {}
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
                rec = Recording(id=rec_id, sources=[AudioSource(type="command", channels=list(range(channels)),
                                                                source=spec.rstrip()[:-1].strip())],
                                sampling_rate=rate, num_samples=frames, duration=frames / rate,
                                channel_ids=list(range(channels)))
            else:
                rec = Recording.from_file(os.path.abspath(spec), recording_id=rec_id)
            self.recordings[rec_id] = RecordingInfo.of(rec.to_dict())
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

    def _supervision(self, utt: str, rec_id: str) -> Optional[dict]:
        text = (self.kd.text or {}).get(utt)
        speaker = (self.kd.utt2spk or {}).get(utt)
        if text is None and speaker is None:
            return None
        sup = {"id": utt, "recording_id": rec_id, "start": 0.0, "duration": 0.0, "channel": 0}
        if text is not None:
            sup["text"] = text
        if speaker is not None:
            sup["speaker"] = speaker
        return sup

    def entry(self, utt: str, frames: int, frame_shift: float) -> Optional[CutEntry]:
        rec_id = self._rec_id(utt)
        if rec_id is None:
            return None
        if rec_id not in self.recordings:
            self._load(rec_id)
        info = self.recordings[rec_id]
        start, end = (self.kd.segments[utt][1:] if self.kd.segments is not None else (0.0, -1.0))
        sup = self._supervision(utt, rec_id)
        if info is not None:
            return segment_entry(info, utt, start, end, sup)
        total = self.durations.get(rec_id, frames * frame_shift)
        duration = (total if end is None or end < 0 else min(end, total)) - start
        sups = [{**sup, "duration": duration}] if sup is not None else []
        return CutEntry({"id": utt, "start": start, "duration": duration, "channel": 0, "supervisions": sups},
                        None, None, "MonoCut")


def load_manifest(path: str) -> Iterator[dict]:
    """The serialised cuts of stage 0's manifest ``path``, as a stream (a recordings manifest is joined with the
    supervisions manifest beside it by lhotse)."""
    if "_recordings_" not in os.path.basename(path):
        return read_jsonl(path)
    from lhotse import CutSet, RecordingSet, SupervisionSet

    recs = RecordingSet.from_file(path)
    sup_path = path.replace("_recordings_", "_supervisions_")
    sups = SupervisionSet.from_file(sup_path) if os.path.isfile(sup_path) else None
    return (c.to_dict() for c in CutSet.from_manifests(recordings=recs, supervisions=sups))


class ManifestCuts:
    """Cuts of stage 0's manifests (see the module docstring); ``segments`` are the dump's own. ``cuts``: the
    manifest's serialised cuts (:func:`load_manifest`)."""

    def __init__(self, cuts: Iterable[dict], path: str, segments: Optional[Segments]):
        self.path, self.segments = path, segments
        self.by_id: Optional[KeyedStream] = None
        self.by_recording: Dict[str, RecordingInfo] = {}
        self.by_supervision: Dict[str, dict] = {}
        if segments is None:
            self.by_id = KeyedStream((c["id"], c) for c in cuts)
            return
        for c in cuts:  # with segments: the manifest's recordings and supervisions are the index
            rec = c.get("recording")
            if rec is not None and rec["id"] not in self.by_recording:
                self.by_recording[rec["id"]] = RecordingInfo.of(rec)
            for s in c.get("supervisions") or []:
                self.by_supervision.setdefault(s["id"], s)

    def describe(self) -> str:
        return self.path

    def entry(self, utt: str, frames: int, frame_shift: float) -> Optional[CutEntry]:
        if self.by_id is not None:
            c = self.by_id.get(utt)
            return cut_entry(c) if c is not None else None
        seg = self.segments.get(utt)
        info = self.by_recording.get(seg[0]) if seg else None
        if info is None:
            return None
        return segment_entry(info, utt, seg[1], seg[2], self.by_supervision.get(utt))


class DumpCuts:
    """The cuts of an earlier dump's cut set, without its dump fields (read as a stream, see the module
    docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.by_id = KeyedStream((c["id"], c) for c in read_jsonl(path))

    def describe(self) -> str:
        return self.path

    def entry(self, utt: str, frames: int, frame_shift: float) -> Optional[CutEntry]:
        c = self.by_id.get(utt)
        return cut_entry(c, strip_fields=True) if c is not None else None

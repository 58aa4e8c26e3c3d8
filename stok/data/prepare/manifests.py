"""What every corpus preparation shares: sorted lhotse manifests and stok's own Kaldi data dir writer.

Manifests go to ``<manifest_dir>/<prefix>_{recordings,supervisions,cuts}_<part>.jsonl.gz`` (lhotse's naming,
so lhotse's recipes find them cached), each sorted by id. The cuts are lhotse's
``CutSet.from_manifests``: one cut per recording, carrying its supervisions, with the recording's id
(lhotse would append ``-<index>``).

The Kaldi dir is written with :func:`stok.data.kaldi_dir.write_kaldi_dir`, not lhotse's ``export_to_kaldi``
(which always writes ``segments``, writes a missing text or speaker as the string ``None``, writes no
``spk2utt`` and turns FLAC into an ``ffmpeg ... |`` pipe). Here:

- ``wav.scp`` holds plain paths (absolute) for file sources, ``cmd |`` for command sources, and an
  explicit mapping (``wav_scp=``) wins, so a ``wav.scp`` read in is written back unchanged;
- ``segments`` is written only when utterances are parts of recordings: a recording with several
  supervisions, or one whose supervision does not span it or has another id; otherwise the utterance
  id is the recording id;
- ``utt2spk`` uses the supervision's speaker, or the utterance itself when there is none (Kaldi's habit);
  ``spk2utt`` is derived from it; ``text`` only when transcripts exist; ``utt2dur`` always;
- every file is sorted by key in C-locale order, and the dir is read back and checked after writing.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

from stok.core.errors import UserError
from stok.core.tables import sort_keys
from stok.data.kaldi_dir import KaldiDir, read_kaldi_dir, write_kaldi_dir

if TYPE_CHECKING:  # lhotse (and torch under it) is imported when needed, so that --help stays fast
    from lhotse import RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import Recording

log = logging.getLogger("stok.prepare")

KALDI_FILES = ("wav.scp", "segments", "utt2spk", "spk2utt", "text", "utt2dur")
_WS = re.compile(r"\s+")
TOLERANCE = 1e-3  # seconds: a supervision this close to the recording's ends spans it


class PrepareError(UserError, RuntimeError):
    """A corpus that cannot be prepared; the message says what is wrong and where."""


@dataclass
class SplitSummary:
    split: str
    data_dir: str
    num_utts: int
    num_recordings: int
    num_speakers: int
    seconds: float
    min_dur: float
    max_dur: float
    has_segments: bool
    has_text: bool
    manifests: Optional[Dict[str, str]] = None

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0


def _key(s: str) -> bytes:
    return s.encode("utf-8")


def sort_recordings(recordings: Iterable[Recording]) -> RecordingSet:
    from lhotse import RecordingSet

    return RecordingSet.from_recordings(sorted(recordings, key=lambda r: _key(r.id)))


def sort_supervisions(supervisions: Iterable[SupervisionSegment]) -> SupervisionSet:
    from lhotse import SupervisionSet

    return SupervisionSet.from_segments(sorted(supervisions, key=lambda s: (_key(s.recording_id), s.start, _key(s.id))))


def manifest_paths(manifest_dir: os.PathLike, prefix: str, part: str) -> Dict[str, Path]:
    d = Path(manifest_dir)
    return {kind: d / f"{prefix}_{kind}_{part}.jsonl.gz" for kind in ("recordings", "supervisions", "cuts")}


def _atomic_to_file(manifest, path: Path) -> None:
    tmp = path.with_name(path.name[: -len(".jsonl.gz")] + ".tmp.jsonl.gz")
    manifest.to_file(tmp)
    os.replace(tmp, path)


def write_manifests(manifest_dir: os.PathLike, prefix: str, part: str, recordings: RecordingSet,
                    supervisions: Optional[SupervisionSet]) -> Tuple[RecordingSet, Optional[SupervisionSet], Dict[str, str]]:
    """Write recordings, supervisions and cuts, each sorted by id; returns the sorted sets and the paths."""
    from lhotse import CutSet

    os.makedirs(manifest_dir, exist_ok=True)
    paths = manifest_paths(manifest_dir, prefix, part)
    recordings = sort_recordings(recordings)
    _atomic_to_file(recordings, paths["recordings"])
    if supervisions is not None:
        supervisions = sort_supervisions(supervisions)
        _atomic_to_file(supervisions, paths["supervisions"])
    elif paths["supervisions"].exists():
        paths["supervisions"].unlink()
    cuts = list(CutSet.from_manifests(recordings=recordings, supervisions=supervisions))
    if len({c.recording_id for c in cuts}) == len(cuts):  # one cut per recording: name it after the recording
        cuts = [c.with_id(c.recording_id) for c in cuts]
    cuts = CutSet.from_cuts(sorted(cuts, key=lambda c: _key(c.id)))
    _atomic_to_file(cuts, paths["cuts"])
    return recordings, supervisions, {k: str(p) for k, p in paths.items() if p.exists()}


def read_manifests(manifest_dir: os.PathLike, prefix: str, part: str) -> Tuple[RecordingSet, Optional[SupervisionSet]]:
    from lhotse import RecordingSet, SupervisionSet

    paths = manifest_paths(manifest_dir, prefix, part)
    if not paths["recordings"].is_file():
        raise PrepareError(f"no manifest {paths['recordings']}: prepare the split {part!r} first")
    recs = RecordingSet.from_file(paths["recordings"])
    sups = SupervisionSet.from_file(paths["supervisions"]) if paths["supervisions"].is_file() else None
    return recs, sups


def recording_spec(rec: Recording) -> str:
    """The ``wav.scp`` value of a recording: its file path, ``cmd |``, or a ``sox -M`` pipe for per-channel files."""
    if rec.transforms:
        raise PrepareError(f"recording {rec.id!r} has transforms ({[t['name'] if isinstance(t, dict) else type(t).__name__ for t in rec.transforms]}); "
                           "a Kaldi wav.scp cannot express them")
    sources = rec.sources
    if len(sources) == 1:
        src = sources[0]
        if src.type == "file":
            return os.path.abspath(src.source)
        if src.type == "command":
            return f"{src.source.strip()} |"
        raise PrepareError(f"recording {rec.id!r}: audio source of type {src.type!r} cannot be written to wav.scp "
                           "(only files and commands can)")
    if all(s.type == "file" for s in sources):  # one file per channel: merge them back into one stream
        files = " ".join(shlex.quote(os.path.abspath(s.source)) for s in sources)
        return f"sox -M {files} -t wav - |"
    raise PrepareError(f"recording {rec.id!r} has {len(sources)} sources of types "
                       f"{sorted({s.type for s in sources})}; only files can be merged into one wav.scp entry")


def _check_key(key: str, what: str) -> str:
    if not key or _WS.search(key):
        raise PrepareError(f"{what} id {key!r} is empty or contains whitespace, which a Kaldi data dir cannot hold")
    return key


def needs_segments(recordings: RecordingSet, supervisions: Optional[SupervisionSet]) -> bool:
    """True when some utterance is a part of its recording (or not the only one in it)."""
    if supervisions is None:
        return False
    by_rec: Dict[str, List[SupervisionSegment]] = defaultdict(list)
    for s in supervisions:
        by_rec[s.recording_id].append(s)
    for rec in recordings:
        sups = by_rec.get(rec.id, [])
        if len(sups) > 1:
            return True
        if len(sups) == 1:
            s = sups[0]
            if s.id != rec.id or s.start > TOLERANCE or abs(s.end - rec.duration) > TOLERANCE:
                return True
    return False


def kaldi_dir_from_manifests(recordings: RecordingSet, supervisions: Optional[SupervisionSet] = None,
                             wav_scp: Optional[Dict[str, str]] = None) -> KaldiDir:
    """Recordings (+ supervisions) -> :class:`KaldiDir`; ``wav_scp`` maps recording id -> value to keep as is."""
    recs = {_check_key(r.id, "recording"): r for r in recordings}

    def spec(rec_id: str) -> str:
        if wav_scp is not None and rec_id in wav_scp:
            return wav_scp[rec_id]
        return recording_spec(recs[rec_id])

    if supervisions is None:  # one utterance per recording, no speakers, no text
        ids = list(recs)
        return KaldiDir(wav_scp={r: spec(r) for r in ids}, utt2spk={r: r for r in ids},
                        utt2dur={r: recs[r].duration for r in ids})

    sups = list(supervisions)
    missing = sorted({s.recording_id for s in sups} - set(recs))
    if missing:
        raise PrepareError(f"{len(missing)} supervisions refer to recordings not in the recording set, e.g. {missing[0]!r}")
    seen = set()
    for s in sups:
        if _check_key(s.id, "supervision") in seen:
            raise PrepareError(f"duplicate supervision id {s.id!r}")
        seen.add(s.id)
    used = {s.recording_id for s in sups}
    unused = sorted(set(recs) - used)
    if unused:
        log.warning("%d recordings have no supervision and are left out of the data dir, e.g. %s", len(unused), unused[0])

    segmented = needs_segments(recordings, supervisions)
    kd = KaldiDir(wav_scp={r: spec(r) for r in sort_keys(used)}, utt2spk={}, utt2dur={})
    if segmented:
        kd.segments = {}
    texts: Dict[str, str] = {}
    for s in sups:
        if segmented:
            end = min(s.end, recs[s.recording_id].duration)
            kd.segments[s.id] = (s.recording_id, max(0.0, s.start), end)
            kd.utt2dur[s.id] = end - max(0.0, s.start)
        else:
            kd.utt2dur[s.id] = recs[s.recording_id].duration
        spk = s.speaker if s.speaker not in (None, "") else s.id
        kd.utt2spk[s.id] = _WS.sub("_", str(spk).strip())
        if s.text is not None:
            texts[s.id] = _WS.sub(" ", s.text).strip()
    if texts:
        if len(texts) < len(sups):
            log.warning("%d of %d utterances have no transcript; text lists only those that do", len(sups) - len(texts), len(sups))
        kd.text = texts
    return kd


def summarize(split: str, data_dir: str, kd: KaldiDir, manifests: Optional[Dict[str, str]] = None) -> SplitSummary:
    durs = list((kd.utt2dur or {}).values())
    return SplitSummary(
        split=split, data_dir=data_dir, num_utts=len(kd.utt_ids()), num_recordings=len(kd.wav_scp),
        num_speakers=len(set((kd.utt2spk or {}).values())), seconds=float(sum(durs)),
        min_dur=float(min(durs)) if durs else 0.0, max_dur=float(max(durs)) if durs else 0.0,
        has_segments=kd.segments is not None, has_text=kd.text is not None, manifests=manifests,
    )


def write_data_dir(data_dir: os.PathLike, kd: KaldiDir) -> KaldiDir:
    """Write a Kaldi dir (removing our files a previous run left there) and read it back as a check."""
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    for name in KALDI_FILES:
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            os.remove(p)
    if not kd.wav_scp:
        raise PrepareError(f"{data_dir}: no utterances to write")
    write_kaldi_dir(data_dir, kd)
    back = read_kaldi_dir(data_dir)
    if back.utt_ids() != kd.utt_ids():
        raise PrepareError(f"{data_dir}: read back {len(back.utt_ids())} utterances, wrote {len(kd.utt_ids())}")
    return back


def write_split(output_dir: os.PathLike, split: str, recordings: RecordingSet,
                supervisions: Optional[SupervisionSet], manifest_dir: Optional[os.PathLike] = None,
                prefix: Optional[str] = None, part: Optional[str] = None,
                wav_scp: Optional[Dict[str, str]] = None) -> SplitSummary:
    """Manifests (when ``manifest_dir``/``prefix`` are given) and the Kaldi dir ``<output_dir>/<split>``."""
    paths = None
    if manifest_dir is not None and prefix is not None:
        recordings, supervisions, paths = write_manifests(manifest_dir, prefix, part or split, recordings, supervisions)
    kd = kaldi_dir_from_manifests(recordings, supervisions, wav_scp=wav_scp)
    data_dir = os.path.join(str(output_dir), split)
    back = write_data_dir(data_dir, kd)
    summary = summarize(split, data_dir, back, paths)
    log.info("%s: %d utterances, %d recordings, %d speakers, %.2f h -> %s", split, summary.num_utts,
             summary.num_recordings, summary.num_speakers, summary.hours, data_dir)
    return summary


def combine_splits(output_dir: os.PathLike, manifest_dir: os.PathLike, prefix: str, name: str,
                   parts: Sequence[str]) -> SplitSummary:
    """A split made of others (e.g. LibriSpeech's 960 h training set): manifests and Kaldi dir."""
    from lhotse import RecordingSet, SupervisionSet

    recs: List[Recording] = []
    sups: List[SupervisionSegment] = []
    have_sups = True
    for part in parts:
        r, s = read_manifests(manifest_dir, prefix, part)
        recs.extend(r)
        if s is None:
            have_sups = False
        else:
            sups.extend(s)
    ids = [r.id for r in recs]
    if len(set(ids)) != len(ids):
        raise PrepareError(f"cannot combine {list(parts)} into {name!r}: recording ids repeat across them")
    return write_split(output_dir, name, RecordingSet.from_recordings(recs),
                       SupervisionSet.from_segments(sups) if have_sups else None,
                       manifest_dir=manifest_dir, prefix=prefix, part=name)


def parse_combine(specs: Optional[Sequence[str]], setting: str = "--combine") -> List[Tuple[str, List[str]]]:
    """``name=part1,part2`` -> (name, [parts]); a clear error naming ``setting`` otherwise."""
    out = []
    for spec in specs or []:
        name, sep, rest = spec.partition("=")
        parts = [p for p in rest.split(",") if p]
        if not sep or not name or not parts:
            raise PrepareError(f"{setting} {spec!r}: expected NAME=PART1,PART2,...")
        out.append((name, parts))
    return out


def format_summary(summaries: Sequence[SplitSummary]) -> str:
    head = f"{'split':<24} {'utts':>8} {'recs':>8} {'spk':>6} {'hours':>9} {'min_s':>7} {'max_s':>7}  segments text"
    lines = [head]
    for s in summaries:
        lines.append(f"{s.split:<24} {s.num_utts:>8} {s.num_recordings:>8} {s.num_speakers:>6} {s.hours:>9.3f} "
                     f"{s.min_dur:>7.2f} {s.max_dur:>7.2f}  {'yes' if s.has_segments else 'no':<8} {'yes' if s.has_text else 'no'}")
    return "\n".join(lines)

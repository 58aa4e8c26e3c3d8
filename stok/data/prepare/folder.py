"""Any audio you have: a directory of files, an existing ``wav.scp`` or an existing Kaldi data dir.

``--audio_dir D``
    every file under ``D`` (recursively) whose extension soundfile reads (wav, flac, ogg/opus, mp3, aiff,
    au, caf, w64, rf64, sph/nist, ...; see ``AUDIO_EXTENSIONS``); files soundfile cannot open are skipped
    with a warning. The utterance id is the path relative to ``D`` without its extension, ``/`` -> ``-``
    and whitespace -> ``_`` (``spk1/ch 2/a.wav`` -> ``spk1-ch_2-a``). A transcript is taken from a file
    next to the audio with the same stem and the extension ``.normalized.txt``, ``.txt`` or ``.lab``
    (first found), or from ``--text`` (Kaldi ``utt text`` lines, by the ids above).
``--wav_scp F`` [``--segments F``] [``--utt2spk F``] [``--text F``], or ``--data_dir D`` (the same files in a dir)
    entries are kept exactly as written (plain paths, ``cmd |`` pipes, ``x.ark:offset``); durations and rates
    are read from the headers (pipes and ark entries are decoded once). Entries that cannot be read are
    skipped with a warning. In the lhotse manifests a pipe is a command source and an ark entry a command
    running ``python -m stok.data.prepare.wavcat``, so lhotse can load every recording.

Speakers: ``--speaker_from utt`` (default; each utterance its own speaker, Kaldi's habit when unknown),
``parent`` (the directory holding the file) or ``first_dir`` (the first directory under ``--audio_dir``);
an ``utt2spk`` file wins. A dev split is carved out deterministically with ``--dev_fraction``/``--dev_count``
(by recording, or by speaker with ``--dev_by speaker``, seeded by ``--seed``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from stok.core.tables import read_table, sort_keys
from stok.data.kaldi_dir import read_kaldi_dir, read_segments, read_wav_scp
from stok.data.prepare.manifests import PrepareError, SplitSummary, write_split
from stok.data.prepare.recipe import Preparer
from stok.data.prepare.settings import FolderSettings, PrepareSettings

if TYPE_CHECKING:  # lhotse is imported when needed, so that --help stays fast
    from lhotse import RecordingSet, SupervisionSet
    from lhotse.audio import Recording

log = logging.getLogger("stok.prepare")

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                    ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc", ".htk", ".sd2", ".ircam", ".sf", ".wv")
TEXT_SIDECARS = (".normalized.txt", ".txt", ".lab")
_WS = re.compile(r"\s+")


def _safe_id(rel: str) -> str:
    return _WS.sub("_", rel.replace(os.sep, "-").replace("/", "-")).strip("_") or "utt"


def scan_audio_dir(audio_dir: Path) -> Dict[str, Path]:
    """Utterance id -> file, for every audio file under ``audio_dir``; ids made unique."""
    files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                   and not p.name.startswith("._"))
    by_id: Dict[str, List[Path]] = {}
    for f in files:
        rel = f.relative_to(audio_dir)
        by_id.setdefault(_safe_id(str(rel.with_suffix(""))), []).append(f)
    out: Dict[str, Path] = {}
    for key, paths in by_id.items():
        if len(paths) == 1:
            out[key] = paths[0]
        else:  # a.wav and a.flac side by side: keep both, told apart by their extension
            for f in paths:
                out[f"{key}_{f.suffix.lstrip('.').lower()}"] = f
    return out


def _file_recording(rec_id: str, path: str) -> Recording:
    import soundfile
    from lhotse.audio import AudioSource, Recording

    info = soundfile.info(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("no samples")
    return Recording(id=rec_id, sources=[AudioSource(type="file", channels=list(range(info.channels)), source=path)],
                     sampling_rate=int(info.samplerate), num_samples=int(info.frames),
                     duration=info.frames / info.samplerate)


def _spec_recording(rec_id: str, spec: str) -> Recording:
    """A lhotse recording for any wav.scp value (plain path, pipe or ark entry)."""
    from lhotse.audio import AudioSource, Recording

    from stok.data.audio import is_ark, is_pipe, read_raw

    if not is_pipe(spec) and not is_ark(spec):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"no such file: {spec}")
        return _file_recording(rec_id, os.path.abspath(spec))
    data, rate = read_raw(spec)
    if data.shape[0] == 0:
        raise ValueError("no samples")
    if is_pipe(spec):
        source = AudioSource(type="command", channels=list(range(data.shape[1])), source=spec.rstrip()[:-1].strip())
    else:
        cmd = f"{shlex.quote(sys.executable)} -m stok.data.prepare.wavcat {shlex.quote(spec)}"
        source = AudioSource(type="command", channels=list(range(data.shape[1])), source=cmd)
    return Recording(id=rec_id, sources=[source], sampling_rate=int(rate), num_samples=int(data.shape[0]),
                     duration=data.shape[0] / rate)


def _read_all(items: List[Tuple[str, str]], make, num_jobs: int) -> Tuple[List[Recording], List[Tuple[str, str]]]:
    def one(item):
        rec_id, src = item
        try:
            return make(rec_id, src), None
        except Exception as e:  # unreadable: skip it, say why
            return None, (rec_id, f"{src}: {type(e).__name__}: {e}")

    with ThreadPoolExecutor(max(1, num_jobs)) as ex:
        results = list(ex.map(one, items))
    recs = [r for r, _ in results if r is not None]
    failed = [f for _, f in results if f is not None]
    for rec_id, why in failed[:20]:
        log.warning("skipping %s: %s", rec_id, why)
    if len(failed) > 20:
        log.warning("... and %d more unreadable entries", len(failed) - 20)
    return recs, failed


def _sidecar_text(path: Path) -> Optional[str]:
    stem = path.with_suffix("")
    for ext in TEXT_SIDECARS:
        p = stem.with_name(stem.name + ext)
        if p.is_file():
            return _WS.sub(" ", p.read_text(encoding="utf-8", errors="replace")).strip()
    return None


def from_audio_dir(s: FolderSettings) -> Tuple[RecordingSet, SupervisionSet, None]:
    from lhotse import RecordingSet, SupervisionSegment, SupervisionSet

    audio_dir = Path(s.audio_dir or "")
    if not audio_dir.is_dir():
        raise PrepareError(f"folder: {s.setting_name('audio_dir')} {audio_dir} is not a directory")
    files = scan_audio_dir(audio_dir)
    if not files:
        raise PrepareError(f"folder: no audio files ({', '.join(AUDIO_EXTENSIONS[:8])}, ...) under {audio_dir}")
    recs, failed = _read_all([(k, str(p.resolve())) for k, p in files.items()], _file_recording, s.num_jobs)
    if not recs:
        raise PrepareError(f"folder: none of the {len(files)} audio files under {audio_dir} could be read")
    utt2spk = read_table(s.utt2spk, 2, 2) if s.utt2spk else None
    texts = read_table(s.text, 1) if s.text else {}
    sups = []
    for rec in recs:
        path = files[rec.id]
        if utt2spk is not None:
            spk = utt2spk.get(rec.id)
        elif s.speaker_from == "parent":
            spk = _safe_id(path.parent.name) if path.parent != audio_dir else rec.id
        elif s.speaker_from == "first_dir":
            rel = path.relative_to(audio_dir)
            spk = _safe_id(rel.parts[0]) if len(rel.parts) > 1 else rec.id
        else:
            spk = rec.id
        text = texts.get(rec.id)
        if text is None and not s.no_sidecar_text:
            text = _sidecar_text(path)
        sups.append(SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration,
                                       channel=0 if rec.num_channels == 1 else list(range(rec.num_channels)),
                                       speaker=spk, text=text))
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups), None


def from_wav_scp(s: FolderSettings) -> Tuple[RecordingSet, SupervisionSet, Dict[str, str]]:
    from lhotse import RecordingSet, SupervisionSegment, SupervisionSet

    if s.data_dir:
        kd = read_kaldi_dir(s.data_dir)  # checks the files agree
        wav_scp, segments, utt2spk, texts = kd.wav_scp, kd.segments, kd.utt2spk, kd.text or {}
        source = s.data_dir
    else:
        source = s.wav_scp or ""
        wav_scp = read_wav_scp(source)
        segments = read_segments(s.segments, wav_scp) if s.segments else None
        utt2spk = read_table(s.utt2spk, 2, 2) if s.utt2spk else None
        texts = read_table(s.text, 1) if s.text else {}
    if not wav_scp:
        raise PrepareError(f"folder: {source} lists no recordings")
    recs, failed = _read_all(sorted(wav_scp.items()), _spec_recording, s.num_jobs)
    if not recs:
        raise PrepareError(f"folder: none of the {len(wav_scp)} entries of {source} could be read")
    by_id = {r.id: r for r in recs}
    sups = []
    if segments is None:
        for rec in recs:
            sups.append(SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration,
                                           speaker=(utt2spk or {}).get(rec.id, rec.id), text=texts.get(rec.id)))
    else:
        dropped = 0
        for utt in sort_keys(segments):
            rec_id, start, end = segments[utt]
            rec = by_id.get(rec_id)
            if rec is None:
                dropped += 1
                continue
            end = rec.duration if end < 0 else min(end, rec.duration)
            if end - start <= 0:
                log.warning("skipping segment %s: [%.3f, %.3f] lies outside recording %s (%.3f s)",
                            utt, start, end, rec_id, rec.duration)
                continue
            sups.append(SupervisionSegment(id=utt, recording_id=rec_id, start=start, duration=end - start,
                                           speaker=(utt2spk or {}).get(utt, utt), text=texts.get(utt)))
        if dropped:
            log.warning("%d segments belong to unreadable recordings and were skipped", dropped)
    if utt2spk is not None:
        lost = [sup.id for sup in sups if sup.id not in utt2spk]
        if lost:
            log.warning("%d utterances are not in utt2spk; each becomes its own speaker (e.g. %s)", len(lost), lost[0])
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups), {r.id: wav_scp[r.id] for r in recs}


def split_dev(recordings: RecordingSet, supervisions: SupervisionSet,
              s: FolderSettings) -> Dict[str, Tuple[RecordingSet, SupervisionSet]]:
    """{train_name: ..., dev_name: ...} (dev only when asked for); deterministic for a given seed."""
    from lhotse import RecordingSet, SupervisionSet

    if s.dev_fraction == 0 and s.dev_count == 0:
        return {s.train_name: (recordings, supervisions)}
    if s.dev_by == "speaker":
        unit_of = {}
        for sup in supervisions:
            unit_of.setdefault(sup.recording_id, sup.speaker or sup.recording_id)
    else:
        unit_of = {r.id: r.id for r in recordings}
    units = sort_keys(set(unit_of.values()))
    n = s.dev_count or max(1, int(math.floor(s.dev_fraction * len(units) + 0.5)))
    if n >= len(units):
        raise PrepareError(f"dev split of {n} {s.dev_by}s would leave nothing to train on ({len(units)} in all)")
    rng = random.Random(s.seed)
    dev_units = set(rng.sample(units, n))
    dev_recs = {r for r, u in unit_of.items() if u in dev_units}
    out = {}
    for name, keep in ((s.train_name, lambda r: r not in dev_recs), (s.dev_name, lambda r: r in dev_recs)):
        out[name] = (RecordingSet.from_recordings(r for r in recordings if keep(r.id)),
                     SupervisionSet.from_segments(sup for sup in supervisions if keep(sup.recording_id)))
    return out


def prepare_folder(s: FolderSettings) -> List[SplitSummary]:
    """The recordings and supervisions of the input, the dev split carved out, then manifests and Kaldi dirs."""
    recs, sups, wav_scp = from_audio_dir(s) if s.audio_dir else from_wav_scp(s)
    return [write_split(s.output_dir, name, r, u, manifest_dir=s.manifest_path, prefix=s.prefix, part=name,
                        wav_scp=wav_scp)
            for name, (r, u) in split_dev(recs, sups, s).items()]


class FolderPreparer(Preparer):
    def prepare(self, settings: PrepareSettings) -> List[SplitSummary]:
        assert isinstance(settings, FolderSettings)
        return prepare_folder(settings)


RECIPE = FolderPreparer(name="folder", summary="a directory of audio, a wav.scp or a Kaldi data dir", about=__doc__,
                        settings_class=FolderSettings, options=tuple(FolderSettings._fields()))

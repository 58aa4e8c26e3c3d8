"""Manifests -> Kaldi dir with stok's writer: plain paths, segments only when needed, no 'None', sorted."""

from __future__ import annotations

import pytest
from lhotse import RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio import AudioSource, Recording

from stok.data.prepare.manifests import (PrepareError, kaldi_dir_from_manifests, needs_segments, parse_combine,
                                         recording_spec, write_split)
from tests.prepare_helpers import check_kaldi_dir, check_manifests


def rec(rid, dur=2.0, source=None, kind="file", rate=16000):
    src = [AudioSource(type=kind, channels=[0], source=source or f"/audio/{rid}.flac")]
    return Recording(id=rid, sources=src, sampling_rate=rate, num_samples=int(dur * rate), duration=dur)


def sup(sid, rid, start=0.0, dur=2.0, speaker=None, text=None):
    return SupervisionSegment(id=sid, recording_id=rid, start=start, duration=dur, speaker=speaker, text=text)


def test_whole_recordings_need_no_segments():
    recs = RecordingSet.from_recordings([rec("b"), rec("a"), rec("B")])
    sups = SupervisionSet.from_segments([sup("a", "a", speaker="s1", text="hi  there\n"), sup("b", "b"), sup("B", "B", speaker="s1")])
    assert not needs_segments(recs, sups)
    kd = kaldi_dir_from_manifests(recs, sups)
    assert kd.segments is None
    assert kd.utt_ids() == ["B", "a", "b"]  # C locale: upper case first
    assert kd.wav_scp["a"] == "/audio/a.flac"  # FLAC stays a plain path
    assert kd.utt2spk == {"a": "s1", "b": "b", "B": "s1"}  # no speaker: the utterance itself, never "None"
    assert kd.text == {"a": "hi there"}  # only those with text, whitespace collapsed


@pytest.mark.parametrize("sups", [
    [sup("a-1", "a", 0.0, 1.0), sup("a-2", "a", 1.0, 1.0)],  # two utterances in one recording
    [sup("a", "a", 0.5, 1.5)],  # a part of it
    [sup("utt", "a", 0.0, 2.0)],  # all of it, but another id
])
def test_parts_of_recordings_need_segments(sups):
    recs = RecordingSet.from_recordings([rec("a")])
    s = SupervisionSet.from_segments(sups)
    assert needs_segments(recs, s)
    kd = kaldi_dir_from_manifests(recs, s)
    assert sorted(kd.segments) == sorted(x.id for x in sups)
    assert kd.utt2dur == {x.id: pytest.approx(x.duration) for x in sups}
    assert list(kd.wav_scp) == ["a"]


def test_recording_specs():
    assert recording_spec(rec("p", kind="command", source="sox x.sph -t wav -")) == "sox x.sph -t wav - |"
    multi = Recording(id="m", sources=[AudioSource(type="file", channels=[0], source="/a/L.wav"),
                                       AudioSource(type="file", channels=[1], source="/a/R.wav")],
                      sampling_rate=16000, num_samples=16000, duration=1.0)
    assert recording_spec(multi) == "sox -M /a/L.wav /a/R.wav -t wav - |"
    with pytest.raises(PrepareError, match="url"):
        recording_spec(rec("u", kind="url", source="https://x/y.wav"))
    with pytest.raises(PrepareError, match="whitespace"):
        kaldi_dir_from_manifests(RecordingSet.from_recordings([rec("a b")]))
    with pytest.raises(PrepareError, match="not in the recording set"):
        kaldi_dir_from_manifests(RecordingSet.from_recordings([rec("a")]), SupervisionSet.from_segments([sup("x", "zz")]))


def test_recordings_only_and_unused_recordings(tmp_path):
    recs = RecordingSet.from_recordings([rec("a", 1.5), rec("b", 2.5)])
    kd = kaldi_dir_from_manifests(recs)
    assert kd.utt2dur == {"a": 1.5, "b": 2.5} and kd.text is None and kd.utt2spk == {"a": "a", "b": "b"}
    # a recording nobody supervises is left out
    kd = kaldi_dir_from_manifests(recs, SupervisionSet.from_segments([sup("a", "a", dur=1.5)]))
    assert list(kd.wav_scp) == ["a"] and kd.segments is None


def test_write_split_rewrites_stale_files(tmp_path):
    recs = RecordingSet.from_recordings([rec("a")])
    parts = SupervisionSet.from_segments([sup("a-1", "a", 0.0, 1.0, text="x"), sup("a-2", "a", 1.0, 1.0, text="y")])
    write_split(tmp_path, "s", recs, parts, manifest_dir=tmp_path / "m", prefix="p")
    check_kaldi_dir(tmp_path / "s", segments=True, text=True, n_utts=2)
    check_manifests(tmp_path / "m", "p", "s", 2, n_recs=1)
    whole = SupervisionSet.from_segments([sup("a", "a", 0.0, 2.0)])
    summary = write_split(tmp_path, "s", recs, whole, manifest_dir=tmp_path / "m", prefix="p")
    check_kaldi_dir(tmp_path / "s", segments=False, text=False, n_utts=1)  # old segments and text are gone
    assert summary.num_utts == 1 and summary.seconds == pytest.approx(2.0) and not summary.has_segments


def test_parse_combine():
    assert parse_combine(["t=a,b"]) == [("t", ["a", "b"])]
    with pytest.raises(PrepareError):
        parse_combine(["t"])

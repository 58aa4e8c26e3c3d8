"""Checks shared by the stage 0 tests: a Kaldi data dir is complete, sorted and consistent; manifests load in lhotse."""

from __future__ import annotations

import os
from typing import Dict, Optional

import pytest

from stok.data.kaldi_dir import read_kaldi_dir

FILES = ("wav.scp", "utt2spk", "spk2utt", "utt2dur")


def keys(path: str):
    with open(path, encoding="utf-8") as f:
        return [line.split(maxsplit=1)[0] for line in f if line.strip()]


def chapter_dirs(root, layout):
    """LibriSpeech-style ``{split: {speaker: {chapter: utts}}}`` -> ``(split, speaker, chapter, dir, utts)``,
    each ``root/split/speaker/chapter`` dir made."""
    for split, spks in layout.items():
        for spk, chapters in spks.items():
            for chapter, utts in chapters.items():
                d = os.path.join(root, split, spk, chapter)
                os.makedirs(d)
                yield split, spk, chapter, d, utts


def check_kaldi_dir(d: str, *, segments: bool, text: bool, n_utts: Optional[int] = None,
                    durations: Optional[Dict[str, float]] = None, tol: float = 2e-3):
    """Files present (and only the right optional ones), C-locale sorted, consistent; returns the KaldiDir."""
    d = str(d)
    for name in FILES:
        assert os.path.isfile(os.path.join(d, name)), f"{name} missing in {d}"
    assert os.path.isfile(os.path.join(d, "segments")) == segments, f"segments present={not segments} in {d}"
    assert os.path.isfile(os.path.join(d, "text")) == text, f"text present={not text} in {d}"
    for name in os.listdir(d):
        k = keys(os.path.join(d, name))
        assert k == sorted(k, key=lambda s: s.encode()), f"{name} not sorted in C order"
        assert len(k) == len(set(k)), f"duplicate keys in {name}"
        content = open(os.path.join(d, name), encoding="utf-8").read()
        assert " None" not in content, f"{name} holds the string None"
    kd = read_kaldi_dir(d)
    utts = kd.utt_ids()
    if n_utts is not None:
        assert len(utts) == n_utts
    assert sorted(kd.utt2spk) == sorted(utts) and sorted(kd.utt2dur) == sorted(utts)
    if text:
        assert set(kd.text) <= set(utts)
    # spk2utt is exactly utt2spk inverted
    spk2utt = {}
    with open(os.path.join(d, "spk2utt"), encoding="utf-8") as f:
        for line in f:
            spk, *us = line.split()
            spk2utt[spk] = us
    assert spk2utt == kd.spk2utt()
    if segments:
        assert set(kd.wav_scp) == {rec for rec, _, _ in kd.segments.values()}
    else:
        assert sorted(kd.wav_scp) == utts
    for spec in kd.wav_scp.values():
        assert "ffmpeg" not in spec
    if durations is not None:
        assert set(durations) == set(utts)
        for u, dur in durations.items():
            assert kd.utt2dur[u] == pytest.approx(dur, abs=tol), u
    return kd


def check_manifests(manifest_dir: str, prefix: str, split: str, n_utts: int, n_recs: Optional[int] = None):
    """The three jsonl.gz load in lhotse, are sorted by id, and agree with each other."""
    from lhotse import CutSet, RecordingSet, SupervisionSet

    base = os.path.join(str(manifest_dir), f"{prefix}_%s_{split}.jsonl.gz")
    recs = RecordingSet.from_recordings(list(RecordingSet.from_file(base % "recordings")))  # eager: index by id
    sups = SupervisionSet.from_segments(list(SupervisionSet.from_file(base % "supervisions")))
    cuts = CutSet.from_cuts(list(CutSet.from_file(base % "cuts")))
    assert len(sups) == n_utts
    assert len(recs) == (n_recs if n_recs is not None else n_utts)
    ids = [r.id for r in recs]
    assert ids == sorted(ids, key=lambda s: s.encode())
    assert len(cuts) == len(recs)
    assert sum(len(c.supervisions) for c in cuts) == n_utts
    return recs, sups, cuts


def lhotse_round_trip(d: str, rate: int, kd) -> None:
    """lhotse.kaldi.load_kaldi_data_dir reads our dir back: same recordings and durations (and text, speakers)."""
    from lhotse.kaldi import load_kaldi_data_dir

    recs, sups, _ = load_kaldi_data_dir(str(d), sampling_rate=rate)
    assert sorted(r.id for r in recs) == sorted(kd.wav_scp)
    if kd.segments is None:
        for r in recs:
            assert r.duration == pytest.approx(kd.utt2dur[r.id], abs=2e-3)
    else:
        assert sorted(s.id for s in sups) == kd.utt_ids()
        for s in sups:
            assert s.speaker == kd.utt2spk[s.id]
            if kd.text:
                assert s.text == kd.text.get(s.id, s.text)

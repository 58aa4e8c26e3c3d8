"""Stage 0 for LibriSpeech-layout corpora (LibriSpeech, Mini LibriSpeech, the shipped demo) via lhotse's recipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import soundfile as sf

from stok.bin.prepare import main
from tests.conftest import REPO, speechlike
from tests.prepare_helpers import chapter_dirs, check_kaldi_dir, check_manifests, lhotse_round_trip

# split -> speaker -> chapter -> [(duration, transcript)]
LAYOUT = {
    "dev-clean": {"84": {"121123": [(0.5, "GO DO YOU HEAR"), (0.7, "BUT IN LESS THAN FIVE MINUTES")]},
                  "174": {"50561": [(0.6, "FORGOTTEN TOO THE NAME OF GILLIAN")]}},
    "train-clean-5": {"1088": {"134315": [(0.4, "AS YOU KNOW"), (0.55, "I'M NOT SURE"), (0.45, "YES")]},
                      "19": {"198": [(0.8, "NORTHANGER ABBEY")]}},
}


def make_librispeech(root, layout=LAYOUT, rate=16000):
    durs = {}
    seed = 0
    for split, spk, chapter, d, utts in chapter_dirs(root, layout):
        lines = []
        for i, (dur, text) in enumerate(utts):
            utt = f"{spk}-{chapter}-{i:04d}"
            seed += 1
            sf.write(os.path.join(d, utt + ".flac"), speechlike(dur, rate, seed=seed), rate)
            lines.append(f"{utt} {text}\n")
            durs.setdefault(split, {})[utt] = dur
        with open(os.path.join(d, f"{spk}-{chapter}.trans.txt"), "w") as f:
            f.writelines(lines)
    return durs


def test_librispeech_layout(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    durs = make_librispeech(str(corpus))
    out = tmp_path / "data"
    assert main(["librispeech", "--corpus_dir", str(corpus), "--output_dir", str(out),
                 "--combine", "both=dev-clean,train-clean-5"]) == 0
    for split, want in durs.items():
        kd = check_kaldi_dir(out / split, segments=False, text=True, durations=want)
        check_manifests(out / "manifests", "librispeech", split, len(want))
        assert kd.utt2spk["84-121123-0000" if split == "dev-clean" else "19-198-0000"] in ("84", "19")
        for utt, spec in kd.wav_scp.items():
            assert os.path.isabs(spec) and spec.endswith(f"/{utt}.flac") and os.path.isfile(spec)
        lhotse_round_trip(out / split, 16000, kd)
    kd = check_kaldi_dir(out / "dev-clean", segments=False, text=True)
    assert kd.text["84-121123-0001"] == "BUT IN LESS THAN FIVE MINUTES"
    assert (out / "dev-clean" / "spk2utt").read_text() == "174 174-50561-0000\n84 84-121123-0000 84-121123-0001\n"
    both = check_kaldi_dir(out / "both", segments=False, text=True, n_utts=7)
    assert both.utt2dur["1088-134315-0002"] == pytest.approx(0.45, abs=1e-3)
    check_manifests(out / "manifests", "librispeech", "both", 7)


def test_librispeech_split_selection_and_rerun(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    make_librispeech(str(corpus))
    out = tmp_path / "data"
    args = ["librispeech", "--corpus_dir", str(corpus), "--output_dir", str(out), "--splits", "train-clean-5"]
    assert main(args) == 0
    assert sorted(os.listdir(out)) == ["manifests", "train-clean-5"]
    first = (out / "train-clean-5" / "wav.scp").read_text()
    # a rerun reuses lhotse's manifests and writes the same dir; --force rescans
    assert main(args) == 0 and (out / "train-clean-5" / "wav.scp").read_text() == first
    assert main(args + ["--force"]) == 0 and (out / "train-clean-5" / "wav.scp").read_text() == first


def test_librispeech_errors(tmp_path, capsys):
    corpus = tmp_path / "LibriSpeech"
    make_librispeech(str(corpus))
    with pytest.raises(SystemExit, match=re.escape("test-other")):
        main(["librispeech", "--corpus_dir", str(corpus), "--output_dir", str(tmp_path / "d"),
              "--splits", "test-other"])
    with pytest.raises(SystemExit, match=re.escape("does not exist")):
        main(["librispeech", "--corpus_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match=re.escape("--corpus_dir is required")):
        main(["librispeech", "--output_dir", str(tmp_path / "d")])


def test_custom_split_names_detected(tmp_path):
    """Split names lhotse does not know are found by their *.trans.txt files (the demo's are such)."""
    corpus = tmp_path / "corpus"
    layout = {"train-clean-demo": LAYOUT["train-clean-5"], "dev-clean-demo": LAYOUT["dev-clean"]}
    durs = make_librispeech(str(corpus), layout)
    out = tmp_path / "data"
    assert main(["demo", "--corpus_dir", str(corpus), "--output_dir", str(out)]) == 0
    for split, want in durs.items():
        check_kaldi_dir(out / split, segments=False, text=True, durations=want)


def test_shipped_demo_corpus(tmp_path):
    """The corpus in recipes/demo/corpus: 64 utterances, 8 speakers, 16 kHz mono FLAC, 1-15 s."""
    out = tmp_path / "data"
    assert main(["demo", "--output_dir", str(out), "--summary_json", str(tmp_path / "s.json")]) == 0
    train = check_kaldi_dir(out / "train-clean-demo", segments=False, text=True, n_utts=54)
    dev = check_kaldi_dir(out / "dev-clean-demo", segments=False, text=True, n_utts=10)
    assert len(set(train.utt2spk.values())) == 6 and len(set(dev.utt2spk.values())) == 2
    assert not set(train.utt2spk.values()) & set(dev.utt2spk.values())
    durs = list(train.utt2dur.values()) + list(dev.utt2dur.values())
    assert 1.0 <= min(durs) and max(durs) <= 15.0
    for spec in list(train.wav_scp.values())[:5]:
        info = sf.info(spec)
        assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
    check_manifests(out / "manifests", "librispeech", "train-clean-demo", 54)


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "stok.bin.prepare", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    for corpus in ("demo", "librispeech", "aishell", "libritts", "folder"):
        assert corpus in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "stok.bin.prepare", "librispeech", "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "--download" in proc.stdout and "trans.txt" in proc.stdout

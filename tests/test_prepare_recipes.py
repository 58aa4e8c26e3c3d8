"""Each recipe's stage 0 script (recipes/<name>/local/data.sh with its conf/corpus.sh), run as run.sh runs it:
from a copy of the recipe dir, with corpus.sh options overridden on the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from tests.conftest import REPO, speechlike
from tests.prepare_helpers import check_kaldi_dir, check_manifests
from tests.test_prepare_aishell import make_aishell
from tests.test_prepare_librispeech import LAYOUT, make_librispeech
from tests.test_prepare_libritts import make_libritts


def run_data_sh(tmp_path, recipe, *args, env=None):
    """Copy recipes/<recipe>/{conf,local} to tmp and run local/data.sh there; returns (recipe dir, process)."""
    rdir = tmp_path / recipe
    for sub in ("conf", "local"):
        shutil.copytree(os.path.join(REPO, "recipes", recipe, sub), rdir / sub)
    env = dict(os.environ, STOK_ROOT=REPO, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               **(env or {}))
    proc = subprocess.run(["bash", str(rdir / "local" / "data.sh"), *map(str, args)], env=env,
                          capture_output=True, text=True)
    return rdir, proc


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_demo(tmp_path):
    corpus = tmp_path / "corpus"
    make_librispeech(str(corpus), {"train-clean-demo": LAYOUT["train-clean-5"], "dev-clean-demo": LAYOUT["dev-clean"]})
    rdir, proc = run_data_sh(tmp_path, "demo", "--corpus_dir", corpus)
    ok(proc)
    check_kaldi_dir(rdir / "data" / "train-clean-demo", segments=False, text=True, n_utts=4)
    check_kaldi_dir(rdir / "data" / "dev-clean-demo", segments=False, text=True, n_utts=3)
    # run.sh passes the options it was given through the environment; they win over conf/corpus.sh
    rdir, proc = run_data_sh(tmp_path / "env", "demo", env={"corpus_dir": str(corpus), "dev_set": "", "test_sets": ""})
    ok(proc)
    assert sorted(os.listdir(rdir / "data")) == ["manifests", "train-clean-demo"]
    _, proc = run_data_sh(tmp_path / "again", "demo", "--no_such_option", "1")
    assert proc.returncode != 0 and "unknown option --no_such_option" in proc.stderr
    _, proc = run_data_sh(tmp_path / "help", "demo", "--help")
    assert proc.returncode == 0 and "--corpus_dir" in proc.stdout and "--train_set" in proc.stdout


def test_librispeech_with_combine(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    make_librispeech(str(corpus))
    rdir, proc = run_data_sh(tmp_path, "librispeech", "--corpus_dir", corpus, "--train_set", "both",
                             "--dev_set", "dev-clean", "--combine", "both=dev-clean,train-clean-5")
    ok(proc)
    assert sorted(os.listdir(rdir / "data")) == ["both", "dev-clean", "manifests", "train-clean-5"]
    check_kaldi_dir(rdir / "data" / "both", segments=False, text=True, n_utts=7)
    check_manifests(rdir / "data" / "manifests", "librispeech", "both", 7)


def test_librispeech_missing_corpus_is_a_clear_error(tmp_path):
    _, proc = run_data_sh(tmp_path, "librispeech", "--corpus_dir", tmp_path / "nope")
    assert proc.returncode != 0 and "does not exist" in proc.stderr and "openslr.org/12" in proc.stderr


def test_aishell(tmp_path):
    corpus = tmp_path / "aishell"
    make_aishell(str(corpus))
    rdir, proc = run_data_sh(tmp_path, "aishell", "--corpus_dir", corpus)
    ok(proc)
    for split, n in (("train", 3), ("dev", 2), ("test", 1)):
        check_kaldi_dir(rdir / "data" / split, segments=False, text=True, n_utts=n)


def test_libritts(tmp_path):
    corpus = tmp_path / "LibriTTS"
    make_libritts(str(corpus))
    rdir, proc = run_data_sh(tmp_path, "libritts", "--corpus_dir", corpus)
    ok(proc)
    check_kaldi_dir(rdir / "data" / "train-clean-100", segments=False, text=True, n_utts=3)
    check_kaldi_dir(rdir / "data" / "dev-clean", segments=False, text=True, n_utts=2)


@pytest.mark.parametrize("mode", ["audio_dir", "wav_scp", "kaldi_dir"])
def test_folder(tmp_path, mode):
    audio = tmp_path / "audio"
    os.makedirs(audio / "spk")
    for i in range(10):
        sf.write(audio / "spk" / f"u{i}.flac", speechlike(0.3 + 0.05 * i, 16000, seed=i), 16000)
    if mode == "audio_dir":
        args = ["--corpus_dir", audio, "--dev_fraction", "0.2"]
    else:
        kdir = tmp_path / "kaldi"
        os.makedirs(kdir)
        (kdir / "wav.scp").write_text("".join(f"u{i} {audio / 'spk' / f'u{i}.flac'}\n" for i in range(10)))
        (kdir / "utt2spk").write_text("".join(f"u{i} S{i % 2}\n" for i in range(10)))
        args = ["--wav_scp", kdir / "wav.scp" if mode == "wav_scp" else kdir, "--dev_fraction", "0.2"]
    rdir, proc = run_data_sh(tmp_path, "folder", *args)
    ok(proc)
    train = check_kaldi_dir(rdir / "data" / "train", segments=False, text=False, n_utts=8)
    check_kaldi_dir(rdir / "data" / "dev", segments=False, text=False, n_utts=2)
    if mode != "audio_dir":
        assert set(train.utt2spk.values()) <= {"S0", "S1"}

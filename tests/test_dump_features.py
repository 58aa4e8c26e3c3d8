"""Stage 1 through its command line: MFCC and HuBERT features in feats.scp, aligned to codec frames."""

from __future__ import annotations

import logging
import os
import subprocess

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from stok.bin import dump_features
from stok.core.frames import codec_frames
from stok.models.hubert import load_hubert
from stok.models.hubert.extract import HubertExtractor
from stok.models.mfcc import mfcc_features
from stok.core.frames import align_teacher
from tests.conftest import PYTHON, REPO, write_corpus
from tests.hubert_helpers import save_fairseq, tiny_model

DURATIONS = (1.3, 0.4, 2.2, 0.7, 1.9, 0.02, 3.1, 1.0)  # 0.02 s = 320 samples: too short for a frame


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    scp = write_corpus(str(tmp_path / "audio"), DURATIONS)
    os.makedirs(d)
    os.replace(scp, d / "wav.scp")
    with open(d / "wav.scp") as f:
        keys = [line.split()[0] for line in f]
    with open(d / "utt2dur", "w") as f:
        for k in keys:
            f.write(f"{k} {DURATIONS[int(k[3:])]}\n")
    return str(d)


def audio(data_dir):
    out = {}
    with open(os.path.join(data_dir, "wav.scp")) as f:
        for line in f:
            k, p = line.split()
            out[k] = torch.from_numpy(sf.read(p, dtype="float32")[0])
    return out


def run(data_dir, out, *extra):
    return dump_features.main(["--data_dir", data_dir, "--output_dir", out, "--num_workers", "0", *extra])


def test_mfcc_dump(data_dir, tmp_path, caplog):
    out = str(tmp_path / "mfcc")
    with caplog.at_level(logging.INFO):
        summary = run(data_dir, out, "--teacher", "mfcc", "--batch_seconds", "3")
    assert "disk estimate: 0.00 h x 50 frames/s x 39 dims x 4 B" in caplog.text
    feats = kaldiio.load_scp(os.path.join(out, "feats.scp"))
    wav = audio(data_dir)
    assert set(feats) == set(wav) - {"utt005"}
    with open(os.path.join(out, "failed.list")) as f:
        assert f.read().startswith("utt005\tTooShort")
    for k, a in feats.items():
        n = wav[k].numel()
        assert a.shape == (codec_frames(n), 39) and a.dtype == np.float32
        ref = align_teacher(mfcc_features(wav[k]), codec_frames(n)).numpy()
        assert np.abs(a - ref).max() <= 1e-4
    assert summary["model"]["model"] == "mfcc"


def test_run_sh_command_form(data_dir, tmp_path):
    """What run.sh stage 1 runs for the demo (python -m, workers, CPU)."""
    out = str(tmp_path / "dump" / "mfcc" / "train")
    cmd = [PYTHON, "-m", "stok.bin.dump_features", "--teacher", "mfcc", "--device", "cpu", "--num_workers", "2",
           "--data_dir", data_dir, "--output_dir", out]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(kaldiio.load_scp(os.path.join(out, "feats.scp"))) == len(DURATIONS) - 1


@pytest.fixture
def fairseq_ckpt(tmp_path):
    model, cfg = tiny_model("base", seed=11)
    return save_fairseq(model, cfg, str(tmp_path / "hubert_tiny.pt"))


@pytest.mark.parametrize("layer", ["2", "avg"])
def test_hubert_dump_batched_equals_one_at_a_time(data_dir, tmp_path, fairseq_ckpt, layer):
    common = ["--teacher", "hubert", "--checkpoint", fairseq_ckpt, "--layer", layer]
    run(data_dir, str(tmp_path / "one"), *common, "--batch_size", "1")
    summary = run(data_dir, str(tmp_path / "bat"), *common, "--batch_seconds", "8")
    one = kaldiio.load_scp(str(tmp_path / "one" / "feats.scp"))
    bat = kaldiio.load_scp(str(tmp_path / "bat" / "feats.scp"))
    assert set(one) == set(bat) and len(bat) == len(DURATIONS) - 1
    wav = audio(data_dir)
    ex = HubertExtractor(load_hubert(fairseq_ckpt), layer=layer)
    for k in bat:
        assert bat[k].shape == (codec_frames(wav[k].numel()), 128)
        assert np.abs(bat[k] - one[k]).max() <= 1e-4
        ref = align_teacher(ex.extract([wav[k]])[0], codec_frames(wav[k].numel())).numpy()
        assert np.abs(bat[k] - ref).max() <= 1e-4
    assert summary["model"]["layer"] == (int(layer) if layer != "avg" else "avg")
    assert summary["model"]["format"] == "fairseq"


def test_compressed16_storage(data_dir, tmp_path, fairseq_ckpt, caplog):
    common = ["--teacher", "hubert", "--checkpoint", fairseq_ckpt, "--layer", "avg"]
    run(data_dir, str(tmp_path / "f32"), *common)
    with caplog.at_level(logging.INFO):
        run(data_dir, str(tmp_path / "c16"), *common, "--feature_storage", "compressed16")
    assert "x 128 dims x 2 B (compressed16)" in caplog.text
    f32 = kaldiio.load_scp(str(tmp_path / "f32" / "feats.scp"))
    c16 = kaldiio.load_scp(str(tmp_path / "c16" / "feats.scp"))
    for k in f32:
        a, b = f32[k], c16[k]
        assert b.dtype == np.float32 and a.shape == b.shape
        assert np.abs(a - b).max() <= (a.max() - a.min()) / 65535 * 1.01 + 1e-7
    size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".ark"))
    assert size(str(tmp_path / "c16")) < 0.6 * size(str(tmp_path / "f32"))


def test_long_files_are_chunked_not_truncated(data_dir, tmp_path, fairseq_ckpt):
    run(data_dir, str(tmp_path / "chunk"), "--teacher", "hubert", "--checkpoint", fairseq_ckpt, "--layer", "2",
        "--max_chunk_seconds", "0.5")
    feats = kaldiio.load_scp(str(tmp_path / "chunk" / "feats.scp"))
    wav = audio(data_dir)
    for k, a in feats.items():
        assert a.shape[0] == codec_frames(wav[k].numel())


def test_disk_estimate_numbers():
    est = dump_features.disk_estimate(960.0, 768, "float32")
    assert abs(est["bytes"] / 1e9 - 530.8) < 1  # LibriSpeech 960 h of HuBERT base features
    assert dump_features.disk_estimate(960.0, 768, "compressed16")["bytes"] == est["bytes"] / 2


def test_bad_options_fail_before_work(data_dir, tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint"):
        run(data_dir, str(tmp_path / "x"), "--teacher", "hubert")
    with pytest.raises(SystemExit, match="out of range"):
        model, cfg = tiny_model("base")
        ck = save_fairseq(model, cfg, str(tmp_path / "t.pt"))
        run(data_dir, str(tmp_path / "x"), "--teacher", "hubert", "--checkpoint", ck, "--layer", "7")

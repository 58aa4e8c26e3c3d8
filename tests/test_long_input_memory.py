"""Memory does not grow with one utterance's length: each dump tool and ``stok-decode`` runs as a child process
(``--num_workers 0``: one process) on a data dir holding one long file and on one holding a short file of about
the length of the tool's window or block, and the long run's peak RSS must stay within the short run's plus what
the long input itself takes (its waveform, its features, a copy each; listed per tool) and a fixed slack for
run-to-run noise (~40 MB between runs of the same input here). Computing the long input whole (the code before
this test, or ``--window_seconds 0``) exceeds every budget by a wide margin (numbers per test)."""

from __future__ import annotations

import os

import kaldiio
import numpy as np
import pytest
import torch

from tests.rss_helpers import one_file_dir, peak_rss

MB = 2 ** 20
SLACK = 100 * MB
SR = 16000


def _wave_bytes(seconds: float) -> int:
    return int(seconds * SR) * 4


@pytest.fixture(scope="module")
def st_model(tmp_path_factory):
    from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, save_released

    torch.manual_seed(0)
    cfg = SpeechTokenizerConfig(n_filters=8, dimension=32, semantic_dimension=8, codebook_size=16, n_q=2,
                                lstm_layers=1)
    return save_released(SpeechTokenizer(cfg), tmp_path_factory.mktemp("st_mem") / "model")


def test_dump_codes_memory_is_one_window(st_model, tmp_path):
    """240 s in 10 s windows against 10 s whole: within 3 waveforms + slack (whole, the 240 s input takes ~560 MB
    more than the 10 s one with this model)."""
    peaks = {}
    for seconds in (10.0, 240.0):
        data = one_file_dir(str(tmp_path / f"d{seconds:g}"), seconds)
        peaks[seconds] = peak_rss(["stok.bin.dump_codes", "--model_dir", st_model, "--data_dir", data,
                                   "--output_dir", str(tmp_path / f"o{seconds:g}"), "--device", "cpu",
                                   "--num_workers", "0", "--window_seconds", "10", "--window_margin_seconds", "1"])
    assert peaks[240.0] <= peaks[10.0] + 3 * _wave_bytes(240.0) + SLACK, {k: v / MB for k, v in peaks.items()}


def test_decode_memory_is_one_chunk(st_model, tmp_path):
    """Codes of 240 s decoded as a stream of 10 s chunks against 10 s of codes: within the slack (whole, ~830 MB
    more); the output is written as it comes."""
    peaks = {}
    rng = np.random.default_rng(0)
    for seconds in (10.0, 240.0):
        d = tmp_path / f"c{seconds:g}"
        d.mkdir()
        codes = rng.integers(0, 16, (int(seconds * 50), 2)).astype(np.float32)
        with kaldiio.WriteHelper(f"ark,scp:{d / 'st_codes.ark'},{d / 'st_codes.scp'}") as w:
            w("long", codes)
        peaks[seconds] = peak_rss(["stok.bin.decode", "--model_dir", st_model, "--codes_scp",
                                   str(d / "st_codes.scp"), "--output_dir", str(tmp_path / f"dec{seconds:g}"),
                                   "--device", "cpu", "--chunk_seconds", "10"])
        assert os.path.getsize(tmp_path / f"dec{seconds:g}" / "wav" / "long.wav") > seconds * SR * 2
    assert peaks[240.0] <= peaks[10.0] + SLACK, {k: v / MB for k, v in peaks.items()}


def test_dump_s3_memory_is_one_window(tmp_path):
    """20 min against 30 s (one 30 s window): within 2 waveforms, 2 log-mels and the slack (the whole-utterance
    log-mel front end holds the STFT and its power, mel and log copies of the whole input)."""
    from stok.models.s3.checkpoint import save_checkpoint
    from stok.models.s3.config import tiny_config
    from stok.models.s3.model import build_model

    ckpt = str(tmp_path / "s3.pt")
    save_checkpoint(build_model(tiny_config("v2_25hz"), seed=0), ckpt)
    peaks = {}
    for seconds in (30.0, 1200.0):
        data = one_file_dir(str(tmp_path / f"d{seconds:g}"), seconds)
        peaks[seconds] = peak_rss(["stok.bin.dump_s3", "--model", ckpt, "--data_dir", data, "--output_dir",
                                   str(tmp_path / f"o{seconds:g}"), "--device", "cpu", "--num_workers", "0"])
    mel_bytes = int(1200.0 * 100) * 128 * 4
    assert peaks[1200.0] <= peaks[30.0] + 2 * _wave_bytes(1200.0) + 2 * mel_bytes + SLACK, \
        {k: v / MB for k, v in peaks.items()}


def test_dump_mfcc_memory_is_one_block(tmp_path):
    """20 min against 60 s (one MFCC block): within 2 waveforms and the slack (Kaldi's framing of the whole
    utterance holds several ``[frames, 512]`` copies)."""
    peaks = {}
    for seconds in (60.0, 1200.0):
        data = one_file_dir(str(tmp_path / f"d{seconds:g}"), seconds)
        peaks[seconds] = peak_rss(["stok.bin.dump_features", "--teacher", "mfcc", "--data_dir", data,
                                   "--output_dir", str(tmp_path / f"o{seconds:g}"), "--device", "cpu",
                                   "--num_workers", "0"])
    assert peaks[1200.0] <= peaks[60.0] + 2 * _wave_bytes(1200.0) + SLACK, {k: v / MB for k, v in peaks.items()}


@pytest.fixture(scope="module")
def hubert_ckpt(tmp_path_factory):
    """A HuBERT with base's conv front end and width (768) and 2 layers, as a torchaudio state dict with its
    config."""
    from stok.models.hubert.configs import build_model, get_config

    torch.manual_seed(0)
    cfg = get_config("base", encoder_num_layers=2)
    model = build_model(cfg)
    path = str(tmp_path_factory.mktemp("hubert_mem") / "hubert.pt")
    torch.save({"config": cfg, "state_dict": model.state_dict()}, path)  # not base's 12 layers: config saved with it
    return path


@pytest.mark.parametrize("tool", ["features", "kmeans"])
def test_hubert_memory_is_one_chunk(hubert_ckpt, tmp_path, tool):
    """240 s in 10 s chunks against 10 s (one chunk): within a waveform, the features (the dump's output) and the
    slack (all chunks of the file in one batch hold every chunk's activations at once). The 10 s peak is the
    higher of two runs: one run in a few peaks ~35 MB lower than the others (measured 774-817 MB over ten
    runs, with or without stok.mkl_on_amd), which alone would eat most of the slack."""
    from stok.models.kmeans.model import KMeansModel

    km = str(tmp_path / "km.npz")
    KMeansModel(np.random.default_rng(0).standard_normal((50, 768)).astype(np.float32)).save(km)
    peaks = {}
    for seconds, runs in ((10.0, 2), (240.0, 1)):
        data = one_file_dir(str(tmp_path / f"d{seconds:g}"), seconds)
        for run in range(runs):
            common = ["--teacher", "hubert", "--checkpoint", hubert_ckpt, "--layer", "2", "--max_chunk_seconds",
                      "10", "--data_dir", data, "--output_dir", str(tmp_path / f"o{seconds:g}_{run}"), "--device",
                      "cpu", "--num_workers", "0"]
            argv = (["stok.bin.dump_features"] if tool == "features" else
                    ["stok.bin.kmeans", "dump", "--from_audio", "--km_model", km]) + common
            peaks[seconds] = max(peaks.get(seconds, 0), peak_rss(argv))
    feats = int(240.0 * 50) * 768 * 4 if tool == "features" else 0
    assert peaks[240.0] <= peaks[10.0] + _wave_bytes(240.0) + feats + SLACK, {k: v / MB for k, v in peaks.items()}

"""S3Tokenizer front end: Whisper-style log-mel, per-utterance floor, last frame dropped, too-short inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stok.core.model_api import TooShort
from stok.models.s3.frontend import _filters, batch_log_mel, log_mel, mel_frames
from tests.conftest import speechlike


def slaney_filters(n_mels=128, n_fft=400, sr=16000):
    """Independent numpy Slaney mel filterbank with area normalisation, [n_mels, n_fft // 2 + 1]."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[i] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return fb


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """The notes' recipe in float64 numpy: reflect pad 200, periodic Hann, drop last frame, floor at max - 8."""
    n = len(x)
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[i * 160: i * 160 + 400] * window for i in range(n // 160 + 1)])[:-1]
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    logm = np.log10(np.maximum(slaney_filters() @ power.T, 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    return (logm + 4.0) / 4.0


def test_filterbank_matches_independent_slaney():
    _, fb = _filters(torch.device("cpu"))
    assert fb.shape == (128, 201)
    np.testing.assert_allclose(fb.numpy(), slaney_filters(), atol=2e-6)


@pytest.mark.parametrize("n", [201, 320, 16000, 16159, 16160, 37123])
def test_log_mel_matches_reference_and_drops_last_frame(n):
    x = speechlike(n / 16000, seed=n)[:n]
    got = log_mel(torch.from_numpy(x))
    assert got.shape == (128, n // 160) == (128, mel_frames(n))
    np.testing.assert_allclose(got.numpy(), reference_log_mel(x), atol=2e-4)


def test_floor_uses_the_utterance_own_max():
    quiet = speechlike(1.0, seed=1) * 0.1
    quiet[-4000:] = 0.0  # silence: its log-mel would be -10, so the floor (max - 8) decides
    loud = speechlike(2.0, seed=2) * 10
    loud[:4000] = 0.0
    solo = log_mel(torch.from_numpy(quiet))
    solo_loud = log_mel(torch.from_numpy(loud))
    # floored at the utterance's own max - 8 (log10 units), i.e. max - 2 after (x + 4) / 4
    assert float(solo.min()) == pytest.approx(float(solo.max()) - 2.0, abs=1e-5)
    assert float(solo_loud.min()) == pytest.approx(float(solo_loud.max()) - 2.0, abs=1e-5)
    assert float(solo.max()) < float(solo_loud.max()) - 0.5  # a batch-wide max would floor the quiet one higher
    waves = torch.zeros(2, len(loud))
    waves[0, : len(quiet)] = torch.from_numpy(quiet)
    waves[1] = torch.from_numpy(loud)
    feats, frames = batch_log_mel(waves, torch.tensor([len(quiet), len(loud)]))
    assert frames.tolist() == [100, 200]
    assert torch.allclose(feats[0, :, :100], solo, atol=1e-6)
    assert torch.allclose(feats[1], solo_loud, atol=1e-6)
    assert float(feats[0, :, 100:].abs().max()) == 0.0  # padding stays zero


def test_too_short_inputs_fail_clearly():
    for n in (0, 1, 199, 200):
        with pytest.raises(TooShort, match="at least 201"):
            log_mel(torch.zeros(n))
    assert log_mel(torch.randn(201)).shape == (128, 1)
    with pytest.raises(TooShort):
        batch_log_mel(torch.randn(2, 500), torch.tensor([500, 150]))

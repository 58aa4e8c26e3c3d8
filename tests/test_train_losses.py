"""Trainer losses on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from stok.train import losses as L
from stok.train.config import LossConfig


def test_d_axis_distill_identical_and_orthogonal():
    torch.manual_seed(0)
    f = torch.randn(2, 30, 16)
    assert L.d_axis_distill(f, f.clone()).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), abs=1e-5)
    assert L.d_axis_distill(f, 3 * f).item() == pytest.approx(0.31326, abs=1e-4)  # scale-free
    # orthogonal along time for every feature dimension: cos = 0 -> log 2
    t = torch.arange(40, dtype=torch.float32)
    a = torch.sin(2 * math.pi * t / 40)[None, :, None].expand(2, 40, 8)
    b = torch.cos(2 * math.pi * t / 40)[None, :, None].expand(2, 40, 8)
    assert L.d_axis_distill(a, b).item() == pytest.approx(math.log(2), abs=1e-4)
    # anti-correlated: cos = -1
    assert L.d_axis_distill(f, -f).item() == pytest.approx(-math.log(1 / (1 + math.exp(1))), abs=1e-5)


def test_d_axis_distill_takes_cosine_along_time_not_features():
    # per-frame cosine would be 1 here (same direction each frame), cosine along time is not
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    f = torch.stack([t, t], -1)[None]  # [1, 4, 2]
    g = torch.stack([t.flip(0), t.flip(0)], -1)[None]
    cos = float((t * t.flip(0)).sum() / (t.norm() ** 2))
    assert L.d_axis_distill(f, g).item() == pytest.approx(-math.log(1 / (1 + math.exp(-cos))), abs=1e-5)


def test_distill_cuts_to_shorter_and_masks_padding():
    torch.manual_seed(1)
    f, g = torch.randn(2, 20, 8), torch.randn(2, 20, 8)
    ref = L.d_axis_distill(f[:1, :12], g[:1, :12]).item()
    # item 0 has 12 true frames; the rest is garbage and must not count
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :12] = True
    assert L.d_axis_distill(f[:1], g[:1], mask).item() == pytest.approx(ref, abs=1e-6)
    # teacher one frame shorter (HuBERT): cut to the shorter length
    assert L.d_axis_distill(f, g[:, :19]).item() == pytest.approx(L.d_axis_distill(f[:, :19], g[:, :19]).item())
    tref = L.t_axis_distill(f[:1, :12], g[:1, :12]).item()
    assert L.t_axis_distill(f[:1], g[:1], mask).item() == pytest.approx(tref, abs=1e-6)


def test_t_axis_distill_values():
    f = torch.randn(2, 10, 6)
    assert L.t_axis_distill(f, f).item() == pytest.approx(0.31326, abs=1e-4)  # L1 0 + sim floor
    g = f + 1.0
    l1 = 1.0
    sim = -torch.nn.functional.logsigmoid(torch.nn.functional.cosine_similarity(f, g, dim=-1)).mean().item()
    assert L.t_axis_distill(f, g, lambda_sim=2.0).item() == pytest.approx(l1 + 2 * sim, abs=1e-5)


def test_kmeans_cross_entropy():
    labels = torch.randint(0, 5, (2, 7))
    perfect = torch.nn.functional.one_hot(labels, 5).float() * 50
    assert L.kmeans_ce(perfect, labels).item() < 1e-6
    assert L.kmeans_ce(torch.zeros(2, 7, 5), labels).item() == pytest.approx(math.log(5), abs=1e-6)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, :3] = True
    wrong = perfect.clone()
    wrong[:, 3:] = -perfect[:, 3:]  # wrong only on padded frames
    assert L.kmeans_ce(wrong, labels, mask).item() < 1e-6


def test_mel_resolutions_and_values():
    cfg = LossConfig()
    mel = L.MelLoss(cfg, 16000)
    got = [(m.n_fft, m.hop, m.win) for m in mel.mels]
    assert got == [(1024, 240, 1024), (512, 120, 512), (256, 60, 256), (128, 30, 128)]
    assert mel.lambdas == [45, 1, 1, 1]
    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 8000)
    total, parts = mel(x, x.clone())
    assert total.item() == 0 and all(p.item() == 0 for p in parts)
    y = x * 2  # log-mel differs by log(2) wherever the clamp is not active
    total, parts = mel(x, y)
    assert parts[0].item() == pytest.approx(math.log(2), rel=0.02)
    assert total.item() == pytest.approx(sum(w * p.item() for w, p in zip([45, 1, 1, 1], parts)), rel=1e-5)
    # released spectrogram: reflect pad (n_fft - hop) / 2, no centring -> frames = (T + 2p - n_fft) // hop + 1
    spec = mel.mels[0](x)
    p = (1024 - 240) // 2
    assert spec.shape == (2, 80, (8000 + 2 * p - 1024) // 240 + 1)
    # silence is clamped at log(1e-5)
    assert mel.mels[0](torch.zeros(1, 4000)).max().item() == pytest.approx(math.log(1e-5), abs=1e-4)


def test_mel_l2_variant_adds_a_term():
    x = 0.1 * torch.randn(1, 4000)
    y = x * 3
    a, _ = L.MelLoss(LossConfig(), 16000)(x, y)
    b, _ = L.MelLoss(LossConfig(mel_l2_lambda=1.0), 16000)(x, y)
    assert b.item() > a.item() + 1.0


def test_mel_mask_counts_only_true_frames():
    mel = L.MelLoss(LossConfig(), 16000)
    x = 0.1 * torch.randn(1, 16000)
    y = x.clone()
    y[:, 8000:] = 0.3 * torch.randn(1, 8000)
    full, _ = mel.distance(0, x, y)
    masked, _ = mel.distance(0, x, y, torch.tensor([4000]))
    assert masked.item() == 0 and full.item() > 0.1


def test_recon_l1_masked():
    x = torch.zeros(2, 100)
    y = torch.ones(2, 100)
    assert L.recon_l1(x, y).item() == 1.0
    m = L.sample_mask(torch.tensor([50, 100]), 100)
    y2 = y.clone()
    y2[0, 50:] = 7.0  # beyond item 0's length: ignored
    assert L.recon_l1(x, y2, m).item() == 1.0


def test_adversarial_losses_lsgan_and_hinge():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    d, parts = L.discriminator_loss(ones, zeros, "lsgan")
    assert d.item() == 0 and len(parts) == 1
    d, _ = L.discriminator_loss(zeros, ones, "lsgan")
    assert d.item() == 2.0
    assert L.generator_adv_loss(ones, "lsgan").item() == 0
    assert L.generator_adv_loss(zeros * 3, "lsgan").item() == 3.0  # summed over sub-discriminators
    d, _ = L.discriminator_loss([torch.full((2, 5), 2.0)], [torch.full((2, 5), -2.0)], "hinge")
    assert d.item() == 0
    d, _ = L.discriminator_loss(zeros, zeros, "hinge")
    assert d.item() == 2.0
    assert L.generator_adv_loss([torch.full((1, 3), 0.25)], "hinge").item() == pytest.approx(0.75)


def test_feature_matching_value_and_no_gradient_to_real():
    r = [[torch.ones(2, 3, requires_grad=True), torch.full((2, 4), 2.0, requires_grad=True)]]
    g = [[torch.zeros(2, 3, requires_grad=True), torch.full((2, 4), 1.0, requires_grad=True)]]
    fm = L.feature_matching(r, g)
    assert fm.item() == pytest.approx(2.0)
    fm.backward()
    assert r[0][0].grad is None and g[0][0].grad is not None
    assert L.feature_matching(r, g, normalize=True).item() == pytest.approx(1.0 + 0.5)


def test_codebook_stats():
    codes = torch.tensor([[[0, 1, 2, 3]], [[5, 5, 5, 5]]])  # [n_q=2, B=1, T=4]
    stats = L.codebook_stats(codes, 8)
    assert stats[0] == (4, pytest.approx(4.0)) and stats[1] == (1, pytest.approx(1.0))
    mask = torch.tensor([[True, True, False, False]])
    assert L.codebook_stats(codes, 8, mask)[0] == (2, pytest.approx(2.0))

"""Discriminator output shapes, feature-map counts, and the released channel sizes."""

from __future__ import annotations

import torch

from stok.train.config import DiscConfig
from stok.train.discriminators import (Discriminators, MultiPeriodDiscriminator, MultiScaleDiscriminator,
                                       MultiScaleSTFTDiscriminator, PeriodDiscriminator, ScaleDiscriminator)


def test_mpd_shapes():
    d = MultiPeriodDiscriminator(width=0.125)
    x = torch.randn(2, 1, 4001)  # not a multiple of any period: reflect-padded
    logits, fmaps = d(x)
    assert len(logits) == 5 and [len(f) for f in fmaps] == [6] * 5
    for p, lg, fm in zip((2, 3, 5, 7, 11), logits, fmaps):
        rows = -(-4001 // p)
        for _ in range(4):
            rows = (rows + 2 * 2 - 5) // 3 + 1
        assert fm[-1].shape == (2, 1, rows, p)
        assert lg.shape == (2, rows * p)


def test_msd_shapes():
    d = MultiScaleDiscriminator(width=0.125)
    logits, fmaps = d(torch.randn(3, 1, 4000))
    assert len(logits) == 3 and [len(f) for f in fmaps] == [8] * 3
    lengths = [4000, 2001, 1001]  # AvgPool1d(4, 2, padding=2)
    for n, lg in zip(lengths, logits):
        for s in (1, 2, 2, 4, 4, 1, 1):
            n = (n - 1) // s + 1
        assert lg.shape == (3, n)
    # first scale spectral-normed, the others weight-normed
    names0 = {n for n, _ in d.discriminators[0].named_parameters()}
    names1 = {n for n, _ in d.discriminators[1].named_parameters()}
    assert any("original" in n for n in names0) and not any("original0" in n for n in names0)
    assert any("original0" in n for n in names1)


def test_mstft_shapes():
    d = MultiScaleSTFTDiscriminator(filters=8)
    x = torch.randn(2, 1, 8000)
    logits, fmaps = d(x)
    assert len(logits) == 5 and [len(f) for f in fmaps] == [5] * 5
    for n_fft, lg in zip((1024, 2048, 512, 256, 128), logits):
        frames = (8000 - n_fft) // (n_fft // 4) + 1
        freq = n_fft // 2 + 1
        for _ in range(3):
            freq = (freq - 1) // 2 + 1
        assert lg.shape == (2, 1, frames, freq)


def test_released_channel_sizes():
    p = PeriodDiscriminator(2)
    assert [c.out_channels for c in p.convs] == [32, 128, 512, 1024, 1024]
    s = ScaleDiscriminator()
    assert [c.out_channels for c in s.convs] == [128, 128, 256, 512, 1024, 1024, 1024]
    assert [c.groups for c in s.convs] == [1, 4, 16, 16, 16, 16, 1]
    st = MultiScaleSTFTDiscriminator(32).discriminators[0]
    assert [c.out_channels for c in st.convs] == [32] * 5


def test_all_discriminators_and_gradients():
    cfg = DiscConfig(width=0.0625, mstft_filters=4)
    d = Discriminators(cfg)
    assert d.names() == ["mpd_p2", "mpd_p3", "mpd_p5", "mpd_p7", "mpd_p11", "msd_s0", "msd_s1", "msd_s2",
                         "mstft_1024", "mstft_2048", "mstft_512", "mstft_256", "mstft_128"]
    x = torch.randn(2, 1, 4800, requires_grad=True)
    logits, fmaps = d(x)
    assert len(logits) == len(fmaps) == 13
    sum(l.mean() for l in logits).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    only = Discriminators(DiscConfig(mpd=False, msd=False, width=0.0625, mstft_filters=4))
    assert len(only(x.detach())[0]) == 5

"""The weight-free MFCC teacher: 39 dims at 50 Hz, fairseq's recipe at hop 320, aligned to codec frames."""

from __future__ import annotations

import pytest
import torch
import torchaudio
from torchaudio.compliance import kaldi

from stok.core.frames import codec_frames, hubert_frames
from stok.models.mfcc import mfcc_features
from stok.models.teacher import build_teacher


def wave(n, seed=0):
    return 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_shape_and_frame_count():
    for n in (400, 719, 720, 16000, 16321):
        f = mfcc_features(wave(n))
        assert f.shape == (hubert_frames(n), 39) and f.dtype == torch.float32
    with pytest.raises(ValueError):
        mfcc_features(wave(399))


def test_matches_fairseq_recipe_at_hop_320():
    """fairseq: kaldi mfcc (use_energy False) -> deltas -> delta-deltas, concatenated; here frame_shift 20 ms."""
    w = wave(20000, 1)
    m = kaldi.mfcc(w[None], sample_frequency=16000, use_energy=False, frame_shift=20.0).T
    d = torchaudio.functional.compute_deltas(m)
    ref = torch.cat([m, d, torchaudio.functional.compute_deltas(d)], 0).T
    assert torch.allclose(mfcc_features(w), ref, atol=1e-5)
    # 100 Hz (fairseq's own rate) would give about twice the frames
    assert kaldi.mfcc(w[None], sample_frequency=16000, use_energy=False).shape[0] > 1.9 * ref.shape[0]


def test_teacher_aligns_and_batching_changes_nothing():
    t = build_teacher("mfcc")
    ws = [wave(n, i) for i, n in enumerate((16000, 5000, 401, 12345))]
    out = t.extract_waves(ws)
    assert [o.shape for o in out] == [(codec_frames(w.numel()), 39) for w in ws]
    for w, o in zip(ws, out):
        f = mfcc_features(w)
        assert torch.equal(o[: f.shape[0]], f) and torch.equal(o[-1], f[-1])  # padded by repeating the last row
    padded = torch.nn.utils.rnn.pad_sequence(ws, batch_first=True)
    lengths = torch.tensor([w.numel() for w in ws])
    for a, b in zip(t.extract(padded, lengths), out):
        assert torch.equal(a, b)
    # the dump engine path: prepare in the worker, collate pads frames, encode unpads
    items = [t.prepare(w) for w in ws]
    p, lens = t.collate(items)
    for a, b in zip(t.encode(p, lens), out):
        assert a.shape == tuple(b.shape) and (torch.from_numpy(a) == b).all()


def test_prepare_stays_on_cpu_whatever_the_device():
    """prepare runs in DataLoader workers, which must not touch the model's (e.g. CUDA) device."""
    t = build_teacher("mfcc").to("meta")
    x = t.prepare(wave(5000))
    assert x.device.type == "cpu" and x.shape == (39, codec_frames(5000))

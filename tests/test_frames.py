"""The one frame-alignment rule shared by stage 1 and the SpeechTokenizer trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stok.core.frames import align_teacher, codec_frames, crop_teacher, hubert_frames


def test_codec_frames_is_ceil():
    assert [codec_frames(n) for n in (0, 1, 319, 320, 321, 16000, 48000, 48001)] == [0, 1, 1, 1, 2, 50, 150, 151]
    assert codec_frames(16000, hop=640) == 25
    with pytest.raises(ValueError):
        codec_frames(-1)


def test_hubert_gives_about_one_frame_fewer():
    assert [hubert_frames(n) for n in (399, 400, 719, 720, 16000, 48000)] == [0, 1, 1, 2, 49, 149]
    for n in range(400, 50000, 37):
        assert codec_frames(n) - hubert_frames(n) in (0, 1, 2)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_align_truncates_or_repeats_last_row(lib):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    x = torch.from_numpy(a) if lib == "torch" else a
    longer = align_teacher(x, 6)
    assert type(longer) is type(x) and tuple(longer.shape) == (6, 3)
    assert np.asarray(longer)[:4].tolist() == a.tolist()
    assert np.asarray(longer)[4].tolist() == a[3].tolist() and np.asarray(longer)[5].tolist() == a[3].tolist()
    assert np.asarray(align_teacher(x, 2)).tolist() == a[:2].tolist()
    assert np.asarray(align_teacher(x, 4)).tolist() == a.tolist()
    labels = torch.tensor([5, 6, 7]) if lib == "torch" else np.array([5, 6, 7])
    assert np.asarray(align_teacher(labels, 5)).tolist() == [5, 6, 7, 7, 7]
    with pytest.raises(ValueError):
        align_teacher(x[:0], 3)


def test_crop_uses_rows_from_floor_start_over_hop():
    feats = torch.arange(20).float()[:, None].repeat(1, 2)  # row i holds i
    c = crop_teacher(feats, start_sample=3200, num_frames=5)  # 3200 / 320 = row 10
    assert c[:, 0].tolist() == [10, 11, 12, 13, 14]
    assert crop_teacher(feats, 3519, 2)[:, 0].tolist() == [10, 11]  # floor
    assert crop_teacher(feats, 320 * 18, 4)[:, 0].tolist() == [18, 19, 19, 19]  # past the end: repeat the last
    assert crop_teacher(feats, 0, 3, hop=640)[:, 0].tolist() == [0, 1, 2]
    assert crop_teacher(np.arange(10), 960, 3).tolist() == [3, 4, 5]


def test_whole_utterance_then_crop_matches_codec_frames():
    """A dumped utterance has codec_frames(n) rows; a crop of m samples at s gets codec_frames(m) of them."""
    n, s, m = 48123, 6400, 16000
    dumped = align_teacher(torch.randn(hubert_frames(n), 4), codec_frames(n))
    assert dumped.shape[0] == codec_frames(n) == 151
    crop = crop_teacher(dumped, s, codec_frames(m))
    assert crop.shape[0] == 50 and torch.equal(crop, dumped[20:70])

"""Stage 1 at the released teacher's size: ``stok-dump-features --teacher hubert`` with a HuBERT base
(12 layers x 768, 95 M parameters; random weights) saved as a fairseq checkpoint, on a 1 s utterance.

``--layer 9`` and ``--layer avg`` (the mean of the 13 hidden states) are checked against torchaudio's own
forward of the model that was saved (an oracle outside stok's checkpoint loader and extractor); the features
read back identically through kaldiio and Kaldi's C++ reader (``kaldi_native_io``).
"""

from __future__ import annotations

import os

import kaldiio
import numpy as np
import pytest
import torch

from stok.bin import dump_features
from stok.core.frames import align_teacher, codec_frames
from stok.models.hubert.configs import CONFIGS
from tests import kaldi_cpp
from tests.conftest import write_data_dir
from tests.hubert_helpers import save_fairseq, tiny_model

DURATIONS = [1.0, 0.37]


@pytest.fixture(scope="module")
def hubert_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert_base")
    data, wavs = write_data_dir(root, DURATIONS)
    model, cfg = tiny_model("base", seed=5, **CONFIGS["base"])  # every field of the released HuBERT base
    assert sum(p.numel() for p in model.parameters()) > 94_000_000
    ckpt = save_fairseq(model, cfg, str(root / "hubert_base_ls960.pt"))
    return {"root": root, "data": data, "ckpt": ckpt, "model": model, "wavs": wavs}


def _dump(hubert_base, out, layer):
    return dump_features.main(["--teacher", "hubert", "--checkpoint", hubert_base["ckpt"], "--layer", layer,
                               "--data_dir", hubert_base["data"], "--output_dir", out, "--device", "cpu",
                               "--num_workers", "0"])


def _read_back(scp):
    """kaldiio and Kaldi's C++ reader agree bitwise on every record."""
    plain, cpp = dict(kaldiio.load_scp_sequential(scp)), kaldi_cpp.float_matrices(scp)
    assert sorted(plain) == sorted(cpp)
    for key in plain:
        assert plain[key].dtype == np.float32
        np.testing.assert_array_equal(cpp[key], plain[key])
    return plain


def _torchaudio_states(model, wav):
    """The 13 hidden states of HuBERT base by torchaudio's own modules: the transformer input (after the
    positional convolution and, post-LN, its LayerNorm) and the outputs of layers 1..12."""
    with torch.inference_mode():
        layers, _ = model.extract_features(wav[None])
        conv, _ = model.feature_extractor(wav[None], None)
        first = model.encoder.transformer._preprocess(model.encoder.feature_projection(conv))
    return [first] + layers


@pytest.mark.parametrize("layer", ["9", "avg"])
def test_hubert_base_features_match_torchaudio(hubert_base, tmp_path, layer):
    out = str(tmp_path / layer)
    summary = _dump(hubert_base, out, layer)
    assert summary["model"]["layer"] == (9 if layer == "9" else "avg") and summary["failed"] == 0
    assert summary["model"]["format"] == "fairseq"
    feats = _read_back(os.path.join(out, "feats.scp"))
    assert sorted(feats) == sorted(hubert_base["wavs"])
    for key, wav in hubert_base["wavs"].items():
        states = _torchaudio_states(hubert_base["model"], wav)
        assert len(states) == 13
        ref = states[9] if layer == "9" else torch.stack(states).mean(0)
        ref = align_teacher(ref[0], codec_frames(wav.numel())).numpy()
        assert feats[key].shape == ref.shape == (codec_frames(wav.numel()), 768)
        assert np.abs(feats[key] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())

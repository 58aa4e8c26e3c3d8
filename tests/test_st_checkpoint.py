"""SpeechTokenizer released file pair: key layout of the full model, save/load, errors, the public package."""

from __future__ import annotations

import json
import os

import pytest
import torch

from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, load_released, save_released
from stok.models.speechtokenizer.checkpoint import CheckpointError
from tests.st_peer import public_speechtokenizer
from tests.test_st_model import LENGTHS, filled_model, padded_batch, tiny_cfg

# the released config.json: the model fields and the HiFi-GAN trainer settings it also carries
RELEASED_CONFIG = {
    "resblock": "1", "num_gpus": 3, "batch_size": 60, "learning_rate": 0.0001, "adam_b1": 0.5, "adam_b2": 0.9,
    "lr_decay": 0.98, "seed": 1234, "lambda_distill": 0.15,
    "n_filters": 64, "strides": [8, 5, 4, 2], "dimension": 1024, "semantic_dimension": 768, "bidirectional": True,
    "dilation_base": 2, "residual_kernel_size": 3, "n_residual_layers": 1, "lstm_layers": 2, "activation": "ELU",
    "segment_size": 48000, "num_mels": 80, "num_freq": 1025, "n_fft": 1024, "hop_size": 240, "win_size": 1024,
    "sampling_rate": 16000, "sample_rate": 16000, "codebook_size": 1024, "n_q": 8,
    "fmin": 0, "fmax": 8000, "fmax_for_loss": None, "num_workers": 12,
    "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
}


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return SpeechTokenizer(SpeechTokenizerConfig())


def test_released_config_is_the_default():
    cfg = SpeechTokenizerConfig.from_dict(RELEASED_CONFIG)
    assert cfg == SpeechTokenizerConfig() and cfg.hop == 320
    assert cfg.leftovers["segment_size"] == 48000 and "n_filters" not in cfg.leftovers


def test_full_model_has_the_released_166_keys(full_model):
    sd = full_model.state_dict()
    assert len(sd) == 166
    shapes = {
        "encoder.model.0.conv.conv.weight_g": (64, 1, 1),
        "encoder.model.0.conv.conv.weight_v": (64, 1, 7),
        "encoder.model.1.block.1.conv.conv.weight_v": (32, 64, 3),
        "encoder.model.1.block.3.conv.conv.bias": (64,),
        "encoder.model.1.shortcut.conv.conv.weight_g": (64, 1, 1),
        "encoder.model.12.conv.conv.weight_v": (1024, 512, 16),
        "encoder.model.13.lstm.weight_ih_l0": (4096, 1024),
        "encoder.model.13.lstm.weight_ih_l0_reverse": (4096, 1024),
        "encoder.model.13.lstm.weight_hh_l1_reverse": (4096, 1024),
        "encoder.model.15.conv.conv.weight_v": (1024, 2048, 7),
        "transform.weight": (768, 1024),
        "transform.bias": (768,),
        "quantizer.vq.layers.0._codebook.inited": (1,),
        "quantizer.vq.layers.7._codebook.cluster_size": (1024,),
        "quantizer.vq.layers.7._codebook.embed": (1024, 1024),
        "quantizer.vq.layers.7._codebook.embed_avg": (1024, 1024),
        "decoder.model.0.conv.conv.weight_v": (1024, 1024, 7),
        "decoder.model.1.lstm.weight_hh_l1": (4096, 1024),
        "decoder.model.3.convtr.convtr.weight_g": (1024, 1, 1),
        "decoder.model.3.convtr.convtr.weight_v": (1024, 512, 16),
        "decoder.model.13.block.1.conv.conv.weight_v": (32, 64, 3),
        "decoder.model.15.conv.conv.weight_v": (1, 64, 7),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("decoder.model.1.lstm") and k.endswith("_reverse") for k in sd)
    groups = {}
    for k in sd:
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    assert groups == {"encoder": 70, "transform": 2, "quantizer": 32, "decoder": 62}
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_full_model_parameter_counts(full_model):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(full_model.encoder) / 1e6, 1) == 67.7
    assert round(count(full_model.decoder) / 1e6, 1) == 35.2
    assert count(full_model.transform) == 768 * 1024 + 768
    assert sum(b.numel() for b in full_model.buffers()) == 8 * (1 + 1024 + 2 * 1024 * 1024)


def test_save_load_round_trip(tmp_path):
    model = filled_model(tiny_cfg(), seed=2)
    out = save_released(model, tmp_path / "export")
    assert sorted(os.listdir(out)) == ["SpeechTokenizer.pt", "config.json"]
    raw = torch.load(os.path.join(out, "SpeechTokenizer.pt"), weights_only=True)
    assert set(raw) == set(model.state_dict()) and all(type(v) is torch.Tensor for v in raw.values())
    loaded = load_released(out)
    assert not loaded.training and loaded.cfg == model.cfg
    again = load_released(os.path.join(out, "config.json"), os.path.join(out, "SpeechTokenizer.pt"))
    wav, lengths = padded_batch(LENGTHS)
    assert torch.equal(loaded.encode(wav, lengths), model.encode(wav, lengths))
    assert torch.equal(again.encode(wav, lengths), model.encode(wav, lengths))


def test_missing_and_extra_keys_are_named(tmp_path):
    model = filled_model(tiny_cfg())
    save_released(model, tmp_path)
    ckpt = tmp_path / "SpeechTokenizer.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["decoder.model.15.conv.conv.bias"]
    state["quantizer.vq.layers.9._codebook.embed"] = torch.zeros(16, 32)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as err:
        load_released(tmp_path)
    msg = str(err.value)
    assert "missing keys ['decoder.model.15.conv.conv.bias']" in msg
    assert "unexpected keys ['quantizer.vq.layers.9._codebook.embed']" in msg
    assert str(ckpt) in msg
    with pytest.raises(CheckpointError, match="model directory"):
        load_released(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no such file"):
        load_released(tmp_path / "config.json", tmp_path / "nothing.pt")


def test_shape_mismatch_is_named(tmp_path):
    save_released(filled_model(tiny_cfg()), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["codebook_size"] = 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"_codebook.embed: file \(16, 32\) vs model \(8, 32\)"):
        load_released(tmp_path)


def test_released_style_config_keeps_its_leftovers(tmp_path):
    d = {**RELEASED_CONFIG, **tiny_cfg().to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(d))
    torch.save(filled_model(tiny_cfg()).state_dict(), tmp_path / "SpeechTokenizer.pt")
    model = load_released(tmp_path)
    assert model.cfg.n_filters == 4 and model.cfg.leftovers["adam_b1"] == 0.5
    out = save_released(model, tmp_path / "again")
    written = json.loads(open(os.path.join(out, "config.json")).read())
    for k, v in RELEASED_CONFIG.items():
        if k not in tiny_cfg().to_dict():
            assert written[k] == v, k
    assert written["n_filters"] == 4 and written["kmeans_iters"] == 50


def test_config_fields_are_strict():
    with pytest.raises(TypeError):
        SpeechTokenizerConfig(n_filter=4)
    cfg = SpeechTokenizerConfig(ema_eps="1e-5", codebook_size="16", strides=[4, 4])
    assert cfg.ema_eps == 1e-5 and cfg.codebook_size == 16 and cfg.hop == 16
    with pytest.raises(ValueError, match="activation"):
        SpeechTokenizerConfig(activation="Snake")
    with pytest.raises(ValueError, match="strides"):
        SpeechTokenizerConfig(strides=[8, 0])


# ---------------------------------------------------------------------------------------------- public package
@pytest.fixture(scope="module")
def public_cls():
    """The public package's ``SpeechTokenizer`` class (``tests.st_peer``: fails under CI=true when missing)."""
    with public_speechtokenizer() as cls:
        yield cls


PUBLIC_LENGTHS = [5 * 320, 1000, 321, 7]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the package's deprecated weight_norm, jit
def test_public_package_loads_what_stok_saves(tmp_path, public_cls):
    ours = filled_model(tiny_cfg(n_q=4, codebook_size=32), seed=6)
    save_released(ours, tmp_path)
    theirs = public_cls.load_from_checkpoint(str(tmp_path / "config.json"), str(tmp_path / "SpeechTokenizer.pt"))
    theirs.eval()
    wav, lengths = padded_batch(PUBLIC_LENGTHS, seed=3)
    batched = ours.encode(wav, lengths)
    for i, n in enumerate(PUBLIC_LENGTHS):
        with torch.no_grad():
            ref = theirs.encode(wav[i:i + 1, :, :n])
        assert torch.equal(ours.encode(wav[i:i + 1, :, :n]), ref)
        assert torch.equal(batched[:, i:i + 1, : ref.shape[-1]], ref)
        with torch.no_grad():
            torch.testing.assert_close(ours.decode(ref), theirs.decode(ref), atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the package's deprecated weight_norm, jit
def test_stok_loads_what_the_public_package_saves(tmp_path, public_cls):
    cfg = tiny_cfg(n_q=4, codebook_size=32)
    torch.manual_seed(7)
    theirs = public_cls(cfg.to_dict()).eval()
    with torch.no_grad():  # the package's codebooks start at zero: give them residual frames of random audio
        r = theirs.encoder(0.1 * torch.randn(1, 1, 320 * 300))[0].t()
        for layer in theirs.quantizer.vq.layers:
            cb = layer._codebook
            cb.embed.copy_(r[torch.randperm(r.shape[0])[:32]])
            cb.inited.fill_(1.0)
            r = r - cb.embed[cb.quantize(r)]
    torch.save(theirs.state_dict(), tmp_path / "SpeechTokenizer.pt")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    ours = load_released(tmp_path)
    wav, _ = padded_batch(PUBLIC_LENGTHS, seed=4)
    for i, n in enumerate(PUBLIC_LENGTHS):
        with torch.no_grad():
            ref = theirs.encode(wav[i:i + 1, :, :n])
        assert torch.equal(ours.encode(wav[i:i + 1, :, :n]), ref)

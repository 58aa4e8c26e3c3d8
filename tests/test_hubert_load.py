"""Every weight layout (fairseq checkpoint, Hugging Face dir, torchaudio state dict, bundle) gives the features
of the in-memory model."""

from __future__ import annotations

import os

import pytest
import torch

from stok.models.hubert import load_hubert
from stok.models.hubert.configs import ConfigError
from stok.models.hubert.extract import HubertExtractor
from stok.models.hubert.load_fairseq import parse_conv_layers
from tests.hubert_helpers import (loaded, save_fairseq, save_hf, save_torchaudio, tiny_model)

WAVES = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (8000, 3300, 12001)]


def feats(lh, layer="avg", normalize=None):
    return HubertExtractor(lh, layer=layer, normalize=normalize).extract(WAVES)


def assert_same(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= tol


@pytest.fixture(params=["base", "large"])
def kind(request):
    return request.param


@pytest.mark.parametrize("style", ["cfg", "args"])
def test_fairseq_checkpoint(tmp_path, kind, style):
    model, cfg = tiny_model(kind)
    path = save_fairseq(model, cfg, str(tmp_path / "hubert.pt"), normalize=kind == "large", style=style)
    lh = load_hubert(path)
    assert lh.fmt == "fairseq" and lh.config == cfg
    assert lh.normalize is (kind == "large")
    assert "fairseq.data.dictionary.Dictionary" in lh.notes["stubbed_globals"]
    for layer in (2, "avg"):
        assert_same(feats(lh, layer), feats(loaded(model, cfg, kind == "large"), layer))
    assert_same(feats(load_hubert(path, "fairseq"), 1), feats(loaded(model, cfg, kind == "large"), 1))


def test_fairseq_finetuned_checkpoint(tmp_path):
    model, cfg = tiny_model("large")
    path = save_fairseq(model, cfg, str(tmp_path / "ft.pt"), normalize=True, finetuned=True)
    lh = load_hubert(path)
    assert lh.config == cfg and lh.normalize is True
    assert_same(feats(lh, 3), feats(loaded(model, cfg, True), 3))


def test_fairseq_heads_come_from_the_config(tmp_path):
    # 4 heads in a 128-wide model: shapes alone would say 2 (64-dim heads); the checkpoint's cfg must win
    model, cfg = tiny_model("base", encoder_num_heads=4)
    lh = load_hubert(save_fairseq(model, cfg, str(tmp_path / "h4.pt")))
    assert lh.config["encoder_num_heads"] == 4
    assert_same(feats(lh, 2), feats(loaded(model, cfg), 2))


@pytest.mark.parametrize("safetensors,new_wn,prefix", [(False, False, ""), (True, True, ""), (False, True, "hubert.")])
def test_hf_dir(tmp_path, kind, safetensors, new_wn, prefix):
    model, cfg = tiny_model(kind, seed=1)
    d = save_hf(model, cfg, str(tmp_path / "hf"), safetensors=safetensors, new_weight_norm=new_wn, prefix=prefix,
                do_normalize=kind == "large")
    lh = load_hubert(d)
    assert lh.fmt == "hf" and lh.config == cfg and lh.normalize is (kind == "large")
    for layer in (3, "avg"):
        assert_same(feats(lh, layer), feats(loaded(model, cfg, kind == "large"), layer))


def test_hf_safetensors_file_and_bin_as_plain_state_dicts(tmp_path):
    model, cfg = tiny_model("base", seed=2)
    d = save_hf(model, cfg, str(tmp_path / "hf"), safetensors=True)
    lh = load_hubert(os.path.join(d, "model.safetensors"))  # a bare HF-named file: architecture from the shapes
    assert lh.config == cfg
    assert_same(feats(lh), feats(loaded(model, cfg)))


def test_torchaudio_state_dict(tmp_path, kind):
    model, cfg = tiny_model(kind, seed=3)
    path = save_torchaudio(model, str(tmp_path / "ta.pt"))
    lh = load_hubert(path)
    assert lh.fmt == "torchaudio" and lh.config == cfg
    ref = loaded(model, cfg)
    assert_same(feats(lh, "avg", normalize=False), feats(ref, "avg", normalize=False))
    # the same through the explicit format, and a wrapper with the config (non-default heads)
    m4, c4 = tiny_model(kind, seed=4, encoder_num_heads=4)
    torch.save({"config": c4, "state_dict": m4.state_dict()}, tmp_path / "wrapped.pt")
    lh4 = load_hubert(str(tmp_path / "wrapped.pt"), "torchaudio")
    assert lh4.config["encoder_num_heads"] == 4
    assert_same(feats(lh4, 2, False), feats(loaded(m4, c4), 2, False))


def test_torchaudio_pretrain_model_keys(tmp_path):
    model, cfg = tiny_model("base", seed=5)
    sd = {"wav2vec2." + k: v for k, v in model.state_dict().items()}
    sd["mask_generator.mask_embedding"] = torch.rand(cfg["encoder_embed_dim"])
    sd["logit_generator.final_proj.weight"] = torch.rand(8, cfg["encoder_embed_dim"])
    torch.save(sd, tmp_path / "pre.pt")
    assert_same(feats(load_hubert(str(tmp_path / "pre.pt"))), feats(loaded(model, cfg)))


def test_bundle_by_name(monkeypatch):
    import torchaudio

    model, cfg = tiny_model("large", seed=6)

    class FakeBundle:
        _normalize_waveform = True
        _params = dict(cfg)

        def get_model(self, dl_kwargs=None):
            return model

    monkeypatch.setattr(torchaudio.pipelines, "HUBERT_TINY_TEST", FakeBundle(), raising=False)
    lh = load_hubert("HUBERT_TINY_TEST")
    assert lh.fmt == "bundle" and lh.normalize is True and lh.config["encoder_num_layers"] == 3
    assert_same(feats(lh, 2), feats(loaded(model, cfg, True), 2))
    with pytest.raises(ConfigError):
        load_hubert("NOT_A_BUNDLE_NAME", "bundle")


def test_errors_are_clear(tmp_path):
    model, cfg = tiny_model("base")
    path = save_torchaudio(model, str(tmp_path / "ta.pt"))
    with pytest.raises(ConfigError, match="768 wide"):
        load_hubert(path, preset="base")  # a 128-wide model is not HuBERT base
    sd = model.state_dict()
    sd["encoder.something_else"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="do not fit"):
        load_hubert(str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="missing.pt not found"):
        load_hubert(str(tmp_path / "missing.pt"))
    os.makedirs(tmp_path / "emptydir")
    with pytest.raises(ConfigError, match="config.json"):
        load_hubert(str(tmp_path / "emptydir"))


def test_parse_conv_layers_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(ConfigError):
        parse_conv_layers("__import__('os').system('true')")

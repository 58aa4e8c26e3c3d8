"""Converted checkpoints (metadata, weights_only) and official names: cache, download check, offline errors."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from stok.models.s3 import hub
from stok.models.s3.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stok.models.s3.config import tiny_config
from stok.models.s3.hub import ModelNotFound, Official, load_s3
from stok.models.s3.model import build_model
from stok.models.s3.onnx_export_official import export_official
from stok.models.s3.onnx_import import load_onnx


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_checkpoint_roundtrip_with_metadata(tmp_path):
    model = build_model(tiny_config("v1_25hz"), seed=1)
    onnx_path = str(tmp_path / "m.onnx")
    export_official(model, onnx_path)
    loaded = load_onnx(onnx_path, "v1_25hz", cfg=model.cfg)
    loaded.encoder.blocks[0].mlp_ln.eps = 1e-6
    ckpt = str(tmp_path / "m.pt")
    save_checkpoint(loaded, ckpt)
    blob = torch.load(ckpt, weights_only=True)
    assert blob["version"] == "v1_25hz" and blob["source"] == "m.onnx"
    assert blob["source_sha256"] == hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    back = load_checkpoint(ckpt)
    assert same(back, model) and back.cfg == model.cfg
    assert back.encoder.blocks[0].mlp_ln.eps == 1e-6
    with pytest.raises(CheckpointError, match="holds an S3Tokenizer v1_25hz"):
        load_checkpoint(ckpt, "v2_25hz")
    torch.save({"a": torch.zeros(1)}, str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="not a stok S3Tokenizer checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    # load_s3: checkpoints give their own version; ONNX files need one; names of files never count
    assert load_s3(ckpt).cfg.version == "v1_25hz"
    with pytest.raises(ValueError, match="give the S3Tokenizer version"):
        load_s3(onnx_path)
    with pytest.raises(ModelNotFound, match="no such file"):
        load_s3(str(tmp_path / "speech_tokenizer_v1_25hz.onnx"), "v1_25hz")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STOK_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "cache" / "s3tokenizer"


def test_offline_without_file_says_where_to_put_it(cache, monkeypatch):
    monkeypatch.setenv("STOK_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as e:
        load_s3("speech_tokenizer_v2_25hz")
    msg = str(e.value)
    assert str(cache / "speech_tokenizer_v2_25hz.onnx") in msg and "speech_tokenizer_v2.onnx" in msg
    assert "CosyVoice2-0.5B" in msg and "--version v2_25hz" in msg
    with pytest.raises(ValueError, match="is an S3Tokenizer v2_25hz, not v1_50hz"):
        load_s3("speech_tokenizer_v2_25hz", "v1_50hz")
    with pytest.raises(ModelNotFound, match="not an official model name"):
        load_s3("speech_tokenizer_v9")


def test_download_checks_sha256_and_caches_the_conversion(cache, tmp_path, monkeypatch):
    cfg = tiny_config("v2_25hz")
    model = build_model(cfg, seed=3)
    src = tmp_path / "upstream" / "speech_tokenizer_v2.onnx"
    src.parent.mkdir()
    export_official(model, str(src))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    url = src.as_uri()
    monkeypatch.setattr("stok.models.s3.hub.load_onnx",
                        lambda path, version, window_batch=8: load_onnx(path, version, cfg=cfg, window_batch=window_batch))
    # a mirror with the wrong checksum is rejected, the next one is used
    monkeypatch.setitem(hub.MODELS, "speech_tokenizer_v2_25hz",
                        Official("v2_25hz", "speech_tokenizer_v2.onnx", (url, url), "0" * 64))
    with pytest.raises(ModelNotFound, match="SHA-256 mismatch"):
        load_s3("speech_tokenizer_v2_25hz")
    assert not any(cache.glob("*.onnx"))
    monkeypatch.setitem(hub.MODELS, "speech_tokenizer_v2_25hz",
                        Official("v2_25hz", "speech_tokenizer_v2.onnx", ("file:///nonexistent/x.onnx", url), sha))
    got = load_s3("speech_tokenizer_v2", "v2_25hz")  # alias
    assert same(got, model) and got.info["source_sha256"] == sha
    assert (cache / "speech_tokenizer_v2_25hz.onnx").is_file() and (cache / "speech_tokenizer_v2_25hz.pt").is_file()
    # the second load reads the converted checkpoint, without touching the ONNX file
    monkeypatch.setattr("stok.models.s3.hub.fetch", lambda name: pytest.fail("should use the cached conversion"))
    again = load_s3("speech_tokenizer_v2_25hz")
    assert same(again, model) and again.info["checkpoint"].endswith(".pt")


def test_cached_file_with_wrong_checksum_is_refused(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / "speech_tokenizer_v1_50hz.onnx").write_bytes(b"not the model")
    with pytest.raises(ModelNotFound, match="is not the official speech_tokenizer_v1.onnx"):
        load_s3("speech_tokenizer_v1_50hz")
    assert os.path.exists(cache / "speech_tokenizer_v1_50hz.onnx")  # a user's file is never overwritten

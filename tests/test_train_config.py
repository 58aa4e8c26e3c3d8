"""Training config: YAML sections, unknown keys, overrides, the recipes' configs."""

from __future__ import annotations

import os

import pytest

from stok.train.config import ConfigError, TrainConfig, from_dict, load_config
from tests.conftest import REPO


def test_defaults_are_the_released_trainer():
    cfg = from_dict({})
    assert cfg.loss.mel_lambdas == [45, 1, 1, 1] and cfg.loss.recon_lambda == 500
    assert cfg.loss.commit_lambda == 10 and cfg.loss.distill_lambda == 120 and cfg.loss.feat_lambda == 2
    assert cfg.loss.adv_type == "lsgan" and cfg.loss.distill_type == "d_axis"
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == [0.9, 0.99] and cfg.optim.grad_clip is None
    assert cfg.data.batch_size == 6 and cfg.data.segment_seconds == 3.0
    assert cfg.sched.keep_last == 6 and cfg.sched.valid_every == 2500


def test_unknown_keys_and_bad_values_fail():
    with pytest.raises(ConfigError, match="optim: unknown key"):
        from_dict({"optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="unknown section"):
        from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match="adv_type"):
        from_dict({"loss": {"adv_type": "wgan"}})
    with pytest.raises(ConfigError, match="kmeans needs loss.n_units"):
        from_dict({"loss": {"distill_type": "kmeans"}, "teacher": {"source": "labels"}})
    with pytest.raises(ConfigError, match="teacher.source labels"):
        from_dict({"loss": {"distill_type": "kmeans", "n_units": 50}})
    with pytest.raises(ConfigError, match="hop"):
        from_dict({"model": {"strides": [8, 5, 4]}})


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.001\n")
    cfg = load_config(str(p), ["optim.lr=2e-4", "loss.mel_lambdas=[1, 2]", "sched.valid_at_start=true"])
    assert cfg.optim.lr == 2e-4 and cfg.loss.mel_lambdas == [1, 2] and cfg.sched.valid_at_start is True
    with pytest.raises(ConfigError):
        load_config(str(p), ["lr=1"])


@pytest.mark.parametrize("recipe", ["demo", "librispeech"])
def test_recipe_configs_load(recipe, tmp_path):
    path = os.path.join(REPO, "recipes", recipe, "conf", "train.yaml")
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    mc = cfg.model_config()
    assert mc.sample_rate == cfg.data.sample_rate
    cfg.to_yaml(str(tmp_path / "round.yaml"))
    assert load_config(str(tmp_path / "round.yaml")).to_dict() == cfg.to_dict()


def test_librispeech_config_is_released_size():
    cfg = load_config(os.path.join(REPO, "recipes", "librispeech", "conf", "train.yaml"))
    released = dict(n_filters=64, strides=[8, 5, 4, 2], dimension=1024, semantic_dimension=768, bidirectional=True,
                    dilation_base=2, residual_kernel_size=3, n_residual_layers=1, lstm_layers=2, activation="ELU",
                    codebook_size=1024, n_q=8, sample_rate=16000)
    assert cfg.model == released
    assert cfg.to_dict()["loss"] == from_dict({}).to_dict()["loss"]

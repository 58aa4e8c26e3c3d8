"""Damaged, incomplete or wrong HuBERT weight files end in one line naming the file and what to do, before any
output exists. Checked through ``stok-train`` with an online HuBERT teacher (the tool loads the teacher before
it writes to ``--exp_dir``), for every supported layout: fairseq checkpoint, Hugging Face dir (``pytorch_model.bin``
and ``model.safetensors``), torchaudio state dict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from stok.bin import train as train_bin
from tests.conftest import REPO
from tests.hubert_helpers import fairseq_state_dict, save_fairseq, save_hf, save_torchaudio, tiny_model
from tests.train_helpers import tiny_config, tiny_data
from tests.user_error_helpers import snapshot


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert_errors")
    model, cfg = tiny_model("base")
    files = {
        "fairseq": save_fairseq(model, cfg, str(root / "hubert.pt")),
        "hf": save_hf(model, cfg, str(root / "hf")),
        "hf_safetensors": save_hf(model, cfg, str(root / "hf_st"), safetensors=True),
        "torchaudio": save_torchaudio(model, str(root / "ta.pt")),
    }
    return {"root": root, "data": tiny_data(str(root)), "model": model, "cfg": cfg, "files": files}


def _config(tmp_path, checkpoint, **opts) -> str:
    conf = tmp_path / "train.yaml"
    teacher = dict(source="online", online_checkpoint=str(checkpoint), online_layer="avg", online_opts=opts)
    conf.write_text(yaml.safe_dump(tiny_config(model=dict(semantic_dimension=128), teacher=teacher,
                                               sched=dict(max_steps=1, valid_every=1, save_every=1))))
    return str(conf)


def _argv(env, tmp_path, checkpoint, *extra, **opts):
    return ["--config", _config(tmp_path, checkpoint, **opts), "--data_dir", env["data"]["train"][0],
            "--dev_dir", env["data"]["dev"][0], "--exp_dir", str(tmp_path / "exp"), "--device", "cpu",
            "--threads", "1", "--quiet", *extra]


def train_error(env, tmp_path, checkpoint, **opts) -> str:
    """Run stok-train; it must exit with one ``error: ...`` line and leave no trace in the experiment dir."""
    argv = _argv(env, tmp_path, checkpoint, **opts)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_bin.main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg, msg
    assert not (tmp_path / "exp").exists()
    assert snapshot(tmp_path) == before
    return msg


def _cut(src, dst, fraction):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return str(dst)


def _hf_copy(env, tmp_path, kind="hf"):
    d = tmp_path / "model"
    shutil.copytree(env["files"][kind], d)
    return d


# --- damaged files, every layout -------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["fairseq", "torchaudio"])
@pytest.mark.parametrize("damage,expect", [
    ("truncated", "cannot be read as a PyTorch checkpoint"),
    ("empty", "is empty (0 bytes)"),
    ("random", "cannot be read as a PyTorch checkpoint"),
    ("text", "is a text file, not a PyTorch checkpoint"),
    ("lfs", "is a Git LFS pointer"),
    ("html", "is an HTML/XML page"),
])
def test_damaged_weight_file(env, tmp_path, layout, damage, expect):
    bad = tmp_path / "weights.pt"
    src = env["files"][layout]
    if damage == "truncated":
        _cut(src, bad, 0.6)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "random":
        bad.write_bytes(os.urandom(4096) + b"\0")
    elif damage == "text":
        bad.write_text("model weights go here\n")
    elif damage == "lfs":
        bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 377552987\n")
    else:
        bad.write_text("<!DOCTYPE html><html><body>Sign in</body></html>\n")
    fmt = {"fairseq": "fairseq", "torchaudio": "torchaudio"}[layout]
    for opts in ({}, {"checkpoint_format": fmt}):
        msg = train_error(env, tmp_path, bad, **opts)
        assert str(bad) in msg and expect in msg, msg
    if damage in ("truncated", "random"):
        assert "download or copy it again" in msg


@pytest.mark.parametrize("kind,weights", [("hf", "pytorch_model.bin"), ("hf_safetensors", "model.safetensors")])
def test_hf_dir_with_cut_weights(env, tmp_path, kind, weights):
    d = _hf_copy(env, tmp_path, kind)
    _cut(os.path.join(env["files"][kind], weights), d / weights, 0.7)
    msg = train_error(env, tmp_path, d)
    assert str(d / weights) in msg and ("cut short" in msg or "cannot be read" in msg), msg
    if weights.endswith(".safetensors"):  # the byte counts of a cut download
        assert "tensor data, the file holds" in msg
    assert train_error(env, tmp_path, d, checkpoint_format="hf") == msg


def test_hf_dir_with_cut_config_json(env, tmp_path):
    d = _hf_copy(env, tmp_path)
    _cut(os.path.join(env["files"]["hf"], "config.json"), d / "config.json", 0.5)
    msg = train_error(env, tmp_path, d)
    assert str(d / "config.json") in msg and "not valid JSON" in msg and "line 1 column" in msg, msg


def test_hf_dir_without_weights_or_config(env, tmp_path):
    d = _hf_copy(env, tmp_path)
    os.remove(d / "pytorch_model.bin")
    assert "no model.safetensors or pytorch_model.bin" in train_error(env, tmp_path, d)
    os.remove(d / "config.json")
    assert "no config.json" in train_error(env, tmp_path, d)


def test_missing_checkpoint_is_named(env, tmp_path):
    msg = train_error(env, tmp_path, tmp_path / "nowhere" / "hubert_base_ls960.pt")
    assert "hubert_base_ls960.pt not found" in msg


# --- incomplete models: missing layers against the config ------------------------------------------------------

def _drop_last_layer(sd, prefix):
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}


def test_fairseq_checkpoint_missing_its_last_layer(env, tmp_path):
    model, cfg = env["model"], env["cfg"]
    sd = _drop_last_layer(fairseq_state_dict(model, cfg), "encoder.layers.2.")
    path = save_fairseq(model, cfg, str(tmp_path / "no_last_layer.pt"), extra={"model": sd})
    msg = train_error(env, tmp_path, path)
    assert str(path) in msg and "layer(s) 2 (0-based) missing" in msg and "its own config has 3 layers" in msg
    assert "encoder.transformer.layers.2.attention.k_proj.bias" in msg


def test_hf_dir_missing_its_last_layer(env, tmp_path):
    d = _hf_copy(env, tmp_path)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    torch.save(_drop_last_layer(sd, "encoder.layers.2."), d / "pytorch_model.bin")
    msg = train_error(env, tmp_path, d)
    assert str(d) in msg and "layer(s) 2 (0-based) missing" in msg and "16 tensors" in msg


def test_torchaudio_wrapped_state_dict_missing_a_middle_layer(env, tmp_path):
    sd = _drop_last_layer(env["model"].state_dict(), "encoder.transformer.layers.1.")
    path = tmp_path / "wrapped.pt"
    torch.save({"config": env["cfg"], "state_dict": sd}, path)
    msg = train_error(env, tmp_path, path, checkpoint_format="torchaudio")
    assert "layer(s) 1 (0-based) missing" in msg and "encoder.transformer.layers.1.attention.k_proj.bias" in msg


def test_layer_missing_single_tensors_is_named(env, tmp_path):
    sd = env["model"].state_dict()
    sd.pop("encoder.transformer.layers.2.final_layer_norm.weight")
    path = tmp_path / "partial.pt"
    torch.save({"config": env["cfg"], "state_dict": sd}, path)
    msg = train_error(env, tmp_path, path)
    assert "missing ['encoder.transformer.layers.2.final_layer_norm.weight']" in msg


def test_released_size_base_state_dict_missing_its_last_layer(env, tmp_path):
    """HuBERT base at its real width (768) with 11 of its 12 layers, no config in the file: the preset of that
    width says 12, so this is an error naming the missing tensors, not a silent 11-layer model."""
    from stok.models.hubert.configs import build_model, get_config

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(get_config("base")).state_dict().items()}
    sd = {k: torch.zeros(s) for k, s in shapes.items() if not k.startswith("encoder.transformer.layers.11.")}
    # a torchaudio state dict (torch.save(model.state_dict())): the file says nothing of the architecture
    path = tmp_path / "hubert_base_11_layers.pt"
    torch.save(sd, path)
    del sd
    msg = train_error(env, tmp_path, path)
    assert str(path) in msg and "layer(s) 11 (0-based) missing" in msg and "HuBERT base" in msg
    assert "has 12 layers" in msg and "16 tensors" in msg and "'config'" in msg
    os.remove(path)  # 340 MB: not kept among pytest's last temporary dirs


def test_wrong_tensor_shape_is_named(env, tmp_path):
    sd = fairseq_state_dict(env["model"], env["cfg"])
    sd["encoder.layers.1.fc1.weight"] = torch.zeros(7, 128)
    path = save_fairseq(env["model"], env["cfg"], str(tmp_path / "bad_shape.pt"), extra={"model": sd})
    msg = train_error(env, tmp_path, path)
    assert "the weights give 7" in msg or "wrong shape" in msg, msg


# --- a pickle that names code ----------------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_a_checkpoint_is_not_run_and_is_warned_about(env, tmp_path, caplog):
    marker = tmp_path / "payload_ran"
    path = save_fairseq(env["model"], env["cfg"], str(tmp_path / "hubert_payload.pt"),
                        extra={"extra_state": {"hook": _Payload(str(marker))}})
    caplog.set_level("INFO")
    res = train_bin.main(_argv(env, tmp_path, path, "--no_export"))
    assert res["step"] == 1 and not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "NOT run" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert "system" in warnings[0] and "Dictionary" not in warnings[0]  # fairseq's own classes are routine
    infos = [r.getMessage() for r in caplog.records if "inert records (not imported)" in r.getMessage()]
    assert infos and "fairseq.data.dictionary.Dictionary" in infos[0]


# --- the whole command: one line on stderr, a traceback only with --debug ---------------------------------------

def test_command_line_prints_one_line_and_debug_shows_the_traceback(env, tmp_path):
    bad = _cut(env["files"]["fairseq"], tmp_path / "cut.pt", 0.5)
    cmd = [sys.executable, "-m", "stok.bin.train", *_argv(env, tmp_path, bad)]
    run_env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    run_env.pop("STOK_DEBUG", None)
    res = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and bad in errors[0] and res.stderr.rstrip().endswith(errors[0])
    assert not (tmp_path / "exp").exists()
    res = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=run_env, timeout=300)
    assert res.returncode == 1 and "Traceback" in res.stderr and "ConfigError" in res.stderr
    assert not (tmp_path / "exp").exists()


def test_feature_dump_names_the_damaged_checkpoint(env, tmp_path):
    """The same through stage 1's tool: the error names the file and no output dir appears."""
    from stok.bin import dump_features

    bad = _cut(env["files"]["fairseq"], tmp_path / "cut.pt", 0.5)
    d = _hf_copy(env, tmp_path)
    _cut(os.path.join(env["files"]["hf"], "config.json"), d / "config.json", 0.5)
    for checkpoint, expect in ((bad, "cannot be read as a PyTorch checkpoint"), (str(d), "not valid JSON")):
        argv = ["--teacher", "hubert", "--checkpoint", str(checkpoint), "--data_dir", env["data"]["train"][0],
                "--output_dir", str(tmp_path / "feats"), "--device", "cpu", "--num_workers", "0"]
        before = snapshot(tmp_path)
        with pytest.raises(SystemExit) as e:
            dump_features.main(argv)
        msg = e.value.code
        assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg and expect in msg, msg
        assert str(checkpoint) in msg or str(d / "config.json") in msg
        assert snapshot(tmp_path) == before and not (tmp_path / "feats").exists()

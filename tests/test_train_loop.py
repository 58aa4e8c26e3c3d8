"""The training loop on a tiny config: loss falls, resume is exact, NaN steps are skipped, logs and export."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stok.train.config import from_dict
from stok.train.trainer import Paths, Trainer
from tests.conftest import REPO
from tests.train_helpers import tiny_config, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(str(tmp_path_factory.mktemp("train_data")))


@pytest.fixture(autouse=True)
def one_thread():
    """Deterministic and fast on a shared machine: 2 OpenMP threads on busy cores can be 5x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_trainer(data, exp_dir, resume=False, max_steps=None, **sections):
    cfg = from_dict(tiny_config(**sections))
    paths = Paths(str(exp_dir), data["train"][0], data["dev"][0], data["train"][1], data["dev"][1])
    return Trainer(cfg, paths, max_steps=max_steps, resume=resume, show_progress=False)


def read_log(exp_dir):
    rows = {}
    with open(os.path.join(exp_dir, "train_log.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = r  # a resumed run rewrites steps after its checkpoint: keep the newest
    return rows


def test_training_reduces_dev_mel(data, tmp_path):
    t = make_trainer(data, tmp_path / "exp", sched=dict(max_steps=24, valid_every=24, save_every=24,
                                                        valid_at_start=True))
    res = t.train()
    hist = res["dev_history"]
    assert [h["step"] for h in hist] == [0, 24]
    first, last = hist[0]["dev/mel_error"], hist[-1]["dev/mel_error"]
    assert last < 0.85 * first, (first, last)
    log = read_log(str(tmp_path / "exp"))
    assert all(math.isfinite(r["loss/generator"]) for r in log.values())
    t.close()


def test_resume_gives_the_same_losses_step_for_step(data, tmp_path):
    full = make_trainer(data, tmp_path / "full")
    full.train()
    full.close()
    part = make_trainer(data, tmp_path / "part")
    part.train(stop_after=3)  # stops after 3 steps, between two scheduled checkpoints
    assert part.step == 3
    part.close()
    resumed = make_trainer(data, tmp_path / "part", resume=True)
    assert resumed.step == 3 and resumed.position == (0, 3)  # 4 batches per epoch
    resumed.train()
    resumed.close()
    a, b = read_log(str(tmp_path / "full")), read_log(str(tmp_path / "part"))
    assert sorted(a) == sorted(b) == list(range(1, 7))
    keys = [k for k in a[1] if k.startswith("loss")]
    for step in range(1, 7):
        for k in keys:
            assert a[step][k] == b[step][k], (step, k, a[step][k], b[step][k])
    sa = torch.load(os.path.join(tmp_path, "full", "checkpoints", "ckpt_00000006.pt"), weights_only=True)
    sb = torch.load(os.path.join(tmp_path, "part", "checkpoints", "ckpt_00000006.pt"), weights_only=True)
    for k, v in sa["generator"].items():
        assert torch.equal(v, sb["generator"][k]), k
    for k, v in sa["discriminators"].items():
        assert torch.equal(v, sb["discriminators"][k]), k
    assert (sa["epoch"], sa["batch_in_epoch"]) == (sb["epoch"], sb["batch_in_epoch"]) == (1, 2)


def test_nan_step_is_skipped_and_nothing_changes(data, tmp_path):
    t = make_trainer(data, tmp_path / "exp", sched=dict(guard_buffers=True))
    it = iter(__import__("stok.train.data", fromlist=["x"]).make_train_loader(t.train_ds, t.sampler, 0, 320, 0))
    assert t.train_step(next(it)) is not None
    before_g = {k: v.clone() for k, v in t.gen.state_dict().items()}
    before_d = {k: v.clone() for k, v in t.disc.state_dict().items()}
    lr = t.optim.sched_g.get_last_lr()[0]
    bad = next(it)
    bad.wav[0, 0, 100] = float("nan")
    assert t.train_step(bad) is None
    assert t.nan_skips == 1
    for k, v in t.gen.state_dict().items():
        assert torch.equal(v, before_g[k]), k
    for k, v in t.disc.state_dict().items():
        assert torch.equal(v, before_d[k]), k
    assert t.optim.sched_g.get_last_lr()[0] != lr  # the schedule still follows the step count
    vals = t.train_step(next(it))
    assert vals is not None and math.isfinite(vals["loss/generator"])
    t.close()


def test_tensorboard_has_the_scalars(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = make_trainer(data, tmp_path / "exp", sched=dict(max_steps=4, log_every=2, valid_every=4))
    t.train()
    t.close()
    ea = EventAccumulator(str(tmp_path / "exp" / "tensorboard"), size_guidance={"scalars": 0, "images": 0,
                                                                              "audio": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for want in ["loss/generator", "loss/discriminator", "loss/mel", "loss/mel_error", "loss/recon_l1",
                 "loss/commit", "loss/distill", "loss/adversarial", "loss/feature_matching", "lr/generator",
                 "lr/discriminator", "grad_norm/generator", "grad_norm/discriminator",
                 "speed/audio_hours_per_hour", "train/nan_skips", "dev/mel_error", "dev/distill",
                 "codes/dev_used_layer1", "codes/dev_perplexity_layer2", "codes/train_used_layer1",
                 "codes/train_perplexity_layer1", "loss_d/mpd_p2", "loss_d/mstft_256"]:
        assert want in tags, want
    assert [e.step for e in ea.Scalars("loss/generator")] == [1, 2, 4]
    assert ea.Scalars("speed/audio_hours_per_hour")[-1].value > 0
    assert any(t.startswith("dev_audio/") for t in ea.Tags()["audio"])
    try:
        import PIL  # noqa: F401
    except ImportError:
        return
    assert any(t.startswith("dev_mel/") for t in ea.Tags()["images"])


def test_killed_run_resumes_to_the_same_losses(data, tmp_path):
    import yaml

    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump(tiny_config(sched=dict(max_steps=7, save_every=1, valid_every=100, keep_last=3))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def cmd(exp, *extra):
        return [sys.executable, "-m", "stok.bin.train", "--config", str(conf), "--data_dir", data["train"][0],
                "--teacher_scp", data["train"][1], "--dev_dir", data["dev"][0], "--dev_teacher_scp", data["dev"][1],
                "--exp_dir", str(exp), "--device", "cpu", "--threads", "1", "--quiet", "--no_export", *extra]

    ref = subprocess.run(cmd(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = tmp_path / "killed" / "checkpoints" / "index.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if index.exists() and '"step": 3' in index.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = [e["step"] for e in json.loads(index.read_text())]
    assert max(steps) < 7
    res = subprocess.run(cmd(tmp_path / "killed", "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"step {max(steps)}" in res.stderr
    a, b = read_log(str(tmp_path / "ref")), read_log(str(tmp_path / "killed"))
    assert sorted(a) == sorted(b) == list(range(1, 8))
    for step in a:
        for k in a[step]:
            if k.startswith("loss"):
                assert a[step][k] == b[step][k], (step, k)


def test_kmeans_label_distillation_and_export_without_head(data, tmp_path):
    from tests.train_helpers import TEACHER_DIM, tiny_labels

    labels = tiny_labels(data)
    cfg = from_dict(tiny_config(loss=dict(distill_type="kmeans", n_units=TEACHER_DIM), teacher=dict(source="labels"),
                                sched=dict(max_steps=2, valid_every=2, save_every=2)))
    paths = Paths(str(tmp_path / "exp"), labels["train"][0], labels["dev"][0], labels["train"][1], labels["dev"][1])
    t = Trainer(cfg, paths, show_progress=False)
    assert t.gen.head is not None and t.gen.head.out_features == TEACHER_DIM
    res = t.train()
    assert math.isfinite(res["last"]["loss/distill"]) and res["last"]["loss/distill"] > 0
    out = t.export(str(tmp_path / "export"))
    t.close()
    sd = torch.load(os.path.join(out, "SpeechTokenizer.pt"), weights_only=True)
    assert not any(k.startswith("head") or k.startswith("model.") for k in sd)

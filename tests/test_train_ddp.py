"""DDP: two CPU processes (gloo) under torchrun train, stay in sync, checkpoint and export."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from tests.conftest import REPO
from tests.train_helpers import tiny_config, tiny_data


def test_two_process_gloo_torchrun(tmp_path):
    data = tiny_data(str(tmp_path))
    cfg = tiny_config(sched=dict(max_steps=4, valid_every=4, save_every=2, log_every=1))
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    exp = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stok.bin.train", "--config", str(conf), "--data_dir", data["train"][0],
           "--teacher_scp", data["train"][1], "--dev_dir", data["dev"][0], "--dev_teacher_scp", data["dev"][1],
           "--exp_dir", str(exp), "--device", "cpu", "--threads", "1", "--quiet"]
    res = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in res.stderr
    assert "dev mel error: first" in res.stdout
    ck = torch.load(exp / "checkpoints" / "ckpt_00000004.pt", weights_only=True)
    assert ck["world"] == 2 and len(ck["rng"]) == 2
    # each rank read its own half of every global batch: 8 utterances, 2 x 2 per step -> 2 steps per epoch
    assert (ck["epoch"], ck["batch_in_epoch"]) == (2, 0)
    assert ck["audio_seconds"] > 0
    assert (exp / "export" / "config.json").exists() and (exp / "export" / "SpeechTokenizer.pt").exists()
    # resume under DDP continues from the checkpoint
    res2 = subprocess.run(cmd + ["--resume", "--max_steps", "6"], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=600)
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert "resumed from" in res2.stderr and "step 4" in res2.stderr
    assert (exp / "checkpoints" / "ckpt_00000006.pt").exists()


def _nan_worker(rank, root, port, out):
    import torch.distributed as dist

    from stok.train.config import from_dict
    from stok.train.data import make_train_loader
    from stok.core.distributed import DistInfo
    from stok.train.trainer import Paths, Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        paths = Paths(os.path.join(root, "exp"), os.path.join(root, "data", "train"), os.path.join(root, "data", "dev"),
                      os.path.join(root, "feats_train.scp"), os.path.join(root, "feats_dev.scp"))
        t = Trainer(from_dict(tiny_config()), paths, DistInfo(rank, 2, rank, 2, torch.device("cpu")), show_progress=False)
        it = iter(make_train_loader(t.train_ds, t.sampler, 0, 320, 0))
        results = []
        for step in range(3):
            b = next(it)
            if step == 1 and rank == 1:  # bad data on one rank only: every rank must skip, nobody hangs
                b.wav[0, 0, 5] = float("nan")
            results.append(t.train_step(b) is not None)
        results.append(t.check_ranks_in_sync())
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(" ".join(map(str, results + [t.nan_skips])))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_to_skip_a_nan_step(tmp_path):
    import socket

    import torch.multiprocessing as mp

    tiny_data(str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_nan_worker, args=(str(tmp_path), port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "True False True True 1"

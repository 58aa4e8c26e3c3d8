"""``stok-train`` on clusters, through real processes: a SIGTERM/SIGUSR1 stops every rank after the same step with
a checkpoint and exit status 75, ``--resume`` then continues step for step; two ``torchrun`` launchers with
``--nnodes 2`` and c10d rendezvous on 127.0.0.1 train exactly as one node with two processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from stok.train.signals import REQUEUE_EXIT_STATUS
from tests.conftest import REPO
from tests.test_train_loop import read_log
from tests.train_helpers import tiny_config, tiny_data

STEPS = 6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    data = tiny_data(str(root))
    conf = root / "train.yaml"  # checkpoints only at the end (or when stopped), no validation in between
    conf.write_text(yaml.safe_dump(tiny_config(sched=dict(max_steps=STEPS, save_every=100, valid_every=100))))
    return {"root": root, "data": data, "conf": str(conf)}


def train_args(s, exp, *extra):
    d = s["data"]
    return ["-m", "stok.bin.train", "--config", s["conf"], "--data_dir", d["train"][0], "--teacher_scp", d["train"][1],
            "--dev_dir", d["dev"][0], "--dev_teacher_scp", d["dev"][1], "--exp_dir", str(exp), "--device", "cpu",
            "--threads", "1", "--quiet", "--no_export", *extra]


def torchrun(*launcher):
    return [sys.executable, "-m", "torch.distributed.run", "--max_restarts", "0", *launcher]


def run(cmd, timeout=600):
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int):
    """Processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def rank_of(pid: int) -> int:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return int(env[b"RANK"])


def wait_for_step(exp, step: int, proc, timeout=300) -> None:
    log = os.path.join(str(exp), "train_log.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and len(read_log(str(exp))) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"no step {step} in {log} (exit status {proc.poll()})")


def same_losses(a_dir, b_dir, steps=STEPS) -> None:
    a, b = read_log(str(a_dir)), read_log(str(b_dir))
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        for k in a[step]:
            if k.startswith("loss"):
                assert a[step][k] == b[step][k], (step, k, a[step][k], b[step][k])


def stopped_run(s, exp, proc, wait_step: int):
    """After a signal: what the stopped run left (its checkpoint's step and the marker)."""
    marker = json.loads((exp / "stopped.json").read_text())
    ckpt = torch.load(marker["checkpoint"], weights_only=True)
    assert ckpt["step"] == marker["step"] and wait_step <= marker["step"] < STEPS
    assert max(read_log(str(exp))) == marker["step"]
    return marker


@pytest.fixture(scope="module")
def one_process_reference(setup):
    exp = setup["root"] / "ref1"
    res = run([sys.executable, *train_args(setup, exp)])
    assert res.returncode == 0, res.stderr[-3000:]
    return exp


@pytest.fixture(scope="module")
def two_process_reference(setup):
    exp = setup["root"] / "ref2"
    res = run(torchrun("--standalone", "--nproc_per_node", "2", *train_args(setup, exp)))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in res.stderr
    return exp


def test_signal_to_every_process_saves_exits_75_and_resumes_step_for_step(setup, one_process_reference, tmp_path):
    """SIGUSR1 to the whole process group (as Slurm signals a job step: the trainer and its DataLoader workers)."""
    exp = tmp_path / "exp"
    cmd = [sys.executable, *train_args(setup, exp, "--num_workers", "2")]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_step(exp, 2, proc)
        assert len(children(proc.pid)) == 2  # the two audio workers get the signal too
        os.killpg(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == REQUEUE_EXIT_STATUS, err[-3000:]
    marker = stopped_run(setup, exp, proc, 2)
    assert marker["signal"] == "SIGUSR1" and marker["exit_status"] == REQUEUE_EXIT_STATUS
    assert f"stopped by SIGUSR1 after step {marker['step']} of {STEPS}" in out
    res = run([sys.executable, *train_args(setup, exp, "--num_workers", "2", "--resume")])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"step {marker['step']}" in res.stderr and not (exp / "stopped.json").exists()
    same_losses(one_process_reference, exp)


def test_signal_to_one_rank_stops_all_ranks_at_the_same_step(setup, two_process_reference, tmp_path):
    """SIGTERM to rank 1 of a torchrun launch: both ranks stop after the same step (the flag is all-reduced),
    the checkpoint holds both ranks' RNG states, and a resumed launch gives the uninterrupted run's losses."""
    exp = tmp_path / "exp"
    cmd = torchrun("--standalone", "--nproc_per_node", "2", *train_args(setup, exp))
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    workers = []
    try:
        wait_for_step(exp, 2, proc)
        workers = children(proc.pid)
        assert sorted(rank_of(p) for p in workers) == [0, 1]
        os.kill(next(p for p in workers if rank_of(p) == 1), signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        for pid in [proc.pid] + workers:  # a rank has its own session: killing the launcher's group misses it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert proc.returncode != 0  # torchrun reports a worker's status 75 as a failure: stopped.json says why
    failures = [line for line in err.splitlines() if "exitcode  :" in line]
    assert failures and all(f"exitcode  : {REQUEUE_EXIT_STATUS} " in line for line in failures), err[-3000:]
    marker = stopped_run(setup, exp, proc, 2)
    assert marker["signal"] == "SIGTERM"
    ckpt = torch.load(marker["checkpoint"], weights_only=True)
    assert ckpt["world"] == 2 and len(ckpt["rng"]) == 2
    res = run(torchrun("--standalone", "--nproc_per_node", "2", *train_args(setup, exp, "--resume")))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in res.stderr
    same_losses(two_process_reference, exp)


def test_two_nodes_with_c10d_rendezvous_train_as_one_node(setup, two_process_reference, tmp_path):
    """Two launchers (``--nnodes 2 --node_rank 0/1``, one process each, c10d rendezvous on 127.0.0.1): the same
    losses, step for step, as one launcher with two processes."""
    exp = tmp_path / "exp"
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    try:
        for node in (0, 1):
            cmd = torchrun("--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                           "--rdzv_endpoint", endpoint, "--rdzv_id", "stok-two-nodes", *train_args(setup, exp))
            procs.append(subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                for pid in [p.pid] + children(p.pid):
                    os.kill(pid, signal.SIGKILL)
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert any("parameters identical on all 2 ranks" in err for _, err in outs)
    ckpt = torch.load(exp / "checkpoints" / f"ckpt_{STEPS:08d}.pt", weights_only=True)
    assert ckpt["world"] == 2
    same_losses(two_process_reference, exp)

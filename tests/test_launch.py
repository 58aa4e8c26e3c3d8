"""The launcher without a cluster: settings and their messages, the sbatch scripts it writes, torchrun's command
line from a Slurm allocation, the local launcher's commands, run.sh's option check in Python, and that the launcher
starts without torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stok.core.settings import SettingsError
from stok.launch.node import torchrun_args
from stok.launch.scripts import step_script, train_script
from stok.launch.settings import SlurmSettings, time_seconds
from stok.launch.slurm import expand_nodelist
from tests.conftest import PYTHON, REPO


def test_time_limits():
    assert time_seconds("30") == 1800 and time_seconds("30:15") == 1815 and time_seconds("4:00:00") == 14400
    assert time_seconds("2-00:00:00") == 172800 and time_seconds("1-12") == 129600 and time_seconds("1-0:30") == 88200
    assert time_seconds("") is None and time_seconds("UNLIMITED") is None
    with pytest.raises(ValueError):
        time_seconds("4h")


@pytest.mark.parametrize("field,value,expect", [
    ("time", "4h", "--slurm_time 4h: give a Slurm time limit"),
    ("mem", "lots", "--slurm_mem lots: give a size such as 16G"),
    ("gpus", "x", "--slurm_gpus x: give auto, a number or TYPE:N"),
    ("cpus", 0, "--slurm_cpus 0: give a number >= 1"),
    ("partition", "a b", "--slurm_partition 'a b'"),
    ("opts", "--qos 'x", "--slurm_opts"),
])
def test_bad_settings_name_the_option(field, value, expect):
    with pytest.raises(SettingsError, match=expect.replace("(", r"\(")):
        SlurmSettings(**{field: value}).check()


def test_signal_must_come_before_the_time_limit():
    SlurmSettings(time="10", signal_seconds=300).check()
    with pytest.raises(SettingsError, match="--slurm_signal_seconds 300 is not below the time limit"):
        SlurmSettings(time="5", signal_seconds=300).check()
    SlurmSettings(time="5", signal_seconds=0).check()


def test_stage_overrides():
    base = SlurmSettings(time="1:00:00", mem="8G", cpus=4, opts="--qos=low")
    s3 = base.for_stage("nodes=2 gpus=a100:4 time=2-00:00:00 opts='--qos=high --account=x'", "--slurm_stage3")
    assert (s3.nodes, s3.gpus, s3.time, s3.cpus, s3.mem) == (2, "a100:4", "2-00:00:00", 4, "8G")
    assert s3.sbatch_resources("a100:4") == ["--cpus-per-task=4", "--time=2-00:00:00", "--mem=8G", "--gres=gpu:a100:4",
                                            "--qos=high", "--account=x"]
    assert base.for_stage("", "--slurm_stage1") == base
    with pytest.raises(SettingsError, match=r"--slurm_stage3 'gpu=1': 'gpu=1' is not KEY=VALUE"):
        base.for_stage("gpu=1", "--slurm_stage3")
    with pytest.raises(SettingsError, match="--slurm_stage2: cpus=two is not a whole number"):
        base.for_stage("cpus=two", "--slurm_stage2")
    with pytest.raises(SettingsError, match=r"--slurm_stage4 'time=soon': --slurm_time soon"):
        base.for_stage("time=soon", "--slurm_stage4")


def test_gpus_auto_follows_ngpu():
    auto = SlurmSettings()
    assert auto.gpus_per_job(ngpu=0, uses_gpu=True) == ""
    assert auto.gpus_per_job(ngpu=2, uses_gpu=True) == "1"
    assert auto.gpus_per_job(ngpu=2, uses_gpu=True, per_node=8) == "8"
    assert auto.gpus_per_job(ngpu=2, uses_gpu=False) == ""
    assert SlurmSettings(gpus="a100:2").gpus_per_job(ngpu=0, uses_gpu=False) == "a100:2"
    assert SlurmSettings(gpus="0").gpus_per_job(ngpu=4, uses_gpu=True) == ""


def test_shard_script(tmp_path):
    text = step_script(what="stage 5: s3 shard", name="stok.s5.s3", comment="stok:/r:s3", chdir="/r",
                       log="/r/exp/log/s3.%a.log", status="/r/exp/log/s3 x.%a.exit",
                       command=["/venv/python", "-m", "stok.bin.dump_s3", "--model", "a b.onnx"],
                       resources=["--cpus-per-task=2", "--mem=4G"], shards=4)
    assert "#SBATCH --output=/r/exp/log/s3.%a.log" in text and "#SBATCH --requeue" in text
    assert "#SBATCH --open-mode=append" in text and "#SBATCH --cpus-per-task=2" in text
    assert "-m stok.bin.dump_s3 --model 'a b.onnx' --shard \"${SLURM_ARRAY_TASK_ID}/4\"" in text
    # the script runs: its status file gets the command's exit status, with the task in its name
    script = tmp_path / "job.sh"
    script.write_text(text.replace("/venv/python -m stok.bin.dump_s3", "sh -c 'exit 3' x")
                      .replace("/r/exp/log/s3 x", str(tmp_path / "s3 x")))
    res = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "7"},
                         capture_output=True, text=True)
    assert res.returncode == 3 and (tmp_path / "s3 x.2.exit").read_text().strip() == "3", res.stdout + res.stderr


def test_train_script_warns_requeues_and_runs_every_node():
    text = train_script(what="stage 3", name="stok.s3.train", comment="c", chdir="/r", log="/r/t.log",
                        status="/r/t.exit", node_command=["/venv/python", "-m", "stok.bin.launch", "node",
                                                          "--nproc_per_node", "4", "--", "stok.bin.train", "--resume"],
                        nodes=2, cpus=16, resources=["--cpus-per-task=16", "--gres=gpu:4"], signal_seconds=240)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=B:USR1@240",
                 "#SBATCH --requeue", "#SBATCH --gres=gpu:4", "trap on_usr1 USR1", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in text, line
    assert ("srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 /venv/python -m "
            "stok.bin.launch node --nproc_per_node 4 -- stok.bin.train --resume &") in text
    assert "--signal" not in train_script(what="", name="n", comment="c", chdir="/r", log="l", status="s",
                                          node_command=["x"], nodes=1, cpus=1, resources=[], signal_seconds=0)


def test_nodelists():
    assert expand_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_nodelist("n[8-10]-ib") == ["n8-ib", "n9-ib", "n10-ib"]
    assert expand_nodelist("vm") == ["vm"]


def test_torchrun_command_from_the_allocation(monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(PYTHON))  # no scontrol: stok expands the node list itself
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_RESTART_COUNT": "3"}
    args = torchrun_args(env, 4, "stok.bin.train", ["--resume"])
    assert args == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4", "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", "gpu07:24242", "--rdzv_id", "stok-4242-3", "--max_restarts", "0",
                    "-m", "stok.bin.train", "--resume"]
    assert torchrun_args(env, 1, "m", [], port=29400)[9] == "gpu07:29400"


def launch(*args, path=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": REPO}
    if path:
        env["PATH"] = path + os.pathsep + env["PATH"]
    return subprocess.run([PYTHON, "-m", "stok.bin.launch", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_local_launcher_runs_what_run_sh_ran(tmp_path):
    """local: a job as given; a dump as torchrun --standalone for several processes (--ngpu GPUs win over --nj,
    --local_nj fixes it), python -m for one; training with --train_nj processes."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for prog in ("torchrun", "python"):
        (fake / prog).write_text(f"#!/bin/sh\necho {prog} \"$@\"\n")
        (fake / prog).chmod(0o755)
    cases = [
        (["job", "--", "echo", "a b"], "a b"),
        (["dump", "--nj", "3", "--", "stok.bin.dump_s3", "--x", "1"],
         "torchrun --standalone --nproc_per_node 3 -m stok.bin.dump_s3 --x 1"),
        (["dump", "--nj", "3", "--ngpu", "2", "--", "m"], "torchrun --standalone --nproc_per_node 2 -m m"),
        (["dump", "--nj", "3", "--local_nj", "1", "--", "stok.bin.kmeans", "dump"], "python -m stok.bin.kmeans dump"),
        (["dump", "--nj", "1", "--", "m"], "python -m m"),
        (["train", "--train_nj", "2", "--", "stok.bin.train", "--resume"],
         "torchrun --standalone --nproc_per_node 2 -m stok.bin.train --resume"),
        (["train", "--", "stok.bin.train"], "python -m stok.bin.train"),
    ]
    for args, expect in cases:
        res = launch(*args, path=str(fake))
        assert res.returncode == 0 and res.stdout.strip() == expect, (args, res.stdout, res.stderr)
    res = launch("job", "--", "sh", "-c", "exit 7")
    assert res.returncode == 7  # the step's own exit status
    res = launch("dump", "--nj", "0", "--", "m")
    assert res.returncode == 1 and res.stderr.strip() == "error: --nj 0: give a number >= 1"
    res = launch("job", "--stage", "1")
    assert res.returncode == 1 and "give the step's command after --" in res.stderr


def test_slurm_launcher_needs_sbatch(tmp_path):
    res = subprocess.run([PYTHON, "-m", "stok.bin.launch", "job", "--launcher", "slurm", "--", "true"],
                         env={**os.environ, "PYTHONPATH": REPO, "PATH": os.path.dirname(PYTHON)}, cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == ("error: --launcher slurm: sbatch not found on PATH; run on a Slurm login node (or "
                                  "use --launcher local)")
    assert os.listdir(tmp_path) == []


def test_the_launcher_and_the_option_check_start_without_torch():
    code = ("import sys, stok.bin.launch, stok.bin.run_options, stok.launch.runner, stok.launch.node; "
            "assert stok.bin.run_options.s3_versions(); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy')))")
    res = subprocess.run([PYTHON, "-c", code], env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_run_options_reads_the_s3_versions_of_the_model_package():
    from stok.bin.run_options import s3_versions
    from stok.models.s3.config import VERSIONS

    assert s3_versions() == tuple(VERSIONS)


def run_options(*items, path=None):
    env = {**os.environ, "PYTHONPATH": REPO}
    if path is not None:
        env["PATH"] = path
    base = dict(stage="1", stop_stage="2", nj="2", ngpu="0", num_workers="2", train_nj="1", teacher="mfcc",
                n_clusters="100", km_percent="1.0", train_config="conf/train.yaml", st_n_q="0", s3_version="v2_25hz",
                shar="false", shar_shard_size="1000", launcher="local")
    base.update(dict(i.split("=", 1) for i in items))
    args = [f"{k}={v}" for k, v in base.items()]
    return subprocess.run([PYTHON, "-m", "stok.bin.run_options", "--recipe", os.path.join(REPO, "recipes", "demo"),
                           *args], env=env, capture_output=True, text=True)


def slurm_items(**over):
    values = dict(slurm_partition="", slurm_time="30:00", slurm_mem="4G", slurm_cpus="2", slurm_gpus="auto",
                  slurm_nodes="1", slurm_opts="", slurm_retries="3", slurm_signal_seconds="300",
                  **{f"slurm_stage{i}": "" for i in range(6)})
    values.update(over)
    return [f"{k}={v}" for k, v in values.items()]


def test_run_options_checks_the_launcher():
    assert run_options().returncode == 0
    assert run_options("launcher=slurm", *slurm_items()).returncode in (0, 1)  # 1 where sbatch is missing
    for items, expect in [
        (["launcher=pbs"], "run.sh: error: --launcher pbs: use local or slurm"),
        (["launcher=slurm"], "run.sh: error: --launcher slurm: " + os.path.join(REPO, "recipes", "demo")
         + "/conf/cmd.sh does not set slurm_partition"),
        (["launcher=slurm", *slurm_items(slurm_cpus="two")], "run.sh: error: --slurm_cpus two is not a whole number"),
        (["launcher=slurm", *slurm_items(slurm_stage3="nodes=x")], "run.sh: error: --slurm_stage3: nodes=x is not"),
        (["launcher=slurm", *slurm_items(slurm_time="5", slurm_signal_seconds="400")],
         "run.sh: error: --slurm_signal_seconds 400 is not below the time limit"),
        (["km_percent=0"], "run.sh: error: --km_percent 0 must be a fraction in (0, 1] (0.1 = 10%)"),
        (["km_percent=1e-1x"], "run.sh: error: --km_percent 1e-1x must be a fraction"),
    ]:
        res = run_options(*items)
        assert res.returncode == 1 and res.stderr.startswith(expect), (items, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
    res = run_options("launcher=slurm", *slurm_items(), path=os.path.dirname(PYTHON))
    assert res.returncode == 1 and "sbatch not found on PATH" in res.stderr
    assert run_options("km_percent=.5").returncode == 0 and run_options("km_percent=1e-1").returncode == 0

"""run.sh on a real Slurm cluster (munged, slurmctld and slurmd on this host, :mod:`tests.slurm_cluster`), on the
demo recipe: stage 0, 1 and 5 as Slurm jobs (the dumps as 2-shard job arrays plus a merge job) give the local run's
outputs; a shard cancelled mid-run (scancel) is resubmitted alone and finishes without rewriting a record; a
failing shard stops run.sh with its log's error line; training through the slurm launcher, warned with SIGUSR1
(as Slurm does before the time limit: ``--signal=B:USR1``), is requeued and resumes step for step; a lock left by
a Slurm job that ended is taken over, one of a running job is not."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time

import kaldiio
import pytest

from stok.core.locks import FileLock, LockHeld
from tests.conftest import REPO
from tests.slurm_cluster import slurm_cluster  # noqa: F401 - the session fixture

SPLITS = ("train-clean-demo", "dev-clean-demo")
TIMING = {"wall_seconds", "real_time_factor", "audio_seconds_per_second"}
#: few, cheap steps of the demo config (about a second each on 2 idle cores: more steps cost little and leave the
#: signal, sent after step 2 is logged, time to arrive before the last step); a checkpoint every step
TRAIN_OPTS = ("--max_steps 8 --set sched.save_every=1 --set sched.valid_at_start=false --set sched.log_every=1 "
              "--set data.num_workers=0 --quiet")


def run_sh(recipe, *args, env=None, **popen):
    full = {**os.environ, "STOK_VENV": sys.prefix, "STOK_SLURM_POLL_SECONDS": "0.5", **(env or {})}
    cmd = ["bash", os.path.join(REPO, "run.sh"), "--recipe", str(recipe), *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=full, text=True, **popen)
    return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=900)


def ok(res):
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def new_recipe(root, data_from=None):
    """A copy of recipes/demo's conf and local (the corpus linked); with ``data_from``, that recipe's stage 0."""
    os.makedirs(root)
    for part in ("conf", "local"):
        shutil.copytree(os.path.join(REPO, "recipes", "demo", part), os.path.join(root, part))
    os.symlink(os.path.join(REPO, "recipes", "demo", "corpus"), os.path.join(root, "corpus"))
    if data_from is not None:
        shutil.copytree(os.path.join(data_from, "data"), os.path.join(root, "data"))
    return root


def slurm_args(cpus=1, mem="1G"):
    return ["--launcher", "slurm", "--slurm_cpus", cpus, "--slurm_mem", mem, "--slurm_time", "20"]


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory):
    """The demo's stages 0, 1, 2 and 5 run locally with --nj 2 (two torchrun ranks; k-means labels in one process)."""
    rec = new_recipe(str(tmp_path_factory.mktemp("local") / "demo"))
    ok(run_sh(rec, "--stage", 0, "--stop_stage", 2, "--nj", 2))
    ok(run_sh(rec, "--stage", 5, "--stop_stage", 5, "--nj", 2))
    return rec


def job_states(cluster, rec, name):
    """``{(array task, own job id): state}`` of recipe ``rec``'s jobs called ``name``."""
    return {(j["task"], j["id"]): j["state"] for j in cluster.jobs()
            if j["name"] == name and j["comment"].startswith(f"stok:{rec}:")}


def array_task(cluster, rec, name, task):
    """``ARRAY_TASK`` of the running task ``task`` of recipe ``rec``'s array job ``name`` (what scancel takes for
    one task: the task's own job id may equal the array's, which would cancel them all)."""
    found = [f"{j['array']}_{task}" for j in cluster.jobs() if j["name"] == name and j["task"] == str(task)
             and j["state"] == "RUNNING" and j["comment"].startswith(f"stok:{rec}:")]
    assert len(found) == 1, cluster.jobs()
    return found[0]


def scrub(value, roots, drop=TIMING):
    if isinstance(value, dict):
        return {scrub(k, roots, drop): scrub(v, roots, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [scrub(v, roots, drop) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<recipe>")
    return value


def same_dump(a, b, out, name):
    """Dump ``out`` of recipe ``b`` holds what recipe ``a``'s holds: the same shard arks byte for byte, the same
    scp (keys and offsets), failures, fingerprint, cut set and summary (but timings)."""
    da, db = os.path.join(a, out), os.path.join(b, out)
    for f in (f"{name}.0.ark", f"{name}.1.ark", "failed.list", f"{name}.fingerprint.json"):
        with open(os.path.join(da, f), "rb") as x, open(os.path.join(db, f), "rb") as y:
            assert x.read() == y.read(), f
    for f in (f"{name}.scp", f"{name}.0.scp", f"{name}.1.scp"):
        with open(os.path.join(da, f)) as x, open(os.path.join(db, f)) as y:
            assert x.read().replace(a, "<recipe>") == y.read().replace(b, "<recipe>"), f
    with gzip.open(os.path.join(da, "cuts.jsonl.gz"), "rt") as x, gzip.open(os.path.join(db, "cuts.jsonl.gz"), "rt") as y:
        assert x.read().replace(a, "<recipe>") == y.read().replace(b, "<recipe>")
    with open(os.path.join(da, f"{name}.summary.json")) as x, open(os.path.join(db, f"{name}.summary.json")) as y:
        assert scrub(json.load(x), [a]) == scrub(json.load(y), [b])
    assert len(kaldiio.load_scp(os.path.join(db, f"{name}.scp"))) > 0


def test_demo_stages_as_slurm_jobs_equal_the_local_run(slurm_cluster, local_demo, tmp_path):  # noqa: F811
    rec = new_recipe(str(tmp_path / "demo"))
    env = slurm_cluster.env
    res = ok(run_sh(rec, "--stage", 0, "--stop_stage", 2, "--nj", 2, *slurm_args(), env=env))
    assert "submitted feats.train-clean-demo shards 0..1 of 2 as Slurm job" in res.stdout
    ok(run_sh(rec, "--stage", 5, "--stop_stage", 5, "--nj", 2, *slurm_args(), env=env))
    for split in SPLITS:
        same_dump(local_demo, rec, f"dump/mfcc/{split}", "feats")
        same_dump(local_demo, rec, f"dump/s3_v2_25hz/{split}", "s3_tokens")
        # two shard jobs of one array, then one merge job; each left its log
        for dump in ("feats", "s3_tokens"):
            stage = 1 if dump == "feats" else 5
            shards = job_states(slurm_cluster, rec, f"stok.s{stage}.{dump}.{split}")
            assert sorted(t for t, _ in shards) == ["0", "1"] and set(shards.values()) == {"COMPLETED"}, shards
            merge = job_states(slurm_cluster, rec, f"stok.s{stage}.{dump}.{split}.merge")
            assert list(merge.values()) == ["COMPLETED"], merge
            for log in (f"{dump}.{split}.0.log", f"{dump}.{split}.1.log", f"{dump}.{split}.merge.log"):
                assert "exit status 0" in open(os.path.join(rec, "exp", "log", f"stage{stage}", log)).read()
        same_labels(local_demo, rec, f"dump/km100/{split}")
        assert sorted(t for t, _ in job_states(slurm_cluster, rec, f"stok.s2.km_labels.{split}")) == ["0", "1"]
    for step in ("stok.s0.data", "stok.s2.kmeans_learn", "stok.s5.make_demo_s3"):
        assert list(job_states(slurm_cluster, rec, step).values()) == ["COMPLETED"], step


def same_labels(a, b, out):
    """k-means labels: one process here, two shard jobs on Slurm: the same labels of the same model."""
    la, lb = (kaldiio.load_scp(os.path.join(r, out, "km_labels.scp")) for r in (a, b))
    assert list(la) == list(lb) and len(la) > 0
    for k in la:
        assert (la[k] == lb[k]).all(), k
    for f in ("km_labels.txt", "km_labels.fingerprint.json", "failed.list"):
        with open(os.path.join(a, out, f)) as x, open(os.path.join(b, out, f)) as y:
            assert x.read().replace(a, "<recipe>") == y.read().replace(b, "<recipe>"), f
    with open(os.path.join(a, out, "km_labels.summary.json")) as x, \
            open(os.path.join(b, out, "km_labels.summary.json")) as y:
        assert json.load(x)["usage"] == json.load(y)["usage"]


def test_a_cancelled_shard_is_resubmitted_alone_and_rewrites_nothing(slurm_cluster, local_demo, tmp_path):  # noqa: F811
    rec = new_recipe(str(tmp_path / "demo"), data_from=local_demo)
    wav = os.path.join(rec, "data", SPLITS[0], "wav.scp")
    with open(wav) as f:
        entries = [line.split(maxsplit=1) for line in f.read().splitlines()]
    with open(wav, "w") as f:  # slow reads: the shard is still running when it is cancelled
        f.writelines(f"{k} sleep 0.3; cat {p} |\n" for k, p in entries)
    out = os.path.join(rec, "dump", "s3_v2_25hz", SPLITS[0])
    name = f"stok.s5.s3_tokens.{SPLITS[0]}"
    with open(tmp_path / "run.log", "w") as log:
        proc = run_sh(rec, "--stage", 5, "--stop_stage", 5, "--nj", 2, "--dev_set", "", "--num_workers", 0,
                      "--s3_opts", "--batch_size 1", *slurm_args(), env=slurm_cluster.env, stdout=log,
                      stderr=subprocess.STDOUT)
        end = time.time() + 300
        while len(_lines(os.path.join(out, "s3_tokens.1.scp"))) < 3:
            assert proc.poll() is None and time.time() < end, open(tmp_path / "run.log").read()[-3000:]
            time.sleep(0.1)
        task = array_task(slurm_cluster, rec, name, 1)
        own = [j["id"] for j in slurm_cluster.jobs() if f"{j['array']}_{j['task']}" == task][0]
        slurm_cluster.run("scancel", task)
        while job_states(slurm_cluster, rec, name).get(("1", own)) != "CANCELLED":
            time.sleep(0.1)
        before = _lines(os.path.join(out, "s3_tokens.1.scp"))
        end_offset = int(before[-1].rsplit(":", 1)[1])
        with open(os.path.join(out, "s3_tokens.1.ark"), "rb") as f:
            prefix = f.read(end_offset)
        assert proc.wait(600) == 0, open(tmp_path / "run.log").read()[-3000:]
    text = open(tmp_path / "run.log").read()
    assert f"{SPLITS[0]} shard 1 of 2 (Slurm job" in text and "ended CANCELLED without finishing; resubmitting it " \
                                                              "alone (retry 1 of 3)" in text, text[-3000:]
    # the resubmission is an array of shard 1 alone; shard 0 was never resubmitted
    tasks = sorted(t for t, _ in job_states(slurm_cluster, rec, name))
    assert tasks == ["0", "1", "1"], job_states(slurm_cluster, rec, name)
    after = _lines(os.path.join(out, "s3_tokens.1.scp"))
    assert after[:len(before)] == before
    with open(os.path.join(out, "s3_tokens.1.ark"), "rb") as f:
        assert f.read(end_offset) == prefix
    merged = kaldiio.load_scp(os.path.join(out, "s3_tokens.scp"))
    assert sorted(merged) == sorted(k for k, _ in entries)  # exactly one entry per utterance
    for shard in (0, 1):
        keys = [k for k, _ in kaldiio.load_ark(os.path.join(out, f"s3_tokens.{shard}.ark"))]
        assert len(keys) == len(set(keys)) == len(_lines(os.path.join(out, f"s3_tokens.{shard}.scp")))
    log1 = open(os.path.join(rec, "exp", "log", "stage5", f"s3_tokens.{SPLITS[0]}.1.log")).read()
    assert log1.count("start 0 on") == 2 and f"shard 1 of 2 ({len(before)} already done)" in log1, log1


def _lines(path):
    try:
        with open(path) as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []


def test_a_failing_shard_stops_run_sh_with_its_log(slurm_cluster, local_demo, tmp_path):  # noqa: F811
    rec = new_recipe(str(tmp_path / "demo"), data_from=local_demo)
    bad = str(tmp_path / "no_such_model.onnx")
    res = run_sh(rec, "--stage", 5, "--stop_stage", 5, "--nj", 2, "--dev_set", "", "--s3_model", bad,
                 "--s3_version", "v2_25hz", *slurm_args(), env=slurm_cluster.env)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Stage 5" in res.stdout
    err = res.stderr
    assert f"error: stage 5: s3_tokens.{SPLITS[0]} shard " in err and "failed with exit status 1; its log " \
           f"exp/log/stage5/s3_tokens.{SPLITS[0]}." in err, err
    assert f"  error: --model {bad}: no such file" in err, err
    assert not os.path.exists(os.path.join(rec, "dump", "s3_v2_25hz", SPLITS[0], "s3_tokens.scp"))
    states = job_states(slurm_cluster, rec, f"stok.s5.s3_tokens.{SPLITS[0]}")
    assert not {"RUNNING", "PENDING"} & set(states.values()), states
    assert not job_states(slurm_cluster, rec, f"stok.s5.s3_tokens.{SPLITS[0]}.merge")


def _train_log(rec):
    with open(os.path.join(rec, "exp", "st", "train_log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k == "step" or k.startswith("loss")} for line in f]


def test_training_is_requeued_at_the_time_limit_warning_and_resumes_step_for_step(slurm_cluster, local_demo,  # noqa: F811
                                                                                  tmp_path):
    ok(run_sh(local_demo, "--stage", 3, "--stop_stage", 3, "--train_opts", TRAIN_OPTS))
    rec = new_recipe(str(tmp_path / "demo"), data_from=local_demo)
    shutil.copytree(os.path.join(local_demo, "dump", "mfcc"), os.path.join(rec, "dump", "mfcc"))
    with open(tmp_path / "run.log", "w") as log:
        proc = run_sh(rec, "--stage", 3, "--stop_stage", 3, "--train_opts", TRAIN_OPTS,
                      *slurm_args(cpus=2, mem="3G"), "--slurm_signal_seconds", 60, env=slurm_cluster.env,
                      stdout=log, stderr=subprocess.STDOUT)
        log_path = os.path.join(rec, "exp", "st", "train_log.jsonl")
        end = time.time() + 300
        while len(_lines(log_path)) < 2:
            assert proc.poll() is None and time.time() < end, open(tmp_path / "run.log").read()[-3000:]
            time.sleep(0.1)
        [(_, job)] = [k for k, s in job_states(slurm_cluster, rec, "stok.s3.train").items() if s == "RUNNING"]
        # what Slurm does --signal seconds before the time limit: SIGUSR1 to the batch shell; the job is
        # requeued and starts again once its credential expired (10 s on the test cluster, 120 s by default)
        slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
        assert proc.wait(600) == 0, open(tmp_path / "run.log").read()[-3000:]
    job_log = open(os.path.join(rec, "exp", "log", "stage3", "train.log")).read()
    assert "SIGUSR1: the trainer checkpoints and stops; the job is requeued" in job_log
    assert f"requeueing job {job}" in job_log and "start 1 on" in job_log and "resumed from" in job_log, job_log
    assert "--rdzv_backend c10d" in job_log
    local, requeued = _train_log(local_demo), _train_log(rec)
    assert [r["step"] for r in requeued] == list(range(1, 9))
    assert requeued == local  # every step's losses, as in one uninterrupted run
    assert os.path.isfile(os.path.join(rec, "exp", "st", "export", "SpeechTokenizer.pt"))


def test_locks_of_slurm_jobs(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    """A lock from another host is judged by its Slurm job: held while the job runs, taken over once it ended or
    when this process is the same job requeued."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    running = slurm_cluster.run("sbatch", "--parsable", "--wrap", "sleep 120", "--output=/dev/null").stdout.strip()
    ended = slurm_cluster.run("sbatch", "--parsable", "--wrap", "true", "--output=/dev/null").stdout.strip()
    try:
        end = time.time() + 60
        while {j["id"]: j["state"] for j in slurm_cluster.jobs()}.get(ended) != "COMPLETED" or \
                {j["id"]: j["state"] for j in slurm_cluster.jobs()}.get(running) != "RUNNING":
            assert time.time() < end
            time.sleep(0.2)

        def remote_lock(name, job, restart=0):
            path = str(tmp_path / name)
            with open(path, "w") as f:  # a fresh heartbeat: only Slurm can tell the holder is gone
                json.dump({"host": "node-elsewhere", "boot_id": "other", "pid": 4242, "start_time": "1",
                           "since": "2026-01-01 00:00:00", "slurm_job": job, "slurm_restart": restart}, f)
            return path

        with pytest.raises(LockHeld, match=f"host node-elsewhere pid 4242 \\(Slurm job {running}\\)"):
            FileLock(remote_lock("running.lock", running), "the test output").acquire()
        lock = FileLock(remote_lock("ended.lock", ended), "the test output").acquire()
        assert lock.held
        lock.release()
        monkeypatch.setenv("SLURM_JOB_ID", running)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # this process: the same job, started again
        lock = FileLock(remote_lock("requeued.lock", running, restart=0), "the test output").acquire()
        with open(lock.path) as f:
            assert json.load(f)["slurm_restart"] == 1
        lock.release()
    finally:
        slurm_cluster.run("scancel", running, check=False)

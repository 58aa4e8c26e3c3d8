"""One writer per dump output: a second writer of the same output dir (the same command started twice, a shard job
of another layout) is refused with one line naming the host and pid that hold it, and nothing is mixed; a
SIGKILLed writer's lock is taken over by the rerun, which finishes the dump without rewriting a record.
Real processes of ``stok-dump-features`` (MFCC) on audio read through slow ``cmd |`` pipes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import kaldiio
import numpy as np

from tests.conftest import PYTHON, REPO, write_corpus

N_UTTS = 12


def slow_data(root, delay: float = 0.4, gate: bool = False) -> str:
    """A Kaldi dir (with utt2dur, so no read probes durations) whose wav.scp reads each file through ``sleep DELAY;
    cat FILE |``; with ``gate``, reads after the third wait until :func:`open_gate` is called, so the first writer
    is still running, whatever the machine's load, while the test starts the others."""
    durations = [0.8 + 0.05 * i for i in range(N_UTTS)]
    scp = write_corpus(os.path.join(str(root), "audio"), durations)
    data = os.path.join(str(root), "data")
    os.makedirs(os.path.join(data, "reads"), exist_ok=True)
    reader = os.path.join(data, "read.sh")
    with open(reader, "w") as f:
        f.write(f"""#!/bin/sh
sleep {delay}
touch "{data}/reads/$(basename "$1")"
if [ -n "{'gate' if gate else ''}" ] && [ "$(ls "{data}/reads" | wc -l)" -gt 3 ]; then
  while [ ! -e "{data}/open" ]; do sleep 0.05; done
fi
exec cat "$1"
""")
    os.chmod(reader, 0o755)
    with open(scp) as f, open(os.path.join(data, "wav.scp"), "w") as out, \
            open(os.path.join(data, "utt2dur"), "w") as dur:
        for line, d in zip(f, durations):
            key, path = line.split()
            out.write(f"{key} {reader} {path} |\n")
            dur.write(f"{key} {d:.2f}\n")
    return data


def open_gate(data: str) -> None:
    open(os.path.join(data, "open"), "w").close()


def dump_cmd(data: str, out: str, *extra: str):
    return [PYTHON, "-m", "stok.bin.dump_features", "--teacher", "mfcc", "--device", "cpu", "--num_workers", "0",
            "--batch_size", "1", "--data_dir", data, "--output_dir", out, *extra]


def env():
    return {**os.environ, "PYTHONPATH": REPO}


def run(cmd):
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)


def start(cmd, log):
    return subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def lines(path: str) -> list:
    try:
        with open(path) as f:
            return [line for line in f.read().split("\n")[:-1]]
    except FileNotFoundError:
        return []


def wait_for_records(scp: str, n: int, proc, seconds: float = 120) -> list:
    end = time.time() + seconds
    while time.time() < end:
        got = lines(scp)
        if len(got) >= n:
            return got
        assert proc.poll() is None, "the writer ended before writing enough records"
        time.sleep(0.05)
    raise AssertionError(f"{scp}: fewer than {n} records after {seconds} s")


def ark_keys(ark: str) -> list:
    return [k for k, _ in kaldiio.load_ark(ark)]


def same_arrays(a_scp: str, b_scp: str) -> None:
    a, b = kaldiio.load_scp(a_scp), kaldiio.load_scp(b_scp)
    assert sorted(a) == sorted(b) and len(a) == N_UTTS
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_second_writer_is_refused_and_nothing_mixes(tmp_path):
    data = slow_data(tmp_path, gate=True)
    out, ref = str(tmp_path / "out"), str(tmp_path / "ref")
    with open(tmp_path / "first.log", "w") as log:
        first = start(dump_cmd(data, out), log)
        try:
            wait_for_records(os.path.join(out, "feats.0.scp"), 2, first)
            again = run(dump_cmd(data, out))  # the same command started twice
            other = run(dump_cmd(data, out, "--shard", "1/2"))  # a shard job of another layout, same time
        finally:
            open_gate(data)
        assert first.wait(300) == 0, open(tmp_path / "first.log").read()[-3000:]
    host = socket.gethostname()
    for res in (again, other):
        assert res.returncode == 1, res.stderr[-2000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.stderr
    assert re.search(rf"error: {re.escape(out)} \(shard 0 of feats\) is being written by another process: host "
                     rf"{re.escape(host)} pid {first.pid} \(since .*, lock {re.escape(out)}/feats.0.lock\); wait for "
                     "it to finish or stop it$", again.stderr.strip().splitlines()[-1]), again.stderr
    assert (f"error: {out} is being written by another feats run with 1 shards, this run 2: host {host} pid "
            f"{first.pid}") in other.stderr
    # nothing mixed: the first writer's shard alone, each record once, the same arrays as a run on its own
    assert sorted(f for f in os.listdir(out) if f.startswith("feats.") and f.endswith((".ark", ".scp"))) == [
        "feats.0.ark", "feats.0.scp", "feats.scp"]
    keys = ark_keys(os.path.join(out, "feats.0.ark"))
    assert len(keys) == len(set(keys)) == N_UTTS
    assert run(dump_cmd(data, ref)).returncode == 0
    same_arrays(os.path.join(out, "feats.scp"), os.path.join(ref, "feats.scp"))
    assert not any(f.endswith(".lock") for f in os.listdir(out))


def test_a_killed_writers_lock_is_taken_over_without_rewriting_a_record(tmp_path):
    data = slow_data(tmp_path)
    out = str(tmp_path / "out")
    with open(tmp_path / "first.log", "w") as log:
        first = start(dump_cmd(data, out), log)
        wait_for_records(os.path.join(out, "feats.0.scp"), 3, first)
        os.killpg(first.pid, signal.SIGKILL)  # the writer and its readers, with no chance to clean up
        first.wait(30)
    assert os.path.exists(os.path.join(out, "feats.0.lock"))
    before = lines(os.path.join(out, "feats.0.scp"))
    ark = os.path.join(out, "feats.0.ark")
    end = int(before[-1].rsplit(":", 1)[1])
    with open(ark, "rb") as f:
        prefix = f.read(end)  # every byte up to the start of the last recorded record's data
    res = run(dump_cmd(data, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (f"took over a stale lock of host {socket.gethostname()} pid {first.pid} (process {first.pid} on "
            f"{socket.gethostname()} is gone)") in res.stderr
    after = lines(os.path.join(out, "feats.0.scp"))
    assert after[:len(before)] == before  # the records written before the kill stay where they were
    with open(ark, "rb") as f:
        assert f.read(end) == prefix
    keys = ark_keys(ark)
    assert len(keys) == len(set(keys)) == N_UTTS and len(lines(os.path.join(out, "feats.scp"))) == N_UTTS
    assert f"{len(before)} already done" in res.stderr or f"({len(before)} already done)" in res.stderr

"""Independent shard jobs (``--shard i/N`` then ``--merge_only``), no-op reruns of finished dumps, and the
output locks, through the dump tools' entry points (the weight-free energy model and the MFCC teacher)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from stok.bin import dump_energy, dump_features
from stok.core.locks import FileLock, LockHeld
from stok.core.storage import load_codes
from tests.conftest import REPO, write_corpus


def run(scp, out, *extra):
    return dump_energy.main(["--wav_scp", scp, "--output_dir", out, "--num_workers", "0", *extra])


def outputs(out: str) -> dict:
    """name -> (size, mtime_ns, bytes) of every file in ``out``."""
    res = {}
    for n in sorted(os.listdir(out)):
        p = os.path.join(out, n)
        st = os.stat(p)
        res[n] = (st.st_size, st.st_mtime_ns, open(p, "rb").read())
    return res


@pytest.fixture
def corpus(tmp_path):
    durations = np.random.default_rng(3).uniform(0.3, 3.0, size=17)
    scp = write_corpus(str(tmp_path / "audio"), durations)
    with open(scp, "a") as f:  # one broken entry: every run lists it
        f.write(f"zz_missing {tmp_path / 'audio' / 'nowhere.wav'}\n")
    return scp


def test_shard_jobs_then_merge_equal_one_process(corpus, tmp_path):
    ref_out = str(tmp_path / "ref")
    ref = run(corpus, ref_out)
    out = str(tmp_path / "shards")
    first = run(corpus, out, "--shard", "1/3", "--batch_seconds", "4")
    assert first["rank"] == 1 and first["world"] == 3 and not os.path.exists(os.path.join(out, "energy.scp"))
    # merging before every shard finished is refused, naming the shards to run
    with pytest.raises(SystemExit, match=r"2 of 3 shards of energy .* \(0/3, 2/3\)"):
        run(corpus, out, "--merge_only")
    for i in (0, 2):
        run(corpus, out, "--shard", f"{i}/3")
    merged = run(corpus, out, "--merge_only")
    assert merged["world_size"] == 3 and merged["entries_in_scp"] == ref["entries_in_scp"] == 17
    got, want = dict(load_codes(os.path.join(out, "energy.scp"))), dict(load_codes(os.path.join(ref_out, "energy.scp")))
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
    for name in ("failed.list", "energy.fingerprint.json"):
        assert open(os.path.join(out, name)).read() == open(os.path.join(ref_out, name)).read(), name
    cut_ids = lambda d: [json.loads(l)["id"] for l in gzip.open(os.path.join(d, "cuts.jsonl.gz"), "rt")]  # noqa: E731
    assert cut_ids(out) == cut_ids(ref_out) == list(want)
    # a shard rerun after the merge: its part is done, nothing is written
    again = run(corpus, out, "--shard", "0/3")
    assert again["written"] == 0 and again["already_done"] > 0


def test_shard_and_merge_options_are_checked_before_anything(corpus, tmp_path):
    out = str(tmp_path / "o")
    for bad in (["--shard", "3/3"], ["--shard", "x"], ["--merge_only", "--overwrite"]):
        with pytest.raises(SystemExit, match="error: --"):
            run(corpus, out, *bad)
    with pytest.raises(SystemExit, match="holds no finished shard"):
        run(corpus, out, "--merge_only")
    assert not os.path.exists(out)


def test_a_finished_dump_reruns_without_reading_or_writing_anything(tmp_path):
    scp = write_corpus(str(tmp_path / "audio"), [0.5, 1.2, 2.0, 0.7])
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(open(scp).read())
    out = str(tmp_path / "feats")
    argv = ["--teacher", "mfcc", "--data_dir", str(data), "--output_dir", out, "--num_workers", "0"]
    first = dump_features.main(argv)
    assert not first.get("nothing_to_do") and os.path.exists(os.path.join(out, "feats.complete.json"))
    before = outputs(out)
    time.sleep(0.05)
    again = dump_features.main(argv)
    assert again["nothing_to_do"] and again["written_now"] == 0 and again["entries_in_scp"] == 4
    assert outputs(out) == before, "bytes and mtimes of every output are untouched"
    # a changed input is not 'finished': the dump runs its normal (resuming) path again
    (data / "wav.scp").write_text(open(scp).read() + "")
    os.utime(data / "wav.scp", ns=(time.time_ns(), time.time_ns() + 10**9))
    third = dump_features.main(argv)
    assert not third.get("nothing_to_do") and third["written_now"] == 0 and third["already_done"] == 4
    # an output touched by hand: the same
    os.utime(os.path.join(out, "feats.scp"), ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert not dump_features.main(argv).get("nothing_to_do")
    assert dump_features.main(argv)["nothing_to_do"]


def test_failures_are_retried_so_the_dump_is_never_finished_with_them(corpus, tmp_path):
    out = str(tmp_path / "o")
    s = run(corpus, out)
    assert s["failed"] == 1 and not os.path.exists(os.path.join(out, "energy.complete.json"))
    again = run(corpus, out)
    assert not again.get("nothing_to_do") and again["failed"] == 1 and again["written_now"] == 0


def test_shard_overwrite_keeps_the_other_shards(corpus, tmp_path):
    out = str(tmp_path / "o")
    for i in (0, 1):
        run(corpus, out, "--shard", f"{i}/2")
    other = open(os.path.join(out, "energy.1.ark"), "rb").read()
    run(corpus, out, "--shard", "0/2", "--overwrite")
    assert open(os.path.join(out, "energy.1.ark"), "rb").read() == other
    assert run(corpus, out, "--merge_only")["entries_in_scp"] == 17


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    path = str(tmp_path / "x.lock")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {REPO!r})
from stok.core.locks import FileLock
lock = FileLock({path!r}, "the test dump").acquire()
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=rf"the test dump is being written by another process: host "
                                           rf"{socket.gethostname()} pid {holder.pid} "):
            FileLock(path, "the test dump").acquire()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(path, "the test dump") as lock:  # the SIGKILLed holder's lock is stale: taken over
        assert lock.held and json.load(open(path))["pid"] == os.getpid()
    assert not os.path.exists(path)

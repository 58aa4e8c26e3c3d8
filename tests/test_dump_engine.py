"""The dump engine through its public entry point (``python -m stok.bin.dump_energy``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from stok.bin import dump_energy
from stok.core.bucketing import make_batches, padding_stats, shard
from stok.core.storage import load_codes
from tests.conftest import PYTHON, REPO, speechlike, write_corpus


def read_all(scp):
    return {k: v for k, v in load_codes(scp)}


def run(wav_scp, out, *extra):
    return dump_energy.main(["--wav_scp", wav_scp, "--output_dir", out, "--num_workers", "0", *extra])


def reference(wav_scp, out):
    """One utterance at a time: the ground truth every batched run must equal."""
    run(wav_scp, out, "--batch_size", "1")
    return read_all(os.path.join(out, "energy.scp"))


def test_make_batches_respects_budget_and_size():
    costs = [5, 100, 7, 99, 6, 98, 8]
    batches = make_batches(costs, max_cost=200, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(costs[i] for i in b) <= 200)
    unbucketed = make_batches(costs, max_cost=200, batch_size=3, bucketing=False)
    assert padding_stats(batches, costs)["padding_ratio"] < padding_stats(unbucketed, costs)["padding_ratio"]


def test_shard_gives_every_utterance_to_exactly_one_rank():
    durs = list(np.random.default_rng(0).uniform(1, 10, 37))
    for world in (1, 2, 3, 8):
        parts = [shard(durs, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(37))
    parts = [shard([None] * 10, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_batched_equals_one_at_a_time(mixed_corpus, tmp_path, workers):
    ref = reference(mixed_corpus, str(tmp_path / "ref"))
    out = str(tmp_path / "out")
    summary = dump_energy.main(["--wav_scp", mixed_corpus, "--output_dir", out, "--num_workers", workers,
                                "--batch_seconds", "8", "--text_output"])
    got = read_all(os.path.join(out, "energy.scp"))
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    assert summary["entries_in_scp"] == 24 and summary["failed"] == 0
    # bucketing keeps padding well below unbucketed batching on mixed lengths
    nb = dump_energy.main(["--wav_scp", mixed_corpus, "--output_dir", str(tmp_path / "nb"), "--num_workers", "0",
                           "--batch_seconds", "8", "--no_bucketing"])
    assert summary["padding_ratio"] < nb["padding_ratio"]
    # text output: Kaldi text form, keys sorted, same tokens
    lines = open(os.path.join(out, "energy.txt")).read().splitlines()
    assert [l.split()[0] for l in lines] == sorted(ref)
    first = lines[0].split()
    assert np.array_equal(np.array(first[1:], dtype=int), ref[first[0]])


def test_kaldi_dir_with_segments_and_pipes(tmp_path):
    audio = tmp_path / "a"
    audio.mkdir()
    x = speechlike(3.0, 8000)
    sf.write(audio / "rec1.wav", x, 8000)  # 8 kHz: resampled to 16 kHz
    sf.write(audio / "rec2.flac", np.stack([x, x], 1), 8000)  # stereo: averaged to mono
    kaldiio.save_ark(str(audio / "w.ark"), {"rec3": (8000, (x * 32767).astype(np.int16))}, scp=str(audio / "w.scp"),
                     write_function="soundfile")
    ark_spec = open(audio / "w.scp").read().split()[1]
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"rec1 {audio}/rec1.wav\nrec2 cat {audio}/rec2.flac |\nrec3 {ark_spec}\n")
    (data / "segments").write_text("u1 rec1 0.00 1.50\nu2 rec1 1.50 -1\nu3 rec2 0.5 2.5\nu4 rec3 1.0 2.0\n")
    out = str(tmp_path / "out")
    summary = dump_energy.main(["--data_dir", str(data), "--output_dir", out, "--num_workers", "0"])
    got = read_all(os.path.join(out, "energy.scp"))
    assert summary["failed"] == 0
    assert {k: len(v) for k, v in got.items()} == {"u1": 75, "u2": 75, "u3": 100, "u4": 50}
    # the same part read through the pipe and from the plain file gives the same tokens
    full = dump_energy.main(["--wav_scp", str(data / "wav.scp"), "--output_dir", str(tmp_path / "full"),
                             "--num_workers", "0"])
    whole = read_all(os.path.join(tmp_path, "full", "energy.scp"))
    assert full["failed"] == 0 and np.array_equal(whole["rec1"][:75], got["u1"])
    assert np.array_equal(whole["rec1"], whole["rec2"]) and np.array_equal(whole["rec1"][50:100], got["u4"])


def test_bad_inputs_are_listed_not_fatal(tmp_path, mixed_corpus):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "garbage.flac").write_bytes(os.urandom(2000))
    sf.write(bad / "full.wav", speechlike(2.0), 16000)
    blob = (bad / "full.wav").read_bytes()
    (bad / "trunc.wav").write_bytes(blob[: len(blob) // 2])
    sf.write(bad / "full.flac", speechlike(2.0), 16000)
    blob = (bad / "full.flac").read_bytes()
    (bad / "trunc.flac").write_bytes(blob[: len(blob) // 2])
    sf.write(bad / "short.wav", speechlike(0.005), 16000)
    entries = {"b_missing": str(bad / "nope.wav"), "b_empty": str(bad / "empty.wav"),
               "b_garbage": str(bad / "garbage.flac"), "b_trunc_wav": str(bad / "trunc.wav"),
               "b_trunc_flac": str(bad / "trunc.flac"), "b_short": str(bad / "short.wav"),
               "b_pipe": "false |"}
    scp = tmp_path / "wav.scp"
    scp.write_text(open(mixed_corpus).read() + "".join(f"{k} {v}\n" for k, v in entries.items()))
    out = str(tmp_path / "out")
    summary = run(str(scp), out, "--min_samples", "400")
    failed = dict(l.rstrip("\n").split("\t") for l in open(os.path.join(out, "failed.list")))
    assert set(failed) == set(entries)
    assert "not found" in failed["b_missing"] and "empty" in failed["b_empty"]
    assert "truncated" in failed["b_trunc_wav"] and "TooShort" in failed["b_short"]
    assert "exited with" in failed["b_pipe"]
    assert summary["failed"] == len(entries) and summary["entries_in_scp"] == 24
    with pytest.raises(SystemExit, match="failed"):
        run(str(scp), str(tmp_path / "strict"), "--min_samples", "400", "--strict")


def test_errors_before_work(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("a /x.wav\nlonely\n")
    with pytest.raises(SystemExit, match=r"wav.scp:2"):
        run(str(scp), str(tmp_path / "o"))
    with pytest.raises(SystemExit):
        dump_energy.main(["--wav_scp", str(scp), "--output_dir", str(tmp_path / "o"), "--bogus", "1"])
    with pytest.raises(SystemExit, match="not found"):
        run(str(tmp_path / "missing.scp"), str(tmp_path / "o"))


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def test_torchrun_two_processes_equals_one(mixed_corpus, tmp_path):
    ref = reference(mixed_corpus, str(tmp_path / "ref"))
    out = str(tmp_path / "dist")
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stok.bin.dump_energy",
           "--wav_scp", mixed_corpus, "--output_dir", out, "--num_workers", "0", "--batch_seconds", "6"]
    subprocess.run(cmd, check=True, env=_env(), cwd=REPO, timeout=300)
    got = read_all(os.path.join(out, "energy.scp"))
    assert list(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    assert os.path.exists(os.path.join(out, "energy.0.ark")) and os.path.exists(os.path.join(out, "energy.1.ark"))
    summary = json.load(open(os.path.join(out, "energy.summary.json")))
    assert summary["world_size"] == 2 and sum(r["written"] for r in summary["ranks"]) == 24
    assert all(r["written"] > 0 for r in summary["ranks"])
    # resuming the same dump with one process writes nothing new and keeps one entry per utterance
    again = run(mixed_corpus, out)
    assert again["written_now"] == 0 and again["entries_in_scp"] == 24


def test_resume_after_kill_and_torn_write(tmp_path):
    scp = write_corpus(str(tmp_path / "audio"), [0.4] * 300, fmt="wav")
    ref = reference(scp, str(tmp_path / "ref"))
    out = str(tmp_path / "out")
    cmd = [PYTHON, "-m", "stok.bin.dump_energy", "--wav_scp", scp, "--output_dir", out, "--num_workers", "0",
           "--batch_size", "1"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_scp = os.path.join(out, "energy.0.scp")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(shard_scp) and sum(1 for _ in open(shard_scp)) >= 20:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sum(1 for _ in open(shard_scp))
    assert 20 <= written < 300, "the run must be killed part way"
    # simulate a crash in the middle of a record: partial ark bytes and a torn scp line
    with open(os.path.join(out, "energy.0.ark"), "ab") as f:
        f.write(b"utt999 \x00BFM \x04\x05")
    with open(shard_scp, "a") as f:
        f.write("utt999 " + os.path.join(out, "energy.0.ark"))
    summary = run(scp, out)
    got = read_all(os.path.join(out, "energy.scp"))
    assert summary["already_done"] >= 20 and summary["written_now"] == 300 - summary["already_done"]
    lines = open(os.path.join(out, "energy.scp")).read().splitlines()
    assert len(lines) == 300 and len({l.split()[0] for l in lines}) == 300
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)

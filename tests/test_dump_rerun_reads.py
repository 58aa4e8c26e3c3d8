"""What a dump reads of its Kaldi dir (issue 20.2): a first run opens each table once; the rerun of a finished dump
opens none of them (not even wav.scp or segments) and leaves every output's bytes and mtime as they were.

Each run is the tool's own command line in a child process whose file opens are counted
(``bench/read_probe.py``, an audit hook), on a LibriSpeech-shaped dir: recordings cut by ``segments``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_corpus

TABLES = ("wav.scp", "segments", "utt2dur", "text", "utt2spk", "spk2utt")


def kaldi_dir(root: str) -> str:
    """Two recordings of 6 s and 5 s cut into five utterances by ``segments``, with every other table."""
    scp = write_corpus(os.path.join(root, "audio"), [6.0, 5.0], prefix="rec")
    recs = [line.split() for line in open(scp)]
    cuts = [(recs[0][0], 0.0, 2.5), (recs[0][0], 2.5, 6.0), (recs[1][0], 0.2, 1.4), (recs[1][0], 1.4, 3.9),
            (recs[1][0], 3.9, 5.0)]
    data = os.path.join(root, "data", "train")
    os.makedirs(data)
    utts = [f"spk{i % 2}-ch0-{i:04d}" for i in range(len(cuts))]
    order = sorted(range(len(cuts)), key=lambda i: utts[i])
    tables = {
        "wav.scp": [f"{r} {p}" for r, p in recs],
        "segments": [f"{utts[i]} {cuts[i][0]} {cuts[i][1]:.2f} {cuts[i][2]:.2f}" for i in order],
        "utt2dur": [f"{utts[i]} {cuts[i][2] - cuts[i][1]:.2f}" for i in order],
        "text": [f"{utts[i]} WORDS OF UTTERANCE {i}" for i in order],
        "utt2spk": [f"{utts[i]} {utts[i].split('-')[0]}" for i in order],
        "spk2utt": [f"spk{s} " + " ".join(u for u in sorted(utts) if u.startswith(f"spk{s}-")) for s in (0, 1)],
    }
    for name, lines in tables.items():
        with open(os.path.join(data, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return data


def probed_run(tmp: str, module: str, args, watch: str, tag: str):
    """Run ``python -m module args`` through the read probe; returns (completed process, {path: opens})."""
    counts = os.path.join(tmp, f"opens.{tag}.json")
    env = {**os.environ, "PYTHONPATH": REPO, "STOK_PROBE_WATCH": watch, "STOK_PROBE_OUT": counts}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "read_probe.py"), module, *args], env=env,
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(counts) as f:
        return proc, {os.path.basename(p): n for p, n in json.load(f).items()}


def outputs(out: str) -> dict:
    """name -> (size, mtime_ns, bytes) of every file in ``out``."""
    res = {}
    for n in sorted(os.listdir(out)):
        p = os.path.join(out, n)
        st = os.stat(p)
        with open(p, "rb") as f:
            res[n] = (st.st_size, st.st_mtime_ns, f.read())
    return res


@pytest.mark.parametrize("module,extra,name", [("stok.bin.dump_energy", [], "energy"),
                                               ("stok.bin.dump_features", ["--teacher", "mfcc"], "feats")])
def test_first_run_reads_each_table_once_a_finished_rerun_reads_and_writes_nothing(tmp_path, module, extra, name):
    data = kaldi_dir(str(tmp_path))
    out = str(tmp_path / "dump")
    args = [*extra, "--data_dir", data, "--output_dir", out, "--num_workers", "0", "--device", "cpu"]

    first, opens = probed_run(str(tmp_path), module, args, data, "first")
    assert os.path.isfile(os.path.join(out, f"{name}.complete.json")), first.stderr[-2000:]
    assert sum(1 for _ in open(os.path.join(out, f"{name}.scp"))) == 5
    # the Kaldi dir is read once per run: every table it uses opened exactly once (spk2utt: never needed)
    assert {t: opens.get(t, 0) for t in TABLES} == {**{t: 1 for t in TABLES}, "spk2utt": 0}

    before = outputs(out)
    again, opens = probed_run(str(tmp_path), module, args, data, "again")
    assert "nothing to do" in again.stderr
    assert {t: opens.get(t, 0) for t in TABLES} == {t: 0 for t in TABLES}, "a finished dump reads no table"
    assert outputs(out) == before, "bytes and mtimes of every output untouched, no file added or removed"

    # the same check still sees a changed input: the rerun then reads the dir (once) and resumes, writing nothing new
    with open(os.path.join(data, "text"), "a") as f:
        f.write("")
    os.utime(os.path.join(data, "text"), ns=(os.stat(data).st_mtime_ns, os.stat(data).st_mtime_ns + 10**9))
    third, opens = probed_run(str(tmp_path), module, args, data, "third")
    assert "nothing to do" not in third.stderr
    assert {t: opens.get(t, 0) for t in TABLES} == {**{t: 1 for t in TABLES}, "spk2utt": 0}
    with open(os.path.join(out, f"{name}.summary.json")) as f:
        summary = json.load(f)
    assert summary["written_now"] == 0 and summary["already_done"] == 5

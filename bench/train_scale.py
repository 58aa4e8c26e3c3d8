"""``stok-train`` at corpus scale: time to the first step and memory against the number of utterances.

For each size, a LibriSpeech-shaped corpus (:func:`bench.corpus.make_corpus`: a Kaldi dir with ``segments`` cutting
20 real audio files into utterances of 1-16 s, ``utt2dur``, ``text``, ``utt2spk``, and a teacher scp of 768-dim
features whose entries share a few records) is trained on for a few steps by a real ``python -m stok.bin.train``
child process (CPU, ``data.num_workers`` audio workers). A monitor samples the process tree every 50 ms:

- ``ready_s``: launch to the log line that says the data index is built (reading the Kaldi dir and teacher scp);
- ``index_MB``: the training index's bytes, as that line states them (``index_B_per_utt`` per utterance);
- ``first_step_s``: launch to the first line of ``train_log.jsonl`` (the first step done);
- ``ready_cpu_s``, ``first_step_cpu_s``: CPU seconds (user + system) the trainer and its workers had used by
  then: the same figures on a machine shared with other jobs, where wall times stretch (``load`` gives the 1-minute
  load average before and after the run);
- ``main_hwm_MB``: the trainer's peak resident memory (``VmHWM``);
- ``workers_private_MB``: peak private memory (USS: ``Private_Clean + Private_Dirty``) of each audio worker: what a
  worker holds beyond the pages it shares with the trainer (a copy of the index shows up here);
- the last line: ``main_hwm`` growth between the first and last size per added utterance.

    python bench/train_scale.py --root /work/scratch/corpus --sizes 2000,30000,281241 [--model tiny|released]
    python bench/train_scale.py ... --src /path/to/other/checkout     # the same runs with another checkout's stok

``--model tiny`` (default) isolates the data path: a small codec, batches of 6 one-second crops, the generator
step only (``disc.start_step`` after the run), so a step costs about a second on 2 cores; ``released`` trains the
recipe's released-size model (``recipes/librispeech/conf/train.yaml``). Figures depend on the CPU: give its ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.corpus import make_corpus  # noqa: E402


def _status(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def _private(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return 0
    return sum(int(m) * 1024 for m in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+) kB", text, re.M))


def _children(pid: int):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


def tiny_model_config(dim: int) -> dict:
    return {"model": dict(n_filters=4, dimension=32, semantic_dimension=dim, codebook_size=16, n_q=2, lstm_layers=1),
            "disc": dict(width=0.0625, mpd_periods=[2, 3], msd_scales=2, mstft_filters=4, mstft_n_ffts=[256, 128])}


def run_one(corpus, model: str, steps: int, workers: int, threads: int, tmp: str, src: str = REPO) -> dict:
    conf = os.path.join(tmp, "train.yaml")
    if model == "tiny":
        cfg = tiny_model_config(768)
        cfg["disc"]["start_step"] = 10**6
        cfg.update(data=dict(num_workers=workers, dev_max_utts=2, dev_seconds=2.0, segment_seconds=1.0,
                             batch_size=6),
                   sched=dict(valid_every=10**6, save_every=10**6, log_every=1))
        with open(conf, "w") as f:
            yaml.safe_dump(cfg, f)
    else:
        conf = os.path.join(REPO, "recipes", "librispeech", "conf", "train.yaml")
    exp = os.path.join(tmp, "exp")
    cmd = [sys.executable, "-m", "stok.bin.train", "--config", conf, "--data_dir", corpus.data_dir,
           "--teacher_scp", corpus.teacher_scp, "--dev_dir", corpus.dev_dir, "--dev_teacher_scp",
           corpus.dev_teacher_scp, "--exp_dir", exp, "--device", "cpu", "--threads", str(threads),
           "--max_steps", str(steps), "--num_workers", str(workers), "--quiet", "--no_export",
           "--set", "data.dev_max_utts=2", "--set", "sched.valid_every=1000000", "--set", "sched.save_every=1000000"]
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(threads)}
    load0 = _load()
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=src, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks = {}
    err_lines = []

    def read_stderr():
        for line in proc.stderr:
            err_lines.append(line)
            if "ready_s" not in marks and "batches per epoch" in line:
                marks["ready_s"] = time.time() - t0
                marks["ready_cpu_s"] = _cpu(proc.pid) + sum(_cpu(k) for k in _children(proc.pid))
                m = re.search(r"\(index ([0-9.]+) MB\)", line)
                if m:
                    marks["index_MB"] = float(m.group(1))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    log = os.path.join(exp, "train_log.jsonl")
    peak = {"main_hwm": 0, "workers_private": 0, "workers_hwm": 0, "n_workers": 0}
    while proc.poll() is None:
        if "first_step_s" not in marks and os.path.exists(log) and os.path.getsize(log) > 0:
            marks["first_step_s"] = time.time() - t0
            marks["first_step_cpu_s"] = _cpu(proc.pid) + sum(_cpu(k) for k in _children(proc.pid))
        peak["main_hwm"] = max(peak["main_hwm"], _status(proc.pid, "VmHWM"))
        kids = _children(proc.pid)
        peak["n_workers"] = max(peak["n_workers"], len(kids))
        for k in kids:
            peak["workers_private"] = max(peak["workers_private"], _private(k))
            peak["workers_hwm"] = max(peak["workers_hwm"], _status(k, "VmHWM"))
        time.sleep(0.05)
    reader.join(timeout=10)
    total = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stok-train failed ({proc.returncode}):\n{''.join(err_lines)[-4000:]}")
    return {"n_utts": corpus.n_utts, "hours": round(corpus.hours, 1), "model": model, "steps": steps,
            "ready_s": round(marks.get("ready_s", float("nan")), 2),
            "first_step_s": round(marks.get("first_step_s", float("nan")), 2), "total_s": round(total, 2),
            "ready_cpu_s": round(marks.get("ready_cpu_s", float("nan")), 2),
            "first_step_cpu_s": round(marks.get("first_step_cpu_s", float("nan")), 2),
            "load": [load0, _load()], "index_MB": marks.get("index_MB", float("nan")),
            "index_B_per_utt": round(marks.get("index_MB", float("nan")) * 2**20 / corpus.n_utts, 1),
            "main_hwm_MB": round(peak["main_hwm"] / 2**20, 1),
            "workers_private_MB": round(peak["workers_private"] / 2**20, 1),
            "workers_hwm_MB": round(peak["workers_hwm"] / 2**20, 1), "workers": peak["n_workers"]}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = re.search(r"model name\s*:\s*(.*)", text).group(1)
        flags = re.search(r"flags\s*:\s*(.*)", text).group(1).split()
        isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
        return f"{name} ({isa}, {os.cpu_count()} cores)"
    except (OSError, AttributeError):
        return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="where the corpora are built (reused when present)")
    p.add_argument("--sizes", default="30000,281241", help="utterance counts, comma-separated")
    p.add_argument("--model", choices=("tiny", "released"), default="tiny")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--src", default=REPO, help="checkout whose stok is trained (default: this one)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        corpus = make_corpus(os.path.join(args.root, f"c{n}"), n)
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_one(corpus, args.model, args.steps, args.workers, args.threads, tmp,
                                os.path.abspath(args.src)))
        print(json.dumps(rows[-1]), flush=True)
    print(f"CPU: {cpu_name()}; stok from {os.path.abspath(args.src)}")
    print(f"{'utts':>8s} {'hours':>6s} {'ready s':>8s} {'1st step s':>10s} {'(cpu s)':>8s} {'main MB':>8s} "
          f"{'worker priv MB':>14s} {'index MB':>9s} {'index B/utt':>11s} {'load':>10s}")
    for r in rows:
        print(f"{r['n_utts']:8d} {r['hours']:6.0f} {r['ready_s']:8.2f} {r['first_step_s']:10.2f} "
              f"{r['first_step_cpu_s']:8.2f} {r['main_hwm_MB']:8.0f} {r['workers_private_MB']:14.0f} "
              f"{r['index_MB']:9.1f} {r['index_B_per_utt']:11.1f} {r['load'][0]:4.1f}-{r['load'][1]:<4.1f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per = (b["main_hwm_MB"] - a["main_hwm_MB"]) * 2**20 / max(1, b["n_utts"] - a["n_utts"])
        print(f"trainer memory per added utterance: {per:.0f} bytes "
              f"({a['n_utts']} -> {b['n_utts']} utterances)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

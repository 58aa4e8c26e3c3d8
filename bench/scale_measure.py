"""What ``bench/scale.py`` measures with: a child command's wall time, CPU seconds and peak RSS; the CPU and its
ISA; the exclusive/shared CPU lock around rows; subsets of a Kaldi dir; output stats (did a rerun touch anything)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import subprocess
import threading
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_isa() -> str:
    """The CPU model and its widest vector ISA (with the AI extensions it has), from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    extra = [f for f in ("avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, {isa}" + (f" ({', '.join(extra)})" if extra else "")


class Lock:
    """``--lock``: exclusive around timed rows, shared around preparation; a no-op without a path."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT) if path else None

    @contextlib.contextmanager
    def hold(self, exclusive: bool):
        if self.fd is None:
            yield
            return
        fcntl.flock(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def measure(cmd: List[str], log_path: str, env: Optional[dict] = None) -> dict:
    """Run ``cmd`` (cwd: the repo) with its output in ``log_path``: wall seconds, exit status, peak RSS of its
    largest process and of its whole tree (sampled), CPU seconds (user + system, the processes it waited for
    included: on a shared machine the measure that does not depend on the load)."""
    env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    tree_peak = [0]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                tree_peak[0] = max(tree_peak[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}; the end of {log_path}:\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024,
            "tree_rss": tree_peak[0], "command": " ".join(cmd)}


def subset_dir(full: str, out: str, n: int) -> str:
    """The first ``n`` utterances (by key) of Kaldi dir ``full`` as a data dir of their own (built once)."""
    if os.path.isfile(os.path.join(out, "spk2utt")):
        return out
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(full, "segments")) as f:
        seg = [next(f) for _ in range(n)]
    utts = {line.split(maxsplit=1)[0] for line in seg}
    recs = {line.split()[1] for line in seg}
    with open(os.path.join(out, "segments"), "w") as f:
        f.writelines(seg)
    for name, keep in (("wav.scp", recs), ("utt2dur", utts), ("text", utts), ("utt2spk", utts)):
        with open(os.path.join(full, name)) as src, open(os.path.join(out, name), "w") as dst:
            dst.writelines(line for line in src if line.split(maxsplit=1)[0] in keep)
    by_spk: Dict[str, List[str]] = {}
    with open(os.path.join(out, "utt2spk")) as f:
        for line in f:
            u, s = line.split()
            by_spk.setdefault(s, []).append(u)
    with open(os.path.join(out, "spk2utt"), "w") as f:
        f.writelines(f"{s} {' '.join(us)}\n" for s, us in sorted(by_spk.items(), key=lambda kv: kv[0].encode()))
    return out


def audio_seconds(data_dir: str) -> float:
    with open(os.path.join(data_dir, "utt2dur")) as f:
        return sum(float(line.split()[1]) for line in f)


def output_stats(out: str) -> Dict[str, tuple]:
    return {n: (os.stat(os.path.join(out, n)).st_size, os.stat(os.path.join(out, n)).st_mtime_ns)
            for n in sorted(os.listdir(out))}

"""Peak memory of every dump tool and ``stok-decode`` on one long file against one 60 s file.

    python bench/long_input_rss.py [--seconds 60,3600] [--tools energy,codes,decode,s3,mfcc,hubert,kmeans]
                                   [--rate 16000] [--channels 1] [--workdir DIR] [--kill_above_gb 16]

Each tool runs as its own process (``python -m stok.bin.<tool> ... --device cpu``, default options otherwise:
two audio readers, threads on CPU or DataLoader worker processes) on a data dir holding one speech-like file of
each length (written here, block by block, as 16-bit PCM WAV at ``--rate`` Hz with ``--channels`` channels).
Models at released size with random weights, written here in their real formats: SpeechTokenizer
(``config.json`` + ``SpeechTokenizer.pt``), S3Tokenizer v2 25 Hz (stok checkpoint), HuBERT base (torchaudio state
dict, ``--layer avg``), and for ``stok-kmeans dump --from_audio`` 500 random centroids over the HuBERT features.
``decode`` decodes the codes that ``codes`` wrote for the same file (random codes of the right length when
``codes`` is not run).

Memory is sampled every 50 ms over the tool's whole process tree (the tool and any worker processes): the
printed peak is the largest sum of the processes' PSS (proportional set size: a page shared by forked processes
is counted once, as the memory cgroup does), ``main`` the tool process's own VmHWM (its exact peak RSS). The
table gives both per tool and length, and the difference long - 60 s. ``--kill_above_gb`` stops a tool whose
tree passes that much (a run of the code before the fix on a long file would take the machine down); the row
then says "killed". Run it under ``flock /tmp/stok-cpu.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.conftest import speechlike  # noqa: E402

TOOLS = ("energy", "codes", "decode", "s3", "mfcc", "hubert", "kmeans")
GB = 1024 ** 3


# --------------------------------------------------------------------------------------------- process tree memory
def _children() -> Dict[int, List[int]]:
    out: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def _tree(pid: int) -> List[int]:
    kids = _children()
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(kids.get(p, []))
    return seen


def _field_kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMonitor(threading.Thread):
    """Samples the PSS sum of a process tree and the root's VmHWM until the root exits."""

    def __init__(self, proc: subprocess.Popen, kill_above: float):
        super().__init__(daemon=True)
        self.proc, self.kill_above = proc, kill_above
        self.peak_pss, self.main_hwm, self.killed, self.max_procs = 0, 0, False, 0

    def run(self) -> None:
        while self.proc.poll() is None:
            pids = _tree(self.proc.pid)
            pss = sum(_field_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) * 1024
            self.main_hwm = max(self.main_hwm, _field_kb(f"/proc/{self.proc.pid}/status", "VmHWM:") * 1024)
            self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, len(pids))
            if self.kill_above and pss > self.kill_above and not self.killed:
                self.killed = True
                for p in reversed(pids):
                    try:
                        os.kill(p, 9)
                    except OSError:
                        pass
            time.sleep(0.05)


def measure(cmd: List[str], kill_above: float, log_path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        mon = TreeMonitor(proc, kill_above)
        mon.start()
        rc = proc.wait()
        mon.join()
    return {"rc": rc, "killed": mon.killed, "peak_pss": mon.peak_pss, "main_hwm": mon.main_hwm,
            "wall": time.time() - start, "processes": mon.max_procs}


# --------------------------------------------------------------------------------------------- inputs and models
def write_long_wav(path: str, seconds: float, rate: int, channels: int) -> None:
    """Speech-like audio written a minute at a time (the bench itself stays small)."""
    if os.path.isfile(path) and abs(sf.info(path).duration - seconds) < 1e-3:
        return
    with sf.SoundFile(path + ".tmp", "w", rate, channels, subtype="PCM_16", format="WAV") as f:
        done, block = 0.0, 0
        while done < seconds:
            step = min(60.0, seconds - done)
            x = speechlike(step, rate, seed=block)
            f.write(np.stack([x * (0.9 ** c) for c in range(channels)], 1))
            done += step
            block += 1
    os.replace(path + ".tmp", path)


def data_dir(work: str, seconds: float, rate: int, channels: int) -> str:
    d = os.path.join(work, f"data_{seconds:g}s_{rate}_{channels}ch")
    os.makedirs(d, exist_ok=True)
    wav = os.path.join(d, "long.wav")
    write_long_wav(wav, seconds, rate, channels)
    with open(os.path.join(d, "wav.scp"), "w") as f:
        f.write(f"long {wav}\n")
    with open(os.path.join(d, "utt2dur"), "w") as f:
        f.write(f"long {seconds:.3f}\n")
    return d


def models(work: str, tools: List[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    torch.manual_seed(0)
    if {"codes", "decode"} & set(tools):
        from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig
        from stok.models.speechtokenizer.checkpoint import save_released

        out["st"] = os.path.join(work, "st_released")
        if not os.path.isfile(os.path.join(out["st"], "SpeechTokenizer.pt")):
            save_released(SpeechTokenizer(SpeechTokenizerConfig()), out["st"])
    if "s3" in tools:
        from stok.models.s3.checkpoint import save_checkpoint
        from stok.models.s3.config import full_config
        from stok.models.s3.model import build_model

        out["s3"] = os.path.join(work, "s3_v2_25hz.pt")
        if not os.path.isfile(out["s3"]):
            save_checkpoint(build_model(full_config("v2_25hz"), seed=0), out["s3"])
    if {"hubert", "kmeans"} & set(tools):
        import torchaudio

        out["hubert"] = os.path.join(work, "hubert_base_state_dict.pt")
        if not os.path.isfile(out["hubert"]):
            torch.save(torchaudio.models.hubert_base().state_dict(), out["hubert"])
    if "kmeans" in tools:
        from stok.models.kmeans.model import KMeansModel

        out["km"] = os.path.join(work, "km500_hubert_base.npz")
        if not os.path.isfile(out["km"]):
            KMeansModel(np.random.default_rng(0).standard_normal((500, 768)).astype(np.float32)).save(out["km"])
    return out


def random_codes(path_dir: str, seconds: float) -> str:
    """A codes scp with one record of random codes for ``seconds`` of 16 kHz audio (decode without encode)."""
    import kaldiio

    os.makedirs(path_dir, exist_ok=True)
    frames = int(np.ceil(seconds * 16000 / 320))
    codes = np.random.default_rng(0).integers(0, 1024, (frames, 8)).astype(np.float32)
    scp = os.path.join(path_dir, "st_codes.scp")
    with kaldiio.WriteHelper(f"ark,scp:{os.path.join(path_dir, 'st_codes.0.ark')},{scp}") as w:
        w("long", codes)
    return scp


def command(tool: str, data: str, out: str, m: Dict[str, str], codes_scp: Optional[str]) -> List[str]:
    py = [sys.executable, "-m"]
    dump = ["--data_dir", data, "--output_dir", out, "--device", "cpu", "--overwrite"]
    if tool == "energy":
        return py + ["stok.bin.dump_energy"] + dump
    if tool == "codes":
        return py + ["stok.bin.dump_codes", "--model_dir", m["st"]] + dump
    if tool == "decode":
        return py + ["stok.bin.decode", "--model_dir", m["st"], "--codes_scp", codes_scp, "--output_dir", out,
                     "--device", "cpu", "--overwrite"]
    if tool == "s3":
        return py + ["stok.bin.dump_s3", "--model", m["s3"]] + dump
    if tool == "mfcc":
        return py + ["stok.bin.dump_features", "--teacher", "mfcc"] + dump
    if tool == "hubert":
        return py + ["stok.bin.dump_features", "--teacher", "hubert", "--checkpoint", m["hubert"]] + dump
    if tool == "kmeans":
        return py + ["stok.bin.kmeans", "dump", "--from_audio", "--km_model", m["km"], "--teacher", "hubert",
                     "--checkpoint", m["hubert"]] + dump
    raise ValueError(tool)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", default="60,3600", help="comma-separated file lengths; the first is the baseline")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {','.join(TOOLS)}")
    p.add_argument("--rate", type=int, default=16000, help="sample rate of the input files")
    p.add_argument("--channels", type=int, default=1, help="channels of the input files")
    p.add_argument("--workdir", default="", help="models, inputs and outputs (default: a temp dir; reused if given)")
    p.add_argument("--kill_above_gb", type=float, default=16.0, help="stop a tool whose tree passes this (0: never)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    tools = args.tools.split(",")
    if set(tools) - set(TOOLS):
        p.error(f"--tools takes {','.join(TOOLS)}")
    lengths = [float(s) for s in args.seconds.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="long_input_rss_")
    os.makedirs(work, exist_ok=True)
    m = models(work, tools)
    print(f"work dir {work}; inputs: one file of {', '.join(f'{s:g}' for s in lengths)} s, {args.rate} Hz, "
          f"{args.channels} channel(s); {os.cpu_count()} cores", flush=True)
    results: Dict[str, Dict[float, dict]] = {}
    for seconds in lengths:
        data = data_dir(work, seconds, args.rate, args.channels)
        for tool in tools:
            out = os.path.join(work, f"out_{tool}_{seconds:g}s_{args.rate}_{args.channels}ch")
            codes_scp = None
            if tool == "decode":
                codes_out = os.path.join(work, f"out_codes_{seconds:g}s_{args.rate}_{args.channels}ch")
                codes_scp = os.path.join(codes_out, "st_codes.scp")
                if "codes" not in tools or not os.path.isfile(codes_scp):
                    codes_scp = random_codes(os.path.join(work, f"random_codes_{seconds:g}s"), seconds)
            r = measure(command(tool, data, out, m, codes_scp), args.kill_above_gb * GB, out + ".log")
            results.setdefault(tool, {})[seconds] = r
            state = "killed" if r["killed"] else ("ok" if r["rc"] == 0 else f"exit {r['rc']}")
            print(f"{tool:7s} {seconds:7g} s: peak tree PSS {r['peak_pss'] / GB:6.2f} GB, main VmHWM "
                  f"{r['main_hwm'] / GB:6.2f} GB, {r['wall']:7.1f} s wall, {r['processes']} processes, {state}",
                  flush=True)
    base = lengths[0]
    print(f"\n| tool | " + " | ".join(f"{s:g} s: tree PSS / main HWM (GB)" for s in lengths)
          + " | " + " | ".join(f"{s:g} s - {base:g} s (GB)" for s in lengths[1:]) + " |")
    print("|---" * (1 + 2 * len(lengths) - 1) + "|")
    for tool in tools:
        row = results[tool]
        cells = [("killed" if row[s]["killed"] else f"{row[s]['peak_pss'] / GB:.2f} / {row[s]['main_hwm'] / GB:.2f}")
                 for s in lengths]
        diffs = [f"{(row[s]['peak_pss'] - row[base]['peak_pss']) / GB:+.2f}" if not row[s]["killed"] else "-"
                 for s in lengths[1:]]
        print(f"| {tool} | " + " | ".join(cells + diffs) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({t: {str(s): r for s, r in v.items()} for t, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()

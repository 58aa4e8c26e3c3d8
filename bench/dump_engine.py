"""Dump-engine overhead: utterances/s with a trivial model (quantised frame energy), and padding.

Compares, on one synthetic mixed-length set (1-20 s, shuffled keys) in one run:
  (a) baseline: a plain loop, one utterance at a time (soundfile read, encode, kaldiio WriteHelper);
  (b) the engine without bucketing (key order, same batch limits);
  (c) the engine with bucketing.
Prints throughput, the ratios against (a), and the padding ratio of (b) and (c).

    python bench/dump_engine.py [--num_utts 400] [--num_workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import kaldiio
import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stok.bin import dump_energy  # noqa: E402
from stok.models.energy import EnergyTokens  # noqa: E402


def make_set(root: str, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        dur = rng.uniform(1.0, 20.0)
        path = os.path.join(root, f"u{i:05d}.flac")
        sf.write(path, (0.1 * rng.standard_normal(int(dur * 16000))).astype(np.float32), 16000)
        lines.append(f"{rng.integers(1 << 30):010d}_{i:05d} {path}")
    scp = os.path.join(root, "wav.scp")
    with open(scp, "w") as f:
        f.write("\n".join(sorted(lines)) + "\n")
    return scp


def baseline(scp: str, out: str) -> float:
    model = EnergyTokens()
    t = time.perf_counter()
    with kaldiio.WriteHelper(f"ark,scp:{out}/b.ark,{out}/b.scp") as w:
        for line in open(scp):
            key, path = line.split()
            x, _ = sf.read(path, dtype="float32")
            wav = torch.from_numpy(x)[None]
            w(key, model.encode(wav, torch.tensor([wav.shape[1]]))[0])
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_utts", type=int, default=400)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="100 utterances")
    args = p.parse_args()
    n = 100 if args.quick else args.num_utts
    with tempfile.TemporaryDirectory() as tmp:
        scp = make_set(tmp, n)
        hours = sum(sf.info(l.split()[1]).duration for l in open(scp)) / 3600
        t_a = baseline(scp, tmp)
        results = {}
        for label, extra in (("no bucketing", ["--no_bucketing"]), ("bucketing", [])):
            t = time.perf_counter()
            s = dump_energy.main(["--wav_scp", scp, "--output_dir", os.path.join(tmp, label.replace(" ", "_")),
                                  "--num_workers", str(args.num_workers), "--batch_size", "32",
                                  "--batch_seconds", "320", *extra])
            results[label] = (time.perf_counter() - t, s["padding_ratio"])
    print(f"\n{n} utterances, {hours:.2f} h of audio, {args.num_workers} workers")
    print(f"(a) one at a time   : {n / t_a:8.1f} utt/s")
    for label, (t, pad) in results.items():
        print(f"engine, {label:<12}: {n / t:8.1f} utt/s  ratio vs (a) {t_a / t:5.2f}  padding {100 * pad:5.1f}%")


if __name__ == "__main__":
    main()

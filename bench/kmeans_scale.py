"""``python bench/kmeans.py --scale``: k-means in memory vs streamed from an on-disk sample vs faiss-cpu, each fit
in its own child process (see bench/kmeans.py's docstring for what is measured)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

from stok.models.kmeans import Assigner, fit_kmeans
from stok.models.kmeans.memory import DEFAULT_BUDGET, GiB, peak_rss, plan_memory
from stok.models.kmeans.fit import default_seed_frames, default_warmup_frames
from stok.models.kmeans.sample_file import DiskFrames, npy_header

BLOCK = 65536  # frames generated per block (each block its own seeded generator)


def latent(dim: int, seed: int, n_phones: int = 50, n_contexts: int = 20):
    """The cluster structure of bench/kmeans.py's ``make_data`` (the same centres and weights for the same seed;
    the spreads are drawn next, where ``make_data`` draws its labels first)."""
    from bench.kmeans import clusters

    rng = np.random.default_rng(seed)
    sub, w = clusters(rng, dim, n_phones, n_contexts)
    sigma = rng.uniform(0.35, 0.7, size=sub.shape[0]).astype(np.float32)
    return sub, w, sigma


def block_frames(lat, b: int, rows: int, seed: int) -> np.ndarray:
    sub, w, sigma = lat
    rng = np.random.default_rng([seed, 1, b])
    lab = rng.choice(len(sub), size=rows, p=w)
    x = sub[lab]
    x += sigma[lab, None] * rng.standard_normal((rows, sub.shape[1]), dtype=np.float32)
    return x


def write_npy(path: str, n: int, dim: int, seed: int, dtypes=("<f4",)) -> float:
    """Write the first ``n`` frames to ``path`` (one file per dtype: ``path % dtype``); returns seconds."""
    if all(os.path.exists(path % np.dtype(d).name) for d in dtypes):
        return 0.0
    t = time.perf_counter()
    lat = latent(dim, seed)
    files = {d: open(path % np.dtype(d).name + ".tmp", "wb") for d in dtypes}
    for d, f in files.items():
        f.write(npy_header(n, dim, np.dtype(d)))
    for b in range(-(-n // BLOCK)):
        x = block_frames(lat, b, min(BLOCK, n - b * BLOCK), seed)
        for d, f in files.items():
            f.write(x.astype(d).tobytes())
    for d, f in files.items():
        f.close()
        os.replace(path % np.dtype(d).name + ".tmp", path % np.dtype(d).name)
    return time.perf_counter() - t


def write_scp(root: str, n: int, dim: int, seed: int, utt_frames: int = 615, distinct: int = 0) -> float:
    """A Kaldi feature ark/scp of the same frames as ``write_npy`` (utterances of ``utt_frames``, LibriSpeech's
    mean 12.3 s at 50 Hz), stored as stage 1's ``--feature_storage compressed16`` does (two-byte compressed
    matrices, ``CM2``); returns seconds. ``distinct`` > 0: only the utterances holding the first ``distinct``
    frames are stored, and the scp's later utterances point at those records again in turn (a corpus-sized scp,
    e.g. LibriSpeech's 173 M HuBERT frames, over an ark that fits the disk; every key is its own utterance)."""
    import kaldiio

    t = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    lat, rest = latent(dim, seed), np.zeros((0, dim), np.float32)
    stored = min(n, distinct) if distinct else n
    scp = os.path.join(root, "feats.scp")
    utt = 0
    with kaldiio.WriteHelper(f"ark,scp:{os.path.join(root, 'feats.ark')},{scp}", compression_method=3) as w:
        for b in range(-(-stored // BLOCK)):
            x = np.concatenate([rest, block_frames(lat, b, min(BLOCK, stored - b * BLOCK), seed)])
            full = len(x) // utt_frames * utt_frames if b < -(-stored // BLOCK) - 1 else len(x)
            for s in range(0, full, utt_frames):
                w(f"utt{utt:07d}", x[s:s + utt_frames])
                utt += 1
            rest = x[full:]
            if b % 32 == 0:
                print(f"  {b * BLOCK + len(x) - len(rest)} frames written", flush=True)
    if stored < n:  # later utterances reuse the stored records (the last, shorter one only at the very end)
        with open(scp) as f:
            specs = [line.split(None, 1)[1].strip() for line in f]
        whole = specs[:-1] if stored % utt_frames else specs
        frames, more = stored, 0
        with open(scp + ".tmp", "w") as f:
            for i, spec in enumerate(specs):
                f.write(f"utt{i:09d} {spec}\n")
            i = len(specs)
            while frames + utt_frames <= n:
                f.write(f"utt{i:09d} {whole[more % len(whole)]}\n")
                frames, more, i = frames + utt_frames, more + 1, i + 1
        os.replace(scp + ".tmp", scp)
        print(f"  {i} utterances, {frames} frames in the scp ({stored} stored)", flush=True)
    return time.perf_counter() - t


def child(spec: dict) -> None:
    """One fit in this process; prints one JSON line (fit seconds, passes, VmHWM) and saves the centroids."""
    k, seed = spec["k"], spec["seed"]
    t_load = time.perf_counter()
    if spec["mode"] in ("memory", "faiss"):
        x = np.load(spec["data"])
        src = x
    else:
        src = DiskFrames(spec["data"])
    t_load = time.perf_counter() - t_load
    t = time.perf_counter()
    if spec["mode"] == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False,
                          max_points_per_centroid=math.ceil(len(x) / k) + 1)
        km.train(x)
        centroids, detail = km.centroids, {"iterations": 20}
    else:
        res = fit_kmeans(src, k, seed=seed, block_rows=spec["block_rows"])
        centroids = res.centroids
        detail = {"seed": res.seconds.get("seed", 0), "warmup_passes": res.n_iter_warmup, "passes": res.n_iter,
                  "full_seconds": res.seconds.get("full", 0), "inertia_own": res.inertia,
                  "recomputed": [round(h["recomputed"], 3) for h in res.history if h["phase"] == "full"]}
    seconds = time.perf_counter() - t
    np.save(spec["out"], centroids)
    print(json.dumps({"seconds": seconds, "load_seconds": t_load, "vmhwm": peak_rss(), **detail}), flush=True)


# A child's ru_maxrss includes what its parent held when it was forked (counted until exec): a small launcher
# starts each fit and reports the fit process's own peak.
LAUNCHER = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss * 1024))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_child(spec: dict) -> dict:
    report = spec["out"] + ".peak"
    r = subprocess.run([sys.executable, "-c", LAUNCHER, report, sys.executable, os.path.abspath(sys.argv[0]),
                        "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"child {spec['mode']} failed ({r.returncode})")
    with open(report) as f:
        peak = int(f.read())
    os.remove(report)
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "peak_rss": peak}


def mean_inertia_file(path: str, centroids: np.ndarray) -> float:
    a = Assigner(centroids)
    frames, total = DiskFrames(path), 0.0
    for _, blk in frames.blocks(1 << 16):
        _, d = a(blk.numpy(), return_dist=True)
        total += float(d.astype(np.float64).sum())
    return total / frames.n


def scale_main() -> None:
    p = argparse.ArgumentParser(description="k-means beyond memory (bench/kmeans.py --scale)")
    p.add_argument("--scale", action="store_true")
    p.add_argument("--child")
    p.add_argument("--workdir", default="/tmp/stok-kmeans-bench")
    p.add_argument("--scale_n", type=int, default=2_000_000)
    p.add_argument("--big_n", type=int, default=10_000_000, help="0: no streamed row beyond memory")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="memory,disk16,disk32,faiss")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the in-memory and float16 fits (the others: the first)")
    p.add_argument("--keep", action="store_true", help="keep the data files in --workdir")
    p.add_argument("--json_out")
    p.add_argument("--write_scp", help="only write a synthetic feature scp of --scale_n frames (CM2) into this dir")
    p.add_argument("--distinct_frames", type=int, default=0,
                   help="with --write_scp: store only this many frames, later utterances reuse their records "
                        "(0: all distinct)")
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.write_scp:
        dt = write_scp(args.write_scp, args.scale_n, args.dim, args.seed, distinct=args.distinct_frames)
        return print(f"{args.scale_n} x {args.dim} frames -> {args.write_scp}/feats.scp in {dt:.0f} s")
    from bench.kmeans import cpu_isa

    os.makedirs(args.workdir, exist_ok=True)
    n, d, k = args.scale_n, args.dim, args.k
    print(f"machine: {cpu_isa()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    base = os.path.join(args.workdir, f"x{n}.%s.npy")
    dt = write_npy(base, n, d, args.seed, ("<f4", "<f2"))
    print(f"data: {n} x {d} (float32 {n * d * 4 / GiB:.2f} GiB, float16 {n * d * 2 / GiB:.2f} GiB), k={k}; "
          f"written in {dt:.0f} s", flush=True)
    sub = max(default_seed_frames(k), default_warmup_frames(k))
    plan = plan_memory(n, d, k, sub, DEFAULT_BUDGET, "disk", base=GiB // 2)
    files = {"memory": base % "float32", "faiss": base % "float32", "disk32": base % "float32",
             "disk16": base % "float16"}
    names = {"memory": "in memory (float32)", "disk16": "streamed from disk, float16",
             "disk32": "streamed from disk, float32", "faiss": "faiss-cpu Kmeans, 20 it."}
    rows = {}
    seeds = [int(v) for v in args.seeds.split(",")]
    for mode in args.modes.split(","):
        for seed in (seeds if mode in ("memory", "disk16") else seeds[:1]):
            spec = {"mode": mode, "data": files[mode], "k": k, "seed": seed, "block_rows": plan.block_rows,
                    "out": os.path.join(args.workdir, f"{mode}.{seed}.centroids.npy")}
            r = run_child(spec)
            r["inertia"] = mean_inertia_file(base % "float32", np.load(spec["out"]))
            rows[(mode, seed)] = r
            print(f"  {names[mode]:<32} seed {seed}: {r['seconds']:7.1f} s  peak RSS {r['peak_rss'] / GiB:5.2f} GiB  "
                  f"inertia {r['inertia']:.4f}  "
                  f"{json.dumps({x: y for x, y in r.items() if x not in ('seconds', 'peak_rss', 'inertia', 'vmhwm')})}",
                  flush=True)
    big = None
    if args.big_n:
        path = os.path.join(args.workdir, f"x{args.big_n}.%s.npy")
        dt = write_npy(path, args.big_n, d, args.seed, ("<f2",))
        print(f"data: {args.big_n} x {d} float16 ({args.big_n * d * 2 / GiB:.1f} GiB on disk, "
              f"{args.big_n * d * 4 / GiB:.1f} GiB as float32); written in {dt:.0f} s", flush=True)
        bplan = plan_memory(args.big_n, d, k, sub, DEFAULT_BUDGET, "disk", base=GiB // 2)
        big = run_child({"mode": "disk16", "data": path % "float16", "k": k, "seed": args.seed,
                         "block_rows": bplan.block_rows, "out": os.path.join(args.workdir, "big.centroids.npy")})
        big["inertia_2m"] = mean_inertia_file(base % "float32", np.load(os.path.join(args.workdir,
                                                                                   "big.centroids.npy")))
        if not args.keep:
            os.remove(path % "float16")

    print(f"\nk-means beyond memory, {cpu_isa()}, {os.cpu_count()} cores; every row its own child process; "
          f"inertia of every model on the same {n} x {d} float32 frames:")
    print(f"  {'fit (k=%d)' % k:<44} {'seed':>4} {'seconds':>8} {'peak RSS':>10} {'inertia':>10}")
    for (mode, seed), r in rows.items():
        print(f"  {names[mode] + f', {n / 1e6:g} M x {d}':<44} {seed:4d} {r['seconds']:8.1f} "
              f"{r['peak_rss'] / GiB:6.2f} GiB {r['inertia']:10.4f}")
    if big:
        print(f"  {f'streamed from disk, float16, {args.big_n / 1e6:g} M x {d}':<44} {seeds[0]:4d} "
              f"{big['seconds']:8.1f} {big['peak_rss'] / GiB:6.2f} GiB {big['inertia_2m']:10.4f}   "
              f"({big['warmup_passes']} warm-up + {big['passes']} passes; its own inertia {big['inertia_own']:.4f})")
    checks = []

    def ratio(a, b, what, op, target, seed_list=seeds[:1]):
        """a / b for each seed (a run with one seed only stands for every seed); the worst against the target."""
        def row(mode, sd):
            return rows.get((mode, sd)) or rows.get((mode, seeds[0]))

        vals = [row(a, sd)[what] / row(b, sd)[what] for sd in seed_list if row(a, sd) and row(b, sd)]
        if vals:
            worst = max(vals) if op == "<=" else min(vals)
            checks.append((f"{what} {names[a]} / {names[b]}" + (f" (worst of seeds {seed_list})"
                                                                 if len(vals) > 1 else ""), worst, op, target))

    ratio("disk16", "memory", "inertia", "<=", 1.005, seeds)
    ratio("disk32", "memory", "inertia", "<=", 1.005)
    ratio("disk16", "faiss", "inertia", "<=", 1.0, seeds)
    ratio("faiss", "disk16", "seconds", ">=", 1.5, seeds)
    ratio("memory", "disk16", "seconds", "", None, seeds)
    for name, v, op, target in checks:
        ok = "" if target is None else (" met" if (v <= target if op == "<=" else v >= target) else " NOT met")
        print(f"  {name}: {v:.4f}" + ("" if target is None else f" (target {op} {target}:{ok})"))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"n": n, "dim": d, "k": k, "isa": cpu_isa(), "big": big,
                       "rows": [{"mode": m, "seed": sd, **r} for (m, sd), r in rows.items()]}, f, indent=2)
    if not args.keep:
        for dt in ("float32", "float16"):
            os.remove(base % dt)

"""k-means: stok's fit (greedy k-means++ on a subsample + Lloyd with bounds, torch) vs scikit-learn's
MiniBatchKMeans with fairseq's settings (``examples/hubert/simple_kmeans/learn_kmeans.py``), and label assignment.

Data: 200,000 x 768 float32 frames shaped like speech features: 50 "phone" centres (N(0, 1) per dim), each with
20 "context" sub-centres (+ N(0, 0.6^2)), i.e. 1000 latent clusters for k=500 (k-means has to merge them, so the
seeding matters), Zipf-like cluster sizes (weights ~ 1/rank^0.7), per-cluster noise 0.35-0.7.

Measured in one run, on the same data:
  (a) ours: ``stok.models.kmeans.fit_kmeans`` with its defaults (what ``stok-kmeans learn`` runs), twice
      (the spread shows how noisy the machine is);
  (b) scikit-learn MiniBatchKMeans, fairseq's settings: init k-means++, max_iter 100, batch_size 10000, tol 0,
      max_no_improvement 100, reassignment_ratio 0, and n_init from ``--sklearn_n_init`` (fairseq uses 20;
      the default here measures 1: fairseq's 20 spends ~20x the seeding time and ended no better in earlier
      measurements; pass ``--sklearn_n_init 1,20`` to measure both). Nothing is extrapolated: every printed time
      was measured;
  (c) optionally (``--with_faiss``) faiss-cpu Kmeans with its default random init.
Inertia: mean squared distance of *all* frames to the nearest centroid, computed by the same function for every
model (float32 distances, float64 sums). Then label assignment of ``--assign_frames`` frames (default
1,000,000; the 200k frames five times) with ``stok.models.kmeans.Assigner`` and, as a reference, faiss IndexFlatL2.

    python bench/kmeans.py [--quick] [--sklearn_n_init 1[,20]] [--with_faiss] [--json_out results.json]

``--scale``: k-means beyond memory. The same generator, written block by block (the first 2 M frames of the
10 M set are the 2 M set) to ``--workdir`` as .npy files: float32 and float16 [2 M, 768], float16 [10 M, 768].
Each fit runs alone in a child process (its peak RSS from the kernel, ``wait4``), k = 500, seed 0:
  in memory: ``fit_kmeans`` on the float32 frames loaded into memory (what ``learn`` does when the fit fits);
  streamed, float16 / float32: ``fit_kmeans`` on the on-disk file (``sample_file.DiskFrames``: what ``learn``
  does past ``--memory_gb``), same block size as the in-memory fit;
  faiss-cpu ``Kmeans`` (niter 20, max_points_per_centroid large enough to use every frame, its random init);
  streamed float16 on the 10 M set (does not fit in memory here: 30.7 GB of float32).
Every model's inertia is measured on the same 2 M float32 frames by the same function; times are fit times
(data already written or loaded). Targets (issue 20): streamed inertia <= 1.005 x in-memory and <= faiss, faiss
time >= 1.5 x streamed time.

    python bench/kmeans.py --scale --workdir /work/scratch/kmeans/bench [--scale_n 2000000] [--big_n 10000000]

``--write_scp DIR``: only a synthetic feature scp (CM2 records, as stage 1's compressed16 storage) of ``--scale_n``
frames in utterances of 615 frames; ``--distinct_frames M`` stores only M frames and lets later utterances reuse
those records, so LibriSpeech's HuBERT-sized stage 1 (173 M frames, 281,301 utterances) takes 3 GB of disk, and
``stok-kmeans learn`` runs on it as run.sh does (the 10% sample: 17.3 M x 768):

    python bench/kmeans.py --scale --write_scp /work/scratch/kmeans/ls --scale_n 173000000 --distinct_frames 2000000
    /usr/bin/time -v stok-kmeans learn --feats_scp /work/scratch/kmeans/ls/feats.scp --n_clusters 500 \
        --percent 0.1 --output /work/scratch/kmeans/exp/km500.npz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stok.models.kmeans import Assigner, fit_kmeans  # noqa: E402


def clusters(rng: np.random.Generator, dim: int, n_phones: int = 50, n_contexts: int = 20):
    """(centres [n_phones * n_contexts, dim], Zipf-like weights) of the synthetic speech-like frames: phones,
    each in a few contexts, drawn from ``rng``."""
    phones = rng.standard_normal((n_phones, dim)).astype(np.float32)
    sub = phones.repeat(n_contexts, 0) + 0.6 * rng.standard_normal((n_phones * n_contexts, dim)).astype(np.float32)
    w = 1.0 / np.arange(1, sub.shape[0] + 1) ** 0.7
    return sub, rng.permutation(w / w.sum())


def make_data(n: int, dim: int, n_phones: int = 50, n_contexts: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sub, w = clusters(rng, dim, n_phones, n_contexts)
    m = sub.shape[0]
    lab = rng.choice(m, size=n, p=w)
    sigma = rng.uniform(0.35, 0.7, size=m).astype(np.float32)
    x = sub[lab]
    x += sigma[lab, None] * rng.standard_normal((n, dim), dtype=np.float32)
    return x


def mean_inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    _, d = Assigner(centroids)(x, return_dist=True)
    return float(d.astype(np.float64).mean())


def cpu_isa() -> str:
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown ISA"
    if "avx512f" in flags:
        extra = [f for f in ("avx512_bf16", "avx512_vnni") if f in flags]
        return "AVX-512" + (f" ({', '.join(extra)})" if extra else "")
    return "AVX2" if "avx2" in flags else "pre-AVX2"


def main() -> None:
    if "--scale" in sys.argv or "--child" in sys.argv:
        from bench.kmeans_scale import scale_main

        return scale_main()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sklearn_n_init", default="1", help="comma-separated n_init values to measure (fairseq: 20)")
    p.add_argument("--no_sklearn", action="store_true")
    p.add_argument("--with_faiss", action="store_true", help="also faiss.Kmeans (random init, 25 iterations)")
    p.add_argument("--repeats", type=int, default=2, help="runs of ours (seeds seed, seed+1, ...)")
    p.add_argument("--assign_frames", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="50,000 x 768, k=100, 200,000 frames assigned, one run of ours")
    p.add_argument("--json_out")
    args = p.parse_args()
    if args.quick:
        args.n, args.k, args.assign_frames, args.repeats = 50_000, 100, 200_000, 1
    n_inits = [] if args.no_sklearn else [int(v) for v in args.sklearn_n_init.split(",") if v]

    print(f"machine: {platform.processor() or platform.machine()} {cpu_isa()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    t = time.perf_counter()
    x = make_data(args.n, args.dim, seed=args.seed)
    print(f"data: {args.n} x {args.dim} float32, k={args.k} ({time.perf_counter() - t:.1f} s to generate)", flush=True)

    rows, centroids = [], None
    for r in range(args.repeats):
        t = time.perf_counter()
        res = fit_kmeans(x, args.k, seed=args.seed + r)
        dt = time.perf_counter() - t
        inertia = mean_inertia(x, res.centroids)
        centroids = res.centroids if centroids is None else centroids
        rows.append({"method": f"ours (seed {args.seed + r})", "seconds": dt, "inertia": inertia,
                     "detail": f"seeding {res.seconds.get('seed', 0):.1f} s, warm-up {res.n_iter_warmup} passes "
                               f"{res.seconds.get('warmup', 0):.1f} s, {res.n_iter} full passes "
                               f"{res.seconds.get('full', 0):.1f} s"})
        print(f"  {rows[-1]['method']}: {dt:.1f} s, inertia {inertia:.3f}  [{rows[-1]['detail']}]", flush=True)

    for n_init in n_inits:
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=args.k, init="k-means++", max_iter=100, batch_size=10000, tol=0.0,
                             max_no_improvement=100, n_init=n_init, reassignment_ratio=0.0,
                             random_state=args.seed, compute_labels=False)
        t = time.perf_counter()
        km.fit(x)
        dt = time.perf_counter() - t
        inertia = mean_inertia(x, km.cluster_centers_.astype(np.float32))
        rows.append({"method": f"scikit-learn MiniBatchKMeans n_init={n_init}", "seconds": dt, "inertia": inertia,
                     "detail": f"fairseq settings, {km.n_steps_} mini-batch steps", "sklearn_n_init": n_init})
        print(f"  {rows[-1]['method']}: {dt:.1f} s, inertia {inertia:.3f}  [{rows[-1]['detail']}]", flush=True)

    if args.with_faiss:
        import faiss

        t = time.perf_counter()
        fk = faiss.Kmeans(args.dim, args.k, niter=25, seed=args.seed, verbose=False)
        fk.train(x)
        dt = time.perf_counter() - t
        inertia = mean_inertia(x, fk.centroids)
        rows.append({"method": "faiss Kmeans (random init, 25 it.)", "seconds": dt, "inertia": inertia,
                     "detail": "faiss defaults (subsamples to 256 points per centroid)"})
        print(f"  {rows[-1]['method']}: {dt:.1f} s, inertia {inertia:.3f}", flush=True)

    ours = [r for r in rows if r["method"].startswith("ours")]
    print("\nfit, " + f"{args.n} x {args.dim}, k={args.k} (every number measured in this run):")
    print(f"  {'method':<42} {'seconds':>8} {'inertia':>10}")
    for r in rows:
        print(f"  {r['method']:<42} {r['seconds']:8.1f} {r['inertia']:10.3f}")
    if ours:
        slowest = max(r["seconds"] for r in ours)
        worst = max(r["inertia"] for r in ours)
        for r in rows:
            if "sklearn_n_init" in r:
                speed, ratio = r["seconds"] / slowest, worst / r["inertia"]
                ok = speed >= 5 and ratio <= 1.01
                print(f"  vs {r['method']}: {speed:.1f}x faster (slowest of ours), inertia ratio {ratio:.4f} "
                      f"(worst of ours) -> target >= 5x at <= 1.01: {'met' if ok else 'NOT met'}")

    print(f"\nlabel assignment of {args.assign_frames} frames (k={args.k}, dim {args.dim}):", flush=True)
    if centroids is None:
        centroids = x[np.random.default_rng(0).choice(len(x), args.k, replace=False)]
    a = Assigner(centroids)
    blocks = [(i, min(len(x), args.assign_frames - i)) for i in range(0, args.assign_frames, len(x))]
    t = time.perf_counter()
    for _, m in blocks:
        a(x[:m])
    dt_ours = time.perf_counter() - t
    print(f"  ours (torch, {torch.get_num_threads()} threads): {dt_ours:.1f} s, "
          f"{args.assign_frames / dt_ours:,.0f} frames/s", flush=True)
    assign = {"frames": args.assign_frames, "ours_seconds": dt_ours}
    try:
        import faiss

        index = faiss.IndexFlatL2(args.dim)
        index.add(np.ascontiguousarray(centroids))
        t = time.perf_counter()
        for _, m in blocks:
            _, lab = index.search(x[:m], 1)
        dt_f = time.perf_counter() - t
        same = float((a(x[:20000]) == index.search(x[:20000], 1)[1][:, 0]).mean())
        print(f"  faiss IndexFlatL2 search: {dt_f:.1f} s, {args.assign_frames / dt_f:,.0f} frames/s "
              f"(labels equal ours on {100 * same:.2f}% of a 20,000-frame check)")
        assign.update(faiss_seconds=dt_f, agreement=same)
    except ImportError:
        pass
    print(f"load average {os.getloadavg()[0]:.2f} at the end (the CPU may be shared: compare only numbers of one run)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"n": args.n, "dim": args.dim, "k": args.k, "fit": rows, "assign": assign,
                       "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()

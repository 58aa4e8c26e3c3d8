"""Fast k-means: greedy k-means++ seeding on a subsample, then Lloyd iterations, in torch (CPU or GPU).

Why this shape (measured on 200,000 x 768 clustered frames, k=500; see ``bench/kmeans.py``):

- **Seeding decides the result.** Plain k-means++ (one candidate per step) or random seeding ends clearly
  worse after Lloyd than *greedy* k-means++ (scikit-learn's: ``2 + ln k`` candidates drawn by D^2 sampling per
  step, the one that lowers the potential most is kept): mean inertia 311 vs 279 on the benchmark data, and
  more Lloyd passes do not recover the difference.
  Greedy seeding costs ``k`` sequential steps over the seeding set, so it runs on a random subsample
  (``seed_frames``, default ``max(30000, 40 k)``; scikit-learn's MiniBatchKMeans also seeds on 3 x batch_size =
  30,000 frames), each step one ``[m, D] x [D, trials]`` product and a few vector operations.
- **Lloyd iterations** (:mod:`~stok.models.kmeans.lloyd`) are one ``[chunk, D] x [D, k]`` product per chunk
  (distances from precomputed centroid norms), a min, and a scatter-add of the chunk into the new sums
  (float32 per block, float64 overall). A warm-up runs on a subsample (``warmup_frames``, default
  ``max(20000, 100 k)``, until the inertia improves by less than ``warmup_tol`` = 10 ``tol``) while the
  centroids still move a lot, then passes over every given frame run until the inertia improves by less than
  ``tol`` (relative) or ``max_iter`` passes are done.
- Passes after the first skip the frames that cannot have changed cluster (Hamerly's bounds): late passes,
  where few frames move, cost a fraction of a full one.
- Empty clusters are re-seeded with the frames farthest from their centroids.
- The frames may stay on disk (an on-disk sample, ``sample_file.DiskFrames``): the seeding and warm-up
  subsample is read once (a bounded in-memory set), and every full pass streams the file block by block,
  reading only blocks that hold a frame the bounds cannot settle. Memory then no longer holds the sample:
  12 bytes a frame plus a fixed working set (``memory.py``).

Everything is deterministic for a given ``seed`` on one device (the random draws come from CPU generators),
and the same frames give the same centroids in memory or on disk (float32) for the same ``block_rows``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from stok.models.kmeans import lloyd as lloyd_mod
from stok.models.kmeans.lloyd import Lloyd, TensorFrames, update_centroids

log = logging.getLogger("stok.kmeans")


def default_seed_frames(k: int) -> int:
    return max(30000, 40 * k)


def default_warmup_frames(k: int) -> int:
    return max(20000, 100 * k)


def chunk_rows(k: int, device: torch.device) -> int:
    """Rows per distance block: about 32 MB of distances on CPU, 512 MB on GPU."""
    budget = (1 << 27) if device.type == "cuda" else (1 << 23)
    return max(256, budget // max(1, k))


@dataclass
class KMeansResult:
    centroids: np.ndarray  # float32 [k, D]
    inertia: float  # mean squared distance per frame at the last pass over all frames (before its update)
    counts: np.ndarray  # frames per cluster at that pass
    n_iter_warmup: int
    n_iter: int
    converged: bool
    history: List[Dict] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    settings: Dict = field(default_factory=dict)


@torch.no_grad()
def kmeans_pp_seed(S: torch.Tensor, k: int, generator: torch.Generator,
                   n_local_trials: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ on the rows of ``S`` ([m, D]); returns the indices (int64 [k], on CPU) of the seeds.

    Same algorithm as scikit-learn's ``kmeans_plusplus``: each step draws ``n_local_trials`` candidates with
    probability proportional to the squared distance to the nearest seed so far, and keeps the candidate that
    lowers the total potential most. ``generator`` is a CPU generator (determinism across devices).
    """
    m = S.shape[0]
    if k > m:
        raise ValueError(f"cannot seed {k} clusters from {m} frames")
    trials = n_local_trials or (2 + int(math.log(k)))
    dev = S.device
    ss = (S * S).sum(1)
    idx = torch.empty(k, dtype=torch.long)
    first = int(torch.randint(m, (1,), generator=generator))
    idx[0] = first
    closest = (ss - 2 * (S @ S[first]) + ss[first]).clamp_(min=0)
    dist = torch.empty(m, trials, device=dev, dtype=S.dtype)
    for j in range(1, k):
        cum = torch.cumsum(closest, 0, dtype=torch.float64)
        total = float(cum[-1])
        r = torch.rand(trials, generator=generator, dtype=torch.float64)
        if total <= 0.0:  # every frame coincides with a seed already: take a frame not chosen yet
            rest = torch.ones(m, dtype=torch.bool)
            rest[idx[:j]] = False
            free = rest.nonzero().squeeze(1)
            idx[j] = int(free[int(float(r[0]) * len(free))])
            continue
        cand = torch.searchsorted(cum, (r * total).to(dev)).clamp_(max=m - 1)
        torch.addmm(ss[cand][None], S, S[cand].T, beta=1, alpha=-2, out=dist)
        dist.add_(ss[:, None]).clamp_(min=0)
        torch.minimum(dist, closest[:, None], out=dist)
        best = int(dist.sum(0, dtype=torch.float64).argmin())
        closest = dist[:, best].contiguous()
        idx[j] = int(cand[best])
    return idx


def _finite(frames: TensorFrames, rows: int) -> bool:
    return all(bool(torch.isfinite(blk).all()) for _, blk in frames.blocks(rows))


def _subsample(n: int, size: int, g: torch.Generator) -> np.ndarray:
    """The first ``size`` frame indices of a random permutation of all ``n`` drawn from ``g`` (the seeding set is
    a prefix of the warm-up set): the same draws, and so the same centroids, as stok's in-memory fit before the
    on-disk sample. The permutation is 8 bytes a frame for a moment, freed before a pass allocates its
    12 bytes a frame."""
    perm = torch.randperm(n, generator=g)
    return perm[:max(size, 0)].numpy().copy()


def _bars(total_what: str, total: int):
    return tqdm(total=total, desc=f"k-means {total_what}", unit="frame" if total_what == "pass" else "block",
                unit_scale=True, mininterval=5, disable=None, leave=False)


@torch.no_grad()
def fit_kmeans(X, n_clusters: int, *, seed: int = 0,
               seed_frames: Optional[int] = None, n_local_trials: Optional[int] = None,
               warmup_frames: Optional[int] = None, warmup_iters: int = 30, max_iter: int = 50,
               tol: float = 1e-4, device: Union[str, torch.device] = "cpu", prune: bool = True,
               seed_threads: int = 1, warmup_tol: Optional[float] = None,
               init_centroids: Optional[np.ndarray] = None, block_rows: int = 0) -> KMeansResult:
    """Fit k-means to the rows of ``X``; see the module docstring for the method.

    ``X``: float32 ``[N, D]`` (numpy or torch), or an on-disk sample (``sample_file.DiskFrames``), whose
    blocks are read once per pass (memory: 12 bytes a frame plus a fixed working set, ``memory.py``).
    ``tol``: a phase stops when a pass lowers the mean inertia by less than ``tol`` times itself.
    ``warmup_frames=0`` or ``warmup_iters=0`` skips the warm-up; ``init_centroids`` skips the seeding;
    ``prune=False`` recomputes every distance in every pass (plain Lloyd; same result, slower).
    ``seed_threads``: torch CPU threads during the seeding (0: unchanged). Its ``k`` steps are many small
    operations; with several threads each one waits for the slowest thread, which on a shared or busy CPU made
    the seeding 4-5x *slower* than one thread (measured: 7 s with one thread, 28-36 s with two).
    ``block_rows``: frames a full pass takes at a time (0: 64 MB of float32 rows); the same value gives the
    same result for the same frames in memory or on disk.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    warmup_tol = 10 * tol if warmup_tol is None else warmup_tol
    if hasattr(X, "blocks"):
        frames, storage = X, f"disk {X.dtype.name}"
    else:
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)) if isinstance(X, np.ndarray) \
            else X.float().contiguous()
        if Xt.ndim != 2:
            raise ValueError(f"k-means input must be [N, D], got shape {tuple(Xt.shape)}")
        if device.type == "cuda":  # keep the data on the GPU when it fits comfortably, else stream chunks
            free, _ = torch.cuda.mem_get_info(device)
            if Xt.numel() * 4 < 0.5 * free:
                Xt = Xt.to(device)
            elif not Xt.is_pinned():
                Xt = Xt.pin_memory()
        frames, storage = TensorFrames(Xt), "memory"
    n, d = frames.n, frames.dim
    k = int(n_clusters)
    if k < 1:
        raise ValueError("n_clusters must be >= 1")
    if n < k:
        raise ValueError(f"only {n} frames for {k} clusters: sample more frames (--percent/--max_frames) "
                         "or ask for fewer clusters")
    block_rows = block_rows or max(1, (64 << 20) // (4 * d))
    if storage == "memory" and not _finite(frames, block_rows):
        raise ValueError("k-means input holds non-finite values (NaN/inf)")
    g = torch.Generator().manual_seed(int(seed))
    history: List[Dict] = []
    seconds: Dict[str, float] = {}

    m = min(n, max(k, seed_frames or default_seed_frames(k)))
    w = min(n, warmup_frames if warmup_frames is not None else default_warmup_frames(k))
    warm = warmup_iters > 0 and k <= w <= n // 2
    ts = time.perf_counter()
    sub = frames.rows(_subsample(n, max(0 if init_centroids is not None else m, w if warm else 0), g))
    sub = sub.to(device)
    if storage != "memory" and not bool(torch.isfinite(sub).all()):
        raise ValueError("k-means input holds non-finite values (NaN/inf)")
    seconds["subsample"] = time.perf_counter() - ts
    if init_centroids is not None:
        C = torch.as_tensor(np.asarray(init_centroids, dtype=np.float32), device=device).clone()
        if tuple(C.shape) != (k, d):
            raise ValueError(f"init_centroids must be [{k}, {d}], got {tuple(C.shape)}")
    else:
        ts = time.perf_counter()
        threads = torch.get_num_threads()
        if device.type == "cpu" and seed_threads:
            torch.set_num_threads(seed_threads)
        try:
            C = sub[kmeans_pp_seed(sub[:m], k, g, n_local_trials).to(device)].clone()
        finally:
            torch.set_num_threads(threads)
        seconds["seed"] = time.perf_counter() - ts
        log.info("k-means++ seeding (greedy, %d trials) of %d clusters on %d frames: %.1f s",
                 n_local_trials or 2 + int(math.log(k)), k, m, seconds["seed"])

    def phase(name: str, source, iters: int, C: torch.Tensor, tol: float, bars=None):
        lloyd = Lloyd(source, device, k, prune, block_rows, bars)
        prev, it, converged, last, C_prev = None, 0, False, None, None
        tp = time.perf_counter()
        while it < iters:
            ti = time.perf_counter()
            sums, counts, inertia = lloyd.run(C, C_prev)
            C_prev = C
            C, n_empty = update_centroids(C, sums, counts, lloyd)
            it += 1
            last = (inertia, counts)
            history.append({"phase": name, "iter": it, "frames": int(source.n), "inertia": inertia,
                            "empty": n_empty, "recomputed": lloyd.recomputed[-1],
                            "seconds": time.perf_counter() - ti})
            log.info("%s pass %d on %d frames: inertia %.4f, %.0f%% of frames recomputed%s (%.1f s)", name, it,
                     source.n, inertia, 100 * lloyd.recomputed[-1],
                     f", {n_empty} empty clusters re-seeded" if n_empty else "", history[-1]["seconds"])
            if prev is not None and n_empty == 0 and prev - inertia <= tol * abs(inertia):
                converged = True
                break
            prev = inertia
        seconds[name] = time.perf_counter() - tp
        return C, it, converged, last

    n_warm = 0
    if warm:
        C, n_warm, _, _ = phase("warmup", TensorFrames(sub[:w]), warmup_iters, C, warmup_tol)
    del sub
    C, n_full, converged, last = phase("full", frames, max(1, max_iter), C, tol,
                                       _bars if storage != "memory" or n >= 1_000_000 else None)
    seconds["total"] = time.perf_counter() - t0
    settings = {"n_clusters": k, "seed": int(seed), "seed_frames": m if init_centroids is None else 0,
                "n_local_trials": n_local_trials or 2 + int(math.log(k)), "warmup_frames": w if n_warm else 0,
                "warmup_iters": warmup_iters, "max_iter": max_iter, "tol": tol, "device": str(device),
                "prune": prune and k * d >= lloyd_mod.PRUNE_MIN_WORK,
                "seed_threads": seed_threads, "storage": storage, "block_rows": block_rows,
                "frames": int(n), "dim": int(d)}
    return KMeansResult(centroids=C.float().cpu().numpy(), inertia=last[0], counts=last[1].cpu().numpy(),
                        n_iter_warmup=n_warm, n_iter=n_full, converged=converged, history=history,
                        seconds=seconds, settings=settings)

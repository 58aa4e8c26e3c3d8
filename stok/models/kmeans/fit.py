"""Fast k-means: greedy k-means++ seeding on a subsample, then Lloyd iterations, in torch (CPU or GPU).

Why this shape (measured on 200,000 x 768 clustered frames, k=500; see ``bench/kmeans.py``):

- **Seeding decides the result.** Plain k-means++ (one candidate per step) or random seeding ends clearly
  worse after Lloyd than *greedy* k-means++ (scikit-learn's: ``2 + ln k`` candidates drawn by D^2 sampling per
  step, the one that lowers the potential most is kept): mean inertia 311 vs 279 on the benchmark data, and
  more Lloyd passes do not recover the difference.
  Greedy seeding costs ``k`` sequential steps over the seeding set, so it runs on a random subsample
  (``seed_frames``, default ``max(30000, 40 k)``; scikit-learn's MiniBatchKMeans also seeds on 3 x batch_size =
  30,000 frames), each step one ``[m, D] x [D, trials]`` product and a few vector operations.
- **Lloyd iterations** are one ``[chunk, D] x [D, k]`` product per chunk (distances from precomputed
  centroid norms), a min, and a scatter-add of the chunk into the new sums (float32 per block, float64 overall).
  A warm-up runs on a subsample (``warmup_frames``, default ``max(20000, 100 k)``, until the inertia improves
  by less than ``warmup_tol`` = 10 ``tol``) while the centroids still move a lot, then passes over every given
  frame run until the inertia improves by less than ``tol`` (relative) or ``max_iter`` passes are done.
- Passes after the first skip the frames that cannot have changed cluster (Hamerly's bounds, see
  :class:`_Lloyd`): late passes, where few frames move, cost a fraction of a full one.
- Empty clusters are re-seeded with the frames farthest from their centroids.

Everything is deterministic for a given ``seed`` on one device (the random draws come from a CPU generator).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
import torch

log = logging.getLogger("stok.kmeans")


PRUNE_MIN_WORK = 16384  # k x D below which Lloyd passes do not use the bounds


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


class _Lloyd:
    """Lloyd passes over the rows of ``X``: assignment to the nearest centroid and the new sums and counts.

    With ``prune`` (Hamerly's bounds), a pass after the first one recomputes only the frames whose assignment
    may have changed: each frame keeps an upper bound on the distance to its centroid and a lower bound on the
    distance to every other one; the bounds move by how far the centroids moved, and a frame whose upper bound
    stays under its lower bound keeps its label without any distance computation. Sums and counts are then
    updated by the frames that changed cluster only, and the inertia of the assignment comes from the sums:
    ``sum |x|^2 - 2 sum_j c_j . S_j + sum_j n_j |c_j|^2``. Same result as plain Lloyd up to float32 near-ties.
    """

    def __init__(self, X: torch.Tensor, device: torch.device, k: int, prune: bool = True):
        # bounds pay off when a distance row (k x D multiply-adds) costs much more than the gathers they need;
        # with MFCC-sized work (k=100, D=39) a bounded pass took 0.4 s against 0.2 s for a plain one
        prune = prune and k * X.shape[1] >= PRUNE_MIN_WORK
        self.X, self.device, self.k, self.prune = X, device, k, prune
        self.chunk = chunk_rows(k, device)
        self.lab = None
        self.recomputed: List[float] = []

    def _top2(self, xb: torch.Tensor, C: torch.Tensor, cc: torch.Tensor):
        dist = torch.addmm(cc[None], xb, C.T, alpha=-2)
        xx = (xb * xb).sum(1)
        d1, lab = dist.min(1)
        if self.prune:
            dist.scatter_(1, lab[:, None], float("inf"))
            d2 = dist.min(1).values.add_(xx).clamp_(min=0).sqrt_()
        else:
            d2 = None
        return lab, d1.add_(xx).clamp_(min=0), d2, xx

    @torch.no_grad()
    def run(self, C: torch.Tensor, C_prev: Optional[torch.Tensor] = None):
        """One pass with centroids ``C``; returns (sums float64 [k, D], counts [k], far-score per frame, inertia)."""
        if self.prune and self.lab is not None and C_prev is not None:
            out = self._pruned(C, C_prev)
            if out is not None:
                return out
        X, dev, k = self.X, self.device, self.k
        n, d = X.shape
        cc = (C * C).sum(1)
        sums64 = torch.zeros(k, d, dtype=torch.float64, device=dev)
        sums32 = torch.zeros(k, d, dtype=torch.float32, device=dev)
        counts = torch.zeros(k, dtype=torch.long, device=dev)
        mind_all = torch.empty(n, dtype=torch.float32, device=dev)
        if self.prune:
            self.lab = torch.empty(n, dtype=torch.long, device=dev)
            self.ub = torch.empty(n, dtype=torch.float32, device=dev)
            self.lb = torch.empty(n, dtype=torch.float32, device=dev)
        total = torch.zeros((), dtype=torch.float64, device=dev)
        xx_total = torch.zeros((), dtype=torch.float64, device=dev)
        pending = 0
        for s in range(0, n, self.chunk):
            xb = X[s:s + self.chunk].to(dev, non_blocking=True)
            lab, mind, d2, xx = self._top2(xb, C, cc)
            e = s + len(xb)
            mind_all[s:e] = mind
            total += mind.sum(dtype=torch.float64)
            xx_total += xx.sum(dtype=torch.float64)
            if self.prune:
                self.lab[s:e], self.ub[s:e], self.lb[s:e] = lab, mind.sqrt(), d2
            sums32.index_add_(0, lab, xb)
            counts += torch.bincount(lab, minlength=k)
            pending += len(xb)
            if pending >= (1 << 18):  # float32 partial sums over at most 262,144 frames
                sums64 += sums32
                sums32.zero_()
                pending = 0
        sums64 += sums32
        self.xx_total = xx_total
        if self.prune:
            self.sums, self.counts = sums64, counts
        self.recomputed.append(1.0)
        return sums64.clone(), counts.clone(), mind_all, float(total) / max(1, n)

    @torch.no_grad()
    def _pruned(self, C: torch.Tensor, C_prev: torch.Tensor):
        X, dev = self.X, self.device
        n = X.shape[0]
        drift = (C - C_prev).norm(dim=1)
        self.ub += drift[self.lab]
        # the lower bound covers every other centroid: it moves by the largest drift among those
        top = torch.topk(drift, min(2, len(drift))).values
        if len(top) == 2:
            self.lb -= torch.where(self.lab == int(drift.argmax()), top[1], top[0])
        else:
            self.lb -= top[0]
        need = (self.ub >= self.lb * (1 - 1e-5)).nonzero().squeeze(1)
        if len(need) > 0.6 * n:  # most frames may move: a plain pass (no gathers) is cheaper, and resets the bounds
            return None
        cc = (C * C).sum(1)
        sums, counts = self.sums, self.counts
        recomputed = 0
        for s in range(0, len(need), self.chunk):
            idx = need[s:s + self.chunk]
            xb = X[idx.to(X.device)].to(dev, non_blocking=True)
            own = self.lab[idx]
            d_own = (xb - C[own]).square_().sum(1).sqrt_()  # tighten the upper bound first
            self.ub[idx] = d_own
            still = d_own >= self.lb[idx] * (1 - 1e-5)
            idx, xb, own = idx[still], xb[still], own[still]
            if not len(idx):
                continue
            recomputed += len(idx)
            lab, mind, d2, _ = self._top2(xb, C, cc)
            self.ub[idx], self.lb[idx] = mind.sqrt(), d2
            moved = lab != own
            if bool(moved.any()):
                xm = xb[moved].double()
                sums.index_add_(0, lab[moved], xm)
                sums.index_add_(0, own[moved], xm, alpha=-1)
                counts += torch.bincount(lab[moved], minlength=self.k) - torch.bincount(own[moved], minlength=self.k)
                self.lab[idx] = lab
        self.recomputed.append(recomputed / max(1, n))
        Cd = C.double()
        total = float(self.xx_total - 2 * (Cd * sums).sum() + (counts.double() * (Cd * Cd).sum(1)).sum())
        # frames farthest from their centroids (for re-seeding empty clusters): the upper bounds
        return sums.clone(), counts.clone(), self.ub.square(), max(0.0, total) / max(1, n)


def _update(C: torch.Tensor, sums64: torch.Tensor, counts: torch.Tensor, mind: torch.Tensor,
            X: torch.Tensor) -> tuple:
    """New centroids = means; empty clusters get the frames farthest from their centroids."""
    new = (sums64 / counts.clamp(min=1)[:, None]).to(C.dtype)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        far = torch.topk(mind, min(len(empty), len(mind))).indices
        new[empty[: len(far)]] = X[far.to(X.device)].to(C.device, C.dtype)
    return new, int(len(empty))


@torch.no_grad()
def fit_kmeans(X: Union[np.ndarray, torch.Tensor], n_clusters: int, *, seed: int = 0,
               seed_frames: Optional[int] = None, n_local_trials: Optional[int] = None,
               warmup_frames: Optional[int] = None, warmup_iters: int = 30, max_iter: int = 50,
               tol: float = 1e-4, device: Union[str, torch.device] = "cpu", prune: bool = True,
               seed_threads: int = 1, warmup_tol: Optional[float] = None,
               init_centroids: Optional[np.ndarray] = None) -> KMeansResult:
    """Fit k-means to the rows of ``X`` (float32 [N, D]); see the module docstring for the method.

    ``tol``: a phase stops when a pass lowers the mean inertia by less than ``tol`` times itself.
    ``warmup_frames=0`` or ``warmup_iters=0`` skips the warm-up; ``init_centroids`` skips the seeding;
    ``prune=False`` recomputes every distance in every pass (plain Lloyd; same result, slower).
    ``seed_threads``: torch CPU threads during the seeding (0: unchanged). Its ``k`` steps are many small
    operations; with several threads each one waits for the slowest thread, which on a shared or busy CPU made
    the seeding 4-5x *slower* than one thread (measured: 7 s with one thread, 28-36 s with two).
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    warmup_tol = 10 * tol if warmup_tol is None else warmup_tol
    if isinstance(X, np.ndarray):
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    else:
        Xt = X.float().contiguous()
    if Xt.ndim != 2:
        raise ValueError(f"k-means input must be [N, D], got shape {tuple(Xt.shape)}")
    n, d = Xt.shape
    k = int(n_clusters)
    if k < 1:
        raise ValueError("n_clusters must be >= 1")
    if n < k:
        raise ValueError(f"only {n} frames for {k} clusters: sample more frames (--percent/--max_frames) "
                         "or ask for fewer clusters")
    if not bool(torch.isfinite(Xt).all()):
        raise ValueError("k-means input holds non-finite values (NaN/inf)")
    if device.type == "cuda":  # keep the data on the GPU when it fits comfortably, else stream chunks
        free, _ = torch.cuda.mem_get_info(device)
        if Xt.numel() * 4 < 0.5 * free:
            Xt = Xt.to(device)
        elif not Xt.is_pinned():
            Xt = Xt.pin_memory()
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    history: List[Dict] = []
    seconds: Dict[str, float] = {}

    m = min(n, max(k, seed_frames or default_seed_frames(k)))
    if init_centroids is not None:
        C = torch.as_tensor(np.asarray(init_centroids, dtype=np.float32), device=device).clone()
        if tuple(C.shape) != (k, d):
            raise ValueError(f"init_centroids must be [{k}, {d}], got {tuple(C.shape)}")
    else:
        ts = time.perf_counter()
        S = Xt[perm[:m].to(Xt.device)].to(device)
        threads = torch.get_num_threads()
        if device.type == "cpu" and seed_threads:
            torch.set_num_threads(seed_threads)
        try:
            C = S[kmeans_pp_seed(S, k, g, n_local_trials).to(device)].clone()
        finally:
            torch.set_num_threads(threads)
        del S
        seconds["seed"] = time.perf_counter() - ts
        log.info("k-means++ seeding (greedy, %d trials) of %d clusters on %d frames: %.1f s",
                 n_local_trials or 2 + int(math.log(k)), k, m, seconds["seed"])

    def phase(name: str, Xp: torch.Tensor, iters: int, C: torch.Tensor, tol: float):
        lloyd = _Lloyd(Xp, device, k, prune)
        prev, it, converged, last, C_prev = None, 0, False, None, None
        tp = time.perf_counter()
        while it < iters:
            ti = time.perf_counter()
            sums, counts, mind, inertia = lloyd.run(C, C_prev)
            C_prev = C
            C, n_empty = _update(C, sums, counts, mind, Xp)
            it += 1
            last = (inertia, counts)
            history.append({"phase": name, "iter": it, "frames": int(Xp.shape[0]), "inertia": inertia,
                            "empty": n_empty, "recomputed": lloyd.recomputed[-1],
                            "seconds": time.perf_counter() - ti})
            log.info("%s pass %d on %d frames: inertia %.4f, %.0f%% of frames recomputed%s (%.1f s)", name, it,
                     Xp.shape[0], inertia, 100 * lloyd.recomputed[-1],
                     f", {n_empty} empty clusters re-seeded" if n_empty else "", history[-1]["seconds"])
            if prev is not None and n_empty == 0 and prev - inertia <= tol * abs(inertia):
                converged = True
                break
            prev = inertia
        seconds[name] = time.perf_counter() - tp
        return C, it, converged, last

    w = min(n, warmup_frames if warmup_frames is not None else default_warmup_frames(k))
    n_warm = 0
    if warmup_iters > 0 and k <= w <= n // 2:
        C, n_warm, _, _ = phase("warmup", Xt[perm[:w].to(Xt.device)], warmup_iters, C, warmup_tol)
    C, n_full, converged, last = phase("full", Xt, max(1, max_iter), C, tol)
    seconds["total"] = time.perf_counter() - t0
    settings = {"n_clusters": k, "seed": int(seed), "seed_frames": m if init_centroids is None else 0,
                "n_local_trials": n_local_trials or 2 + int(math.log(k)), "warmup_frames": w if n_warm else 0,
                "warmup_iters": warmup_iters, "max_iter": max_iter, "tol": tol, "device": str(device),
                "prune": prune and k * d >= PRUNE_MIN_WORK,
                "seed_threads": seed_threads,
                "frames": int(n), "dim": int(d)}
    return KMeansResult(centroids=C.float().cpu().numpy(), inertia=last[0], counts=last[1].cpu().numpy(),
                        n_iter_warmup=n_warm, n_iter=n_full, converged=converged, history=history,
                        seconds=seconds, settings=settings)

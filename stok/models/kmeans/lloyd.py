"""Lloyd passes over frames read block by block: in memory (a tensor) or on disk (``sample_file.DiskFrames``).

A *frame source* has ``n``, ``dim``, ``blocks(block_rows, ids)`` (yields ``(start, rows)`` for the blocks
``ids`` in order; the rows, in the source's storage dtype, are valid until the next block is asked for) and
``rows(idx)`` (float32 rows by index, for subsamples and for re-seeding empty clusters). The passes keep
per frame only its label (int32) and Hamerly's two bounds (float32): 12 bytes a frame; everything else
is a block, a compute chunk or ``O(k D)``.

Both sources go through the same code with the same block and chunk boundaries, so a float32 sample on
disk gives exactly the centroids of the same sample in memory.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

PRUNE_MIN_WORK = 16384  # k x D below which Lloyd passes do not use the bounds
FLUSH_FRAMES = 1 << 18  # float32 partial sums over at most this many frames, then into the float64 sums
PLAIN_ABOVE = 0.6  # a bounded pass where more frames than this share may move runs as a plain pass
MOVERS = 8  # centroids with the largest drifts, bounded one by one in a bounded pass


def fit_chunk_rows(k: int, dim: int, device: torch.device) -> int:
    """Rows per distance block: about 32 MB of distances and of float32 rows on CPU (512 MB on GPU)."""
    budget = (1 << 27) if device.type == "cuda" else (1 << 23)
    return max(256, min(budget // max(1, k), budget // max(1, dim)))


def whole_chunks(block_rows: int, chunk: int) -> int:
    """Rows of a block: ``block_rows`` rounded down to whole compute chunks (at least one chunk)."""
    return max(1, block_rows // chunk) * chunk


class TensorFrames:
    """Frames held in one float32 tensor [n, D] (CPU, pinned CPU or GPU memory)."""

    def __init__(self, X: torch.Tensor):
        self.X = X
        self.n, self.dim = int(X.shape[0]), int(X.shape[1])

    def blocks(self, block_rows: int, ids: Optional[Sequence[int]] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        ids = range(-(-self.n // block_rows)) if ids is None else ids
        for b in ids:
            s = b * block_rows
            yield s, self.X[s:s + block_rows]

    def rows(self, idx) -> torch.Tensor:
        return self.X[torch.as_tensor(np.asarray(idx, dtype=np.int64)).to(self.X.device)].float()


class Farthest:
    """The ``size`` largest values seen (and their frame indices), fed chunk by chunk: the frames farthest
    from their centroids, which re-seed empty clusters, without a value per frame in memory."""

    def __init__(self, size: int, device: torch.device):
        self.size = size
        self.vals = torch.empty(0, device=device)
        self.idx = torch.empty(0, dtype=torch.long, device=device)

    def add(self, vals: torch.Tensor, start: int, local: Optional[torch.Tensor] = None) -> None:
        if not len(vals):
            return
        top = torch.topk(vals, min(self.size, len(vals)))
        idx = top.indices if local is None else local[top.indices]
        self.vals = torch.cat([self.vals, top.values.float()])
        self.idx = torch.cat([self.idx, idx.to(self.idx.device) + start])
        if len(self.vals) > 2 * self.size:
            keep = torch.topk(self.vals, self.size).indices
            self.vals, self.idx = self.vals[keep], self.idx[keep]

    def top(self, m: int) -> np.ndarray:
        keep = torch.topk(self.vals, min(m, len(self.vals))).indices
        return self.idx[keep].cpu().numpy()


class Lloyd:
    """Lloyd passes over a frame source: assignment to the nearest centroid and the new sums and counts.

    With ``prune`` (Hamerly's bounds), a pass after the first one recomputes only the frames whose assignment
    may have changed: each frame keeps an upper bound on the distance to its centroid and a lower bound on the
    distance to every other one; the bounds move by how far the centroids moved (the few centroids that moved
    most are bounded one by one, through their distance to the frame's own centroid), and a frame whose upper
    bound stays under its lower bound keeps its label without any distance computation. A block none of whose frames
    may move is not even read. Sums and counts are then updated by the frames that changed cluster only, and
    the inertia of the assignment comes from the sums: ``sum |x|^2 - 2 sum_j c_j . S_j + sum_j n_j |c_j|^2``.
    Same result as plain Lloyd up to float32 near-ties.
    """

    def __init__(self, frames, device: torch.device, k: int, prune: bool = True, block_rows: int = 0,
                 progress: Optional[Callable[[str, int], object]] = None):
        # bounds pay off when a distance row (k x D multiply-adds) costs much more than the gathers they need;
        # with MFCC-sized work (k=100, D=39) a bounded pass took 0.4 s against 0.2 s for a plain one
        self.prune = prune and k * frames.dim >= PRUNE_MIN_WORK
        self.frames, self.device, self.k = frames, device, k
        self.n = frames.n
        self.chunk = min(fit_chunk_rows(k, frames.dim, device), block_rows or self.n)
        self.block = whole_chunks(block_rows, self.chunk)
        self.n_blocks = -(-self.n // self.block)
        self.progress = progress
        self.lab = self.ub = self.lb = None
        self.recomputed: List[float] = []
        self.far: Optional[Callable[[int], np.ndarray]] = None

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

    def _bar(self, what: str, total: int):
        return self.progress(what, total) if self.progress is not None else None

    @torch.no_grad()
    def run(self, C: torch.Tensor, C_prev: Optional[torch.Tensor] = None):
        """One pass with centroids ``C``; returns (sums float64 [k, D], counts [k], inertia). Afterwards
        ``self.far(m)`` gives the indices of the ``m`` frames farthest from their centroids."""
        if self.prune and self.lab is not None and C_prev is not None:
            out = self._pruned(C, C_prev)
            if out is not None:
                return out
        return self._full(C)

    def _full(self, C: torch.Tensor):
        dev, k, d = self.device, self.k, self.frames.dim
        cc = (C * C).sum(1)
        sums64 = torch.zeros(k, d, dtype=torch.float64, device=dev)
        sums32 = torch.zeros(k, d, dtype=torch.float32, device=dev)
        counts = torch.zeros(k, dtype=torch.long, device=dev)
        far = Farthest(k, dev)
        if self.prune and self.lab is None:
            self.lab = torch.empty(self.n, dtype=torch.int32, device=dev)
            self.ub = torch.empty(self.n, dtype=torch.float32, device=dev)
            self.lb = torch.empty(self.n, dtype=torch.float32, device=dev)
        total = torch.zeros((), dtype=torch.float64, device=dev)
        xx_total = torch.zeros((), dtype=torch.float64, device=dev)
        pending = 0
        bar = self._bar("pass", self.n)
        for start, blk in self.frames.blocks(self.block):
            for c in range(0, len(blk), self.chunk):
                xb = blk[c:c + self.chunk].to(dev, torch.float32, non_blocking=True)
                s, e = start + c, start + c + len(xb)
                lab, mind, d2, xx = self._top2(xb, C, cc)
                total += mind.sum(dtype=torch.float64)
                xx_total += xx.sum(dtype=torch.float64)
                far.add(mind, s)
                if self.prune:
                    self.lab[s:e], self.ub[s:e], self.lb[s:e] = lab, mind.sqrt(), d2
                sums32.index_add_(0, lab, xb)
                counts += torch.bincount(lab, minlength=k)
                pending += len(xb)
                if pending >= FLUSH_FRAMES:
                    sums64 += sums32
                    sums32.zero_()
                    pending = 0
            if bar is not None:
                bar.update(len(blk))
        if bar is not None:
            bar.close()
        sums64 += sums32
        if not bool(torch.isfinite(xx_total)):
            raise ValueError("k-means input holds non-finite values (NaN/inf)")
        self.xx_total = xx_total
        if self.prune:
            self.sums, self.counts = sums64, counts
        self.recomputed.append(1.0)
        self.far = far.top
        return sums64.clone(), counts.clone(), float(total) / max(1, self.n)

    def _need(self, s: int, e: int) -> torch.Tensor:
        return self.ub[s:e] >= self.lb[s:e] * (1 - 1e-5)

    def _pruned(self, C: torch.Tensor, C_prev: torch.Tensor):
        dev = self.device
        drift = (C - C_prev).norm(dim=1)
        # The lower bound covers every other centroid. Hamerly moves it down by the largest drift among them; one
        # centroid jumping far would then send every frame to a recomputation. The MOVERS largest drifts are
        # bounded one by one instead, each by the better of two bounds on |x - c_j|: the old bound minus c_j's
        # drift, and |c_a - c_j| - ub (triangle inequality through the frame's own centroid c_a), so only frames
        # near a jumping centroid are recomputed; the rest move down by the largest remaining drift.
        t = min(MOVERS, self.k - 1)
        order = torch.topk(drift, min(t + 1, len(drift))).indices
        movers = order[:t]
        rest = drift[order[t]] if len(order) > t else drift.new_zeros(())
        cc_movers = torch.cdist(C, C[movers], compute_mode="donot_use_mm_for_euclid_dist") if t else None  # [k, t]
        need_blocks, need_total = [], 0
        for b in range(self.n_blocks):  # move the bounds, count the frames that may change cluster
            s, e = b * self.block, min(self.n, (b + 1) * self.block)
            lab = self.lab[s:e].long()
            self.ub[s:e] += drift[lab]
            lb = self.lb[s:e] - rest
            if t:
                per = torch.maximum(self.lb[s:e, None] - drift[movers][None],
                                    cc_movers[lab] - self.ub[s:e, None])
                per.masked_fill_(lab[:, None] == movers[None], float("inf"))  # its own centroid is no rival
                lb = torch.minimum(lb, per.min(1).values)
            self.lb[s:e] = lb
            m = int(self._need(s, e).sum())
            if m:
                need_blocks.append(b)
                need_total += m
        if need_total > PLAIN_ABOVE * self.n:  # most frames may move: a plain pass (no gathers) is cheaper
            return None
        cc = (C * C).sum(1)
        sums, counts = self.sums, self.counts
        recomputed = 0
        bar = self._bar("pass (bounded)", len(need_blocks))
        for start, blk in self.frames.blocks(self.block, need_blocks):
            need = self._need(start, start + len(blk)).nonzero().squeeze(1)
            for c in range(0, len(need), self.chunk):
                loc = need[c:c + self.chunk]
                idx = loc + start
                xb = blk[loc.to(blk.device)].to(dev, torch.float32, non_blocking=True)
                own = self.lab[idx].long()
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
                    counts += torch.bincount(lab[moved], minlength=self.k) - torch.bincount(own[moved],
                                                                                          minlength=self.k)
                    self.lab[idx] = lab.to(torch.int32)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.recomputed.append(recomputed / max(1, self.n))
        Cd = C.double()
        total = float(self.xx_total - 2 * (Cd * sums).sum() + (counts.double() * (Cd * Cd).sum(1)).sum())
        self.far = self._far_from_bounds  # frames farthest from their centroids: the largest upper bounds
        return sums.clone(), counts.clone(), max(0.0, total) / max(1, self.n)

    def _far_from_bounds(self, m: int) -> np.ndarray:
        far = Farthest(m, self.device)
        for s in range(0, self.n, self.block):
            far.add(self.ub[s:s + self.block], s)
        return far.top(m)


def update_centroids(C: torch.Tensor, sums64: torch.Tensor, counts: torch.Tensor, lloyd: Lloyd) -> tuple:
    """New centroids = means; empty clusters get the frames farthest from their centroids."""
    new = (sums64 / counts.clamp(min=1)[:, None]).to(C.dtype)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        far = lloyd.far(len(empty))
        new[empty[: len(far)]] = lloyd.frames.rows(far).to(C.device, C.dtype)
    return new, int(len(empty))

"""Residual vector quantizer of SpeechTokenizer: Euclidean EMA codebooks, k-means init, dead-code replacement.

State (the released names): ``vq.layers.{i}._codebook.{inited [1], cluster_size [K], embed [K, D],
embed_avg [K, D]}``, float buffers, nothing else. A layer maps the residual to its nearest code
(``argmin ||r - e||^2``), passes gradients straight through, and adds ``MSE(r, q)`` over the valid frames to the
commitment loss (the mean over layers is returned).

The statistics change only in a **training** forward with gradients enabled (never in eval, under ``no_grad``
or in :meth:`ResidualVectorQuantizer.encode`), and only valid frames (``mask``) enter them:

- **k-means init.** While a codebook is not ``inited``, the valid input frames of each training step are
  gathered from all ranks (``all_gather`` when ``torch.distributed`` is initialised) into a pool kept outside
  the state dict. Until the pool holds ``codebook_size`` frames the quantizer is **bypassed**: the forward
  returns its input unchanged (commitment loss 0) with codes from the current, randomly initialised codebooks,
  so the decoder trains on the continuous latent meanwhile. Then rank 0 runs k-means (``kmeans_iters`` Lloyd
  iterations, at most ``16 x codebook_size`` pooled frames) layer by layer on the pooled residuals and
  broadcasts every codebook, so all ranks hold the same codebooks. The released code instead initialises on
  the first batch of each rank separately (900 frames for 1024 codes in its training config).
- **EMA.** Per step, the code counts and frame sums are all-reduced over ranks, then
  ``cluster_size <- d cluster_size + (1 - d) counts``, ``embed_avg`` likewise, and
  ``embed = embed_avg / laplace(cluster_size)``. Codes and quantized outputs of the step come from the
  codebook before its update. After k-means, ``embed_avg = embed * cluster_size`` (the released code sets
  ``embed_avg = embed``, which shrinks every code by its cluster size at the first update).
- **Dead codes.** After the EMA update, codes with ``cluster_size < dead_code_threshold`` get a valid frame
  of the step: each rank offers up to that many of its frames, the offers are gathered from all ranks, rank 0
  draws from them and broadcasts its draw (drawn with replacement when there are fewer frames than dead codes).
  A replaced code restarts with ``cluster_size = threshold`` and ``embed_avg = frame * threshold``, so it
  survives the next renormalisation (the released replacement is overwritten by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from stok.models.speechtokenizer.config import SpeechTokenizerConfig

#: k-means runs on at most this many pooled frames per code
INIT_FRAMES_PER_CODE = 16


# ---------------------------------------------------------------------------------------------- distributed
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if _world() > 1 else 0


def _all_reduce_sum(t: torch.Tensor) -> None:
    if _world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _broadcast(t: torch.Tensor) -> None:
    if _world() > 1:
        dist.broadcast(t, src=0)


def _all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [n, D]`` from every rank (each may have a different ``n``), in rank order, on every rank."""
    world = _world()
    if world == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


# ---------------------------------------------------------------------------------------------- k-means
def nearest(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``embed [K, D]`` for each row of ``x [N, D]`` (squared Euclidean)."""
    dist2 = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None]
    return dist2.argmin(1)


def _draw(n_rows: int, n: int, device: torch.device) -> torch.Tensor:
    """``n`` row indices below ``n_rows``: distinct when possible, else with replacement."""
    if n_rows >= n:
        return torch.randperm(n_rows, device=device)[:n]
    return torch.randint(n_rows, (n,), device=device)


def kmeans(data: torch.Tensor, k: int, iters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from ``k`` distinct random frames; empty clusters keep their centre.

    Returns the centres ``[k, D]`` and the number of frames nearest to each."""
    means = data[_draw(data.shape[0], k, data.device)]
    for _ in range(iters):
        idx = nearest(data, means)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(means).index_add_(0, idx, data)
        means = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(sums.dtype), means)
    counts = torch.bincount(nearest(data, means), minlength=k)
    return means, counts.to(data.dtype)


# ---------------------------------------------------------------------------------------------- modules
class Codebook(nn.Module):
    """One EMA codebook: the buffers and their updates (see the module docstring)."""

    def __init__(self, dim: int, size: int, cfg: SpeechTokenizerConfig):
        super().__init__()
        self.size, self.decay, self.eps = size, cfg.ema_decay, cfg.ema_eps
        self.threshold, self.kmeans_iters = cfg.dead_code_threshold, cfg.kmeans_iters
        embed = torch.empty(size, dim)
        nn.init.kaiming_uniform_(embed)  # placeholder until the k-means init of training
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        return nearest(x, self.embed)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.embed)

    @torch.no_grad()
    def init_from(self, data: torch.Tensor) -> None:
        means, counts = kmeans(data, self.size, self.kmeans_iters)
        self.embed.copy_(means)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(means * counts[:, None])
        self.inited.fill_(1.0)

    @torch.no_grad()
    def update(self, frames: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA update with this step's valid ``frames [n, D]`` and their codes ``idx [n]`` (all ranks), then
        dead-code replacement."""
        stats = torch.zeros(self.size, 1 + frames.shape[1], dtype=frames.dtype, device=frames.device)
        stats[:, 0] = torch.bincount(idx, minlength=self.size).to(frames.dtype)
        stats[:, 1:].index_add_(0, idx, frames)
        _all_reduce_sum(stats)
        self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(stats[:, 1:], alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.size * self.eps) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        self._replace_dead(frames)

    def _replace_dead(self, frames: torch.Tensor) -> None:
        if self.threshold <= 0:
            return
        dead = self.cluster_size < self.threshold  # identical on every rank: the statistics are all-reduced
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        offers = _all_gather_rows(frames[_draw(frames.shape[0], min(n_dead, frames.shape[0]), frames.device)])
        if offers.shape[0] == 0:
            return
        rows = offers[_draw(offers.shape[0], n_dead, offers.device)]
        _broadcast(rows)
        self.embed[dead] = rows
        self.embed_avg[dead] = rows * self.threshold
        self.cluster_size[dead] = self.threshold


class VectorQuantizer(nn.Module):
    """One RVQ layer (``layers.{i}``): nearest code, straight-through output, masked commitment loss."""

    def __init__(self, dim: int, size: int, cfg: SpeechTokenizerConfig):
        super().__init__()
        self._codebook = Codebook(dim, size, cfg)

    def forward(self, residual: torch.Tensor, valid: Optional[torch.Tensor], update: bool
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``residual [N, D]``, ``valid [N]`` bool or None -> (quantized, codes, commitment loss)."""
        cb = self._codebook
        idx = cb.nearest(residual.detach())
        q = cb.lookup(idx)
        if update:
            frames, codes = (residual.detach(), idx) if valid is None else (residual.detach()[valid], idx[valid])
            cb.update(frames, codes)
        commit = masked_mse(residual, q, valid)
        out = residual + (q - residual).detach() if residual.requires_grad else q
        return out, idx, commit


def masked_mse(x: torch.Tensor, y: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean squared error over the rows where ``valid`` (all rows when None)."""
    if valid is None:
        return F.mse_loss(x, y)
    err = (x - y).pow(2).sum(1) * valid.to(x.dtype)
    return err.sum() / (valid.sum().clamp_min(1) * x.shape[1])


@dataclass
class RVQOutput:
    quantized: torch.Tensor  # [B, D, T]: sum of the layers' outputs
    codes: torch.Tensor  # [n_q, B, T] int64
    commit_loss: torch.Tensor  # scalar: mean over layers of the masked commitment MSE
    first: torch.Tensor  # [B, D, T]: layer 1's output (the semantic layer)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: SpeechTokenizerConfig):
        super().__init__()
        self.dim, self.size = cfg.dimension, cfg.codebook_size
        self.vq = nn.Module()  # released layout: quantizer.vq.layers.{i}._codebook.*
        self.vq.layers = nn.ModuleList(VectorQuantizer(cfg.dimension, cfg.codebook_size, cfg)
                                       for _ in range(cfg.n_q))
        self._pool: List[torch.Tensor] = []  # frames gathered for the k-means init (not state)

    @property
    def layers(self) -> nn.ModuleList:
        return self.vq.layers

    @property
    def n_q(self) -> int:
        return len(self.vq.layers)

    def inited(self) -> bool:
        return bool(torch.stack([layer._codebook.inited for layer in self.layers]).all())

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> RVQOutput:
        """``x [B, D, T]``, ``mask [B, T]`` (True on valid frames; None: all valid)."""
        with torch.autocast(x.device.type, enabled=False):
            B, D, T = x.shape
            flat = x.transpose(1, 2).reshape(B * T, D).to(self.layers[0]._codebook.embed.dtype)
            valid = None if mask is None else mask.reshape(B * T)
            update = self.training and torch.is_grad_enabled()
            if update and not self.inited():
                pooled = flat.detach() if valid is None else flat.detach()[valid]
                if not self._pool_frames(pooled):
                    codes = self.encode(x, mask)
                    return RVQOutput(x, codes, flat.new_zeros(()), x)
                self._init_codebooks()
            residual, out, first = flat, None, None
            codes, commits = [], []
            for layer in self.layers:
                q, idx, commit = layer(residual, valid, update)
                residual = residual - q
                out = q if out is None else out + q
                first = q if first is None else first
                codes.append(idx)
                commits.append(commit)
            return RVQOutput(_to_bdt(out, B, T), torch.stack(codes).view(-1, B, T), torch.stack(commits).mean(),
                             _to_bdt(first, B, T))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, n_q: Optional[int] = None
               ) -> torch.Tensor:
        """Codes ``[n_q, B, T]`` of ``x [B, D, T]`` (0 where ``mask`` is False); never changes the codebooks."""
        n_q = self._check_n_q(n_q, 0)
        with torch.autocast(x.device.type, enabled=False):
            B, D, T = x.shape
            residual = x.transpose(1, 2).reshape(B * T, D).to(self.layers[0]._codebook.embed.dtype)
            codes = []
            for layer in self.layers[:n_q]:
                idx = layer._codebook.nearest(residual)
                residual = residual - layer._codebook.lookup(idx)
                codes.append(idx)
            codes = torch.stack(codes).view(n_q, B, T)
        return codes if mask is None else codes.masked_fill(~mask[None], 0)

    def decode(self, codes: torch.Tensor, first_layer: int = 0) -> torch.Tensor:
        """``codes [n_q, B, T]`` of layers ``first_layer ..`` -> the sum of their code vectors ``[B, D, T]``."""
        n_q, B, T = codes.shape
        self._check_n_q(n_q, first_layer)
        out = None
        for i in range(n_q):
            q = self.layers[first_layer + i]._codebook.lookup(codes[i])
            out = q if out is None else out + q
        return out.transpose(1, 2)

    def _check_n_q(self, n_q: Optional[int], first_layer: int) -> int:
        n_q = self.n_q - first_layer if n_q is None else int(n_q)
        if first_layer < 0 or n_q < 1 or first_layer + n_q > self.n_q:
            raise ValueError(f"RVQ layers {first_layer}..{first_layer + n_q - 1} asked, the model has "
                             f"layers 0..{self.n_q - 1}")
        return n_q

    def _pool_frames(self, frames: torch.Tensor) -> bool:
        """Add this step's valid frames (from every rank) to the init pool; True once it holds enough."""
        self._pool.append(_all_gather_rows(frames.float()))
        return sum(p.shape[0] for p in self._pool) >= self.size

    @torch.no_grad()
    def _init_codebooks(self) -> None:
        """k-means on rank 0 for every codebook not yet inited (on the pooled residuals), broadcast to all."""
        data, self._pool = torch.cat(self._pool), []
        if _rank() == 0:
            cap = INIT_FRAMES_PER_CODE * self.size
            if data.shape[0] > cap:
                data = data[torch.randperm(data.shape[0], device=data.device)[:cap]]
            residual = data.to(self.layers[0]._codebook.embed.dtype)
            for layer in self.layers:
                cb = layer._codebook
                if not bool(cb.inited):
                    cb.init_from(residual)
                residual = residual - cb.lookup(cb.nearest(residual))
        for layer in self.layers:
            for buf in layer._codebook.buffers():
                _broadcast(buf)


def _to_bdt(flat: torch.Tensor, B: int, T: int) -> torch.Tensor:
    return flat.view(B, T, -1).transpose(1, 2)

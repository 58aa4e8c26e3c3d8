"""What the trainer's processes agree on: DDP wrapping, barriers, and decisions every rank takes together.

Every function takes the run's :class:`stok.core.distributed.DistInfo` and is a no-op (or the local answer) in a
one-process run. A decision one rank can reach alone (a non-finite loss, a stop signal) is all-reduced so that
every rank takes the same branch at the same step; nobody waits in a collective the others skipped.

DDP: buffers are synchronised once at construction, not at every forward (the quantizer all-reduces its own EMA
statistics, and spectral-norm vectors evolve identically on every rank).
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from stok.core import distributed
from stok.core.distributed import DistInfo

log = logging.getLogger("stok.train")


def unwrap(m: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the module itself when not wrapped)."""
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """``module`` in DDP when the run has several ranks (buffers broadcast at construction only)."""
    if info.world <= 1:
        return module
    ids = [info.device.index] if info.device.type == "cuda" else None
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **sync)


def barrier(info: DistInfo) -> None:
    distributed.barrier(info)


def _reduce_flag(info: DistInfo, value: bool, op) -> bool:
    t = torch.tensor(float(value), device=info.device)
    if info.world > 1:
        dist.all_reduce(t, op=op)
    return bool(t.item() > 0)


def all_ranks(info: DistInfo, value: bool) -> bool:
    """True when ``value`` is true on every rank."""
    return _reduce_flag(info, value, dist.ReduceOp.MIN)


def any_rank(info: DistInfo, value: bool) -> bool:
    """True when ``value`` is true on at least one rank."""
    return _reduce_flag(info, value, dist.ReduceOp.MAX)


def max_int(info: DistInfo, value: int) -> int:
    """The largest ``value`` over the ranks."""
    t = torch.tensor(int(value), device=info.device, dtype=torch.int64)
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_finite(info: DistInfo, *tensors: torch.Tensor) -> bool:
    """Every tensor finite on every rank."""
    return all_ranks(info, all(bool(torch.isfinite(t).all()) for t in tensors))


def broadcast_float(info: DistInfo, value: Optional[float]) -> Optional[float]:
    """Rank 0's ``value`` (None travels as NaN) on every rank."""
    if info.world == 1:
        return value
    t = torch.tensor([float("nan") if value is None else value], device=info.device, dtype=torch.float64)
    dist.broadcast(t, 0)
    return None if math.isnan(t.item()) else t.item()


def gather(info: DistInfo, obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (a list of one in a one-process run)."""
    if info.world == 1:
        return [obj]
    out: List[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def parameters_in_sync(info: DistInfo, modules: Iterable[nn.Module]) -> bool:
    """Whether every rank holds the same parameters (two checksums compared across ranks); logs the answer."""
    if info.world == 1:
        return True
    params = [p.detach().double().flatten() for m in modules for p in m.parameters()]
    flat = torch.cat(params)
    w = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64).remainder_(97)
    sums = torch.stack([flat.sum(), (flat * w).sum()])
    hi, lo = sums.clone(), sums.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    ok = bool(torch.equal(hi, lo))
    if info.is_main:
        if ok:
            log.info("parameters identical on all %d ranks", info.world)
        else:
            log.error("parameters differ between ranks (checksums %s vs %s)", lo.tolist(), hi.tolist())
    return ok

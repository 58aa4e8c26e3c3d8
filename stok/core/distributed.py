"""Processes and devices: the one device resolver and the one :class:`DistInfo`, for dumps and training.

A run is one plain process, the ranks of a ``torchrun`` launch (one node or several), or one independent shard
job (``--shard i/N``: rank i of N with no process group). NCCL on GPUs (gloo when a node runs more processes
than it has GPUs: they share the GPUs round-robin), gloo on CPU. A dump only needs barriers (each rank writes
its own shard), so the process-group timeout is long: ranks may finish hours apart on unbalanced data
(``STOK_DIST_TIMEOUT_HOURS``, default 24).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from stok.core.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    #: False for independent shard jobs: no process group, no barriers
    group: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0, what: str = "--device") -> torch.device:
    """``auto`` (cuda:LOCAL_RANK when CUDA is available, else cpu), ``cpu``, ``cuda`` (shared round-robin by the
    node's processes) or ``cuda:N``; a device that cannot work is a user error naming ``what``."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cuda":  # several processes per GPU share it round-robin (data loading can be the bottleneck)
        spec = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"{what} {spec}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what} {spec} asked for CUDA, but torch sees no GPU; use {what} cpu")
    return device


def available_cpus() -> int:
    """CPUs this process may use: its Slurm job's ``--cpus-per-task`` (``SLURM_CPUS_PER_TASK``) inside a Slurm
    job, else the CPUs of its affinity mask (a container's or a batch system's share of the machine)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def on_gpu(spec: str) -> bool:
    """Whether a ``--device`` value resolves to a GPU (without creating a process group)."""
    return spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())


def setup(device_spec: str = "auto", threads: int = 0, shard: Optional[Tuple[int, int]] = None) -> DistInfo:
    """This process's place and device; a process group for ``torchrun`` ranks (none for a ``shard`` job)."""
    if shard is not None:
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise UserError("--shard runs one independent job; do not start it with torchrun (give each shard its "
                            "own job, e.g. a Slurm array task)")
        device = resolve_device(device_spec, 0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(threads or available_cpus())
        return DistInfo(shard[0], shard[1], 0, 1, device, group=False)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(threads or max(1, available_cpus() // max(1, local_world)))
    if world > 1 and not dist.is_initialized():
        hours = float(os.environ.get("STOK_DIST_TIMEOUT_HOURS", 24))
        # NCCL takes one process per GPU; with more processes than GPUs the (barrier-only) group uses gloo
        nccl = device.type == "cuda" and local_world <= torch.cuda.device_count()
        dist.init_process_group("nccl" if nccl else "gloo", timeout=datetime.timedelta(hours=hours))
    return DistInfo(rank, world, local_rank, local_world, device)


def barrier(info: DistInfo) -> None:
    if info.world > 1 and info.group:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.world > 1 and info.group and dist.is_initialized():
        dist.destroy_process_group()

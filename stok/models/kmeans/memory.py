"""Memory for learning k-means: what the machine can give (MemAvailable), what this process holds (RSS), and
the plan that keeps a fit within a budget: the sample in memory, or on disk and read back block by block.

Memory model, in bytes (n sampled frames of D dims, k clusters; :func:`plan_memory` estimates it):

- every fit keeps **12 bytes a frame**: its label (int32) and Hamerly's two bounds (float32) (none when
  k x D < 16384, where passes do without the bounds), plus a fixed working set: the seeding/warm-up subsample
  (``4 D`` bytes a frame of ``max(seed_frames, warmup_frames)``: 154 MB for k = 500, D = 768), one compute
  chunk of float32 rows with its distances (about 4 x 32 MB on CPU) and the centroids and sums (``24 k D``);
- a sample **in memory** adds ``4 D`` bytes a frame (the float32 sample: 3072 bytes a frame at D = 768);
- a sample **on disk** adds nothing per frame: three read buffers of ``block_rows`` frames (at most 64 MB in
  float32 terms each), and takes ``2 D`` bytes a frame of disk (float16; ``4 D`` for float32);
- on top of that, the process holds what it held when learning started (Python, torch, numpy and their
  libraries: about 0.5 GB), counted as the resident size (RSS) measured when planning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from stok.models.kmeans.lloyd import PRUNE_MIN_WORK, fit_chunk_rows, whole_chunks

log = logging.getLogger("stok.kmeans")

GiB = 1 << 30
MB = 1 << 20
MARGIN = 0.8  # of MemAvailable: a sample in memory may take at most this share of it
DEFAULT_BUDGET = 8 * GiB
STATE_BYTES = 12  # per frame: int32 label, float32 upper and lower bounds
SLACK = 64 * MB  # allocator and interpreter overheads seen around the estimate
MEMINFO, STATUS = "/proc/meminfo", "/proc/self/status"


def gb(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB" if abs(nbytes) >= 0.1 * GiB else f"{nbytes / MB:.1f} MiB"


def _proc_value(path: str, field: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available() -> Optional[int]:
    """Bytes the kernel can give without swapping (``MemAvailable`` of /proc/meminfo: free pages plus the page
    cache and reclaimable memory), or None where it is not known."""
    return _proc_value(MEMINFO, "MemAvailable")


def rss() -> int:
    """This process's resident size now (``VmRSS``; 0 where unknown)."""
    return _proc_value(STATUS, "VmRSS") or 0


def peak_rss() -> int:
    """This process's peak resident size so far (``VmHWM``; 0 where unknown)."""
    return _proc_value(STATUS, "VmHWM") or 0


def default_budget(base: int) -> int:
    """8 GiB, or less where the machine has less: what is held now plus MARGIN of MemAvailable."""
    avail = mem_available()
    return DEFAULT_BUDGET if avail is None else int(min(DEFAULT_BUDGET, base + MARGIN * avail))


def fixed_set(n: int, dim: int, k: int, subsample: int) -> int:
    """Bytes a fit holds besides the sample, its blocks and compute chunks (see the module docstring)."""
    state = STATE_BYTES * n if k * dim >= PRUNE_MIN_WORK else 0
    return state + 24 * k * dim + (4 * dim + STATE_BYTES) * subsample + SLACK


def block_set(block_rows: int, dim: int, k: int, device: torch.device, on_disk: bool) -> int:
    """Bytes of a pass's blocks: float32 temporaries of a compute chunk and its distances (on CPU), plus three
    read buffers for a sample on disk (counted as float32)."""
    chunk = min(fit_chunk_rows(k, dim, device), block_rows)
    compute = 4 * chunk * dim * 4 + 2 * chunk * k * 4 if device.type == "cpu" else 0
    return compute + (3 * block_rows * dim * 4 if on_disk else 0)


@dataclass
class MemoryPlan:
    where: str  # "memory" or "disk"
    budget: int  # bytes of resident memory the whole process may reach
    base: int  # resident bytes when planning
    in_memory: int  # estimated peak with the sample in memory
    on_disk: int  # estimated peak with the sample on disk
    block_rows: int  # rows a Lloyd pass reads (and computes) at a time

    def describe(self) -> str:
        return (f"estimated peak {gb(self.in_memory if self.where == 'memory' else self.on_disk)} of the "
                f"{gb(self.budget)} budget (in memory {gb(self.in_memory)}, on disk {gb(self.on_disk)}; "
                f"{gb(self.base)} held before learning)")


class BudgetError(ValueError):
    """A budget too small for the fit; the message names the options that fix it."""


def plan_memory(n: int, dim: int, k: int, subsample: int, budget: int, where: str = "auto",
                device: torch.device = torch.device("cpu"), base: Optional[int] = None) -> MemoryPlan:
    """Choose where the sample lives: in memory when the whole fit fits the budget, else on disk."""
    base = rss() if base is None else base
    fixed = fixed_set(n, dim, k, subsample)
    spare = max(0, budget - base - fixed)
    rows = min(64 * MB, max(4 * MB, spare // 8)) // (4 * dim)  # a block: 4 MB to 64 MB of float32 rows
    block_rows = min(whole_chunks(rows, min(rows, fit_chunk_rows(k, dim, device))), max(1, n))
    in_memory = base + 4 * n * dim + fixed + block_set(block_rows, dim, k, device, False)
    on_disk = base + fixed + block_set(block_rows, dim, k, device, True)
    if where == "auto":
        where = "memory" if in_memory <= budget else "disk"
    plan = MemoryPlan(where, budget, base, in_memory, on_disk, block_rows)
    if where == "disk" and on_disk > budget:
        raise BudgetError(f"learning {k} clusters on {n} frames x {dim} dims from an on-disk sample needs about "
                           f"{gb(on_disk)} ({gb(base)} already held, {gb(fixed - SLACK)} of working set incl. "
                           f"{STATE_BYTES} bytes a frame and a {subsample}-frame subsample, blocks of {block_rows} "
                           "frames), more than the "
                           f"--memory_gb budget of {gb(budget)}: raise --memory_gb, or lower --warmup_frames "
                           "and --seed_frames")
    return plan

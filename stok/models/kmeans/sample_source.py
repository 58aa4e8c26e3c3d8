"""Where ``stok-kmeans learn`` gets its sample: a finished on-disk sample made with the same settings, or
sampled now into memory or onto disk, whichever keeps the whole fit within the memory budget (``memory.py``).

The rows are the sampler's either way (same seed, same rows, same order); only where they are kept differs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from stok.models.kmeans.memory import MemoryPlan, gb, plan_memory
from stok.models.kmeans.sample import (ArraySink, FeatsError, Sample, check_memory, fill_sample, plan_sample)
from stok.models.kmeans.sample_file import (DTYPES, FRAMES, HEADER_BYTES, RECORD, DiskFrames, FileSink,
                                            find_sample, made_by)

log = logging.getLogger("stok.kmeans")


@dataclass
class SampleRequest:
    scp: str
    entries: List[Tuple[str, str]]
    percent: float
    max_frames: int
    sample_by: str
    seed: int
    where: str  # auto, memory or disk
    directory: str  # of the on-disk sample
    dtype: str  # of the on-disk sample
    budget: int  # bytes of resident memory
    subsample: Callable[[int], int]  # k -> frames of the seeding/warm-up subsample
    n_clusters: Callable[[int], int]  # dim -> k
    device: torch.device


@dataclass
class SampleResult:
    sample: Sample
    k: int
    plan: MemoryPlan
    storage: str  # "memory" or "disk float16" / "disk float32"
    reused: bool
    directory: Optional[str]  # the on-disk sample's directory


def _free_disk(path: str) -> Optional[int]:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def get_sample(req: SampleRequest) -> SampleResult:
    """Reuse or draw the sample; raises FeatsError (a user's mistake: the message names the fix)."""
    record = made_by(req.scp, req.entries, req.percent, req.max_frames, req.sample_by, req.seed, req.dtype)
    if req.where != "memory":
        stored, why = find_sample(req.directory, record)
        if stored is not None:
            info = stored["sample"]
            k = req.n_clusters(info["dim"])
            plan = plan_memory(info["sampled_frames"], info["dim"], k, req.subsample(k), req.budget, "disk",
                               req.device)
            sample = Sample(frames=DiskFrames(os.path.join(req.directory, FRAMES)), dim=info["dim"],
                            total_frames=info["total_frames"], total_utterances=info["total_utterances"],
                            sampled_utterances=info["sampled_utterances"], failures=stored.get("failures") or {})
            log.info("reusing the finished on-disk sample %s (%d frames x %d dims, %s, made with the same settings "
                     "from unchanged features); %s", req.directory, sample.n, sample.dim, req.dtype,
                     plan.describe())
            return SampleResult(sample, k, plan, f"disk {req.dtype}", True, req.directory)
        if os.path.exists(os.path.join(req.directory, RECORD)):
            log.info("the sample in %s is not reused: %s; sampling again (it is replaced)", req.directory, why)
    plan_s = plan_sample(req.scp, req.percent, req.max_frames, req.seed, req.sample_by)
    k = req.n_clusters(plan_s.dim)
    plan = plan_memory(plan_s.n, plan_s.dim, k, req.subsample(k), req.budget, req.where, req.device)
    fp32 = plan_s.n * plan_s.dim * 4
    if plan.where == "memory":
        log.info("sample of %d frames x %d dims (%s of float32) kept in memory (%s%s)", plan_s.n, plan_s.dim,
                 gb(fp32), "--sample_in memory; " if req.where == "memory" else "", plan.describe())
        if plan.in_memory > plan.budget:
            log.warning("--sample_in memory: the estimated peak %s exceeds the memory budget %s (--memory_gb)",
                        gb(plan.in_memory), gb(plan.budget))
        check_memory(fp32, plan_s.n, plan_s.dim)
        sample = fill_sample(plan_s, ArraySink(plan_s.n, plan_s.dim))
        return SampleResult(sample, k, plan, "memory", False, None)
    size = HEADER_BYTES + plan_s.n * plan_s.dim * DTYPES[req.dtype].itemsize
    free = _free_disk(req.directory)
    if free is not None and size > free:
        raise FeatsError(f"the on-disk sample of {plan_s.n} frames x {plan_s.dim} dims needs {gb(size)} in "
                         f"--sample_dir {req.directory}, only {gb(free)} is free there: give a --sample_dir on a "
                         "disk with room, lower --percent or set --max_frames")
    log.info("sample of %d frames x %d dims (%s of float32) written to disk and streamed: %s/%s (%s, %s)%s; %s",
             plan_s.n, plan_s.dim, gb(fp32), req.directory, FRAMES, req.dtype, gb(size),
             " (--sample_in disk)" if req.where == "disk" else " (the sample in memory would exceed the budget)",
             plan.describe())
    sample = fill_sample(plan_s, FileSink(req.directory, plan_s.n, plan_s.dim, req.dtype, record))
    return SampleResult(sample, k, plan, f"disk {req.dtype}", False, req.directory)

"""Streaming frame sampling from a Kaldi feature scp (``utt ark:offset`` lines, float matrices [T, D]).

Two passes (:func:`plan_sample`, then :func:`fill_sample` into a sink), never more than one utterance and
the sink's own storage in memory:

1. **Shapes**: for ``path:offset`` entries only the matrix header is read (Kaldi ``FM``/``DM`` and compressed
   ``CM``/``CM2``/``CM3`` records: a few bytes at the offset); other entries (pipes, slices, text) are loaded once
   to learn their shape. Entries that cannot be read, are not matrices or whose dimension differs from the
   majority are failures: listed, left out, never silently skipped.
2. **Rows**: the target number of frames ``n = min(ceil(percent * total), max_frames)`` is spread over the
   utterances and only the chosen rows of each matrix are kept, written straight into one preallocated
   float32 ``[n, D]`` array (:class:`ArraySink`) or, block by block, into an on-disk sample
   (``sample_file.FileSink``: float16 or float32, O(1) memory). The rows are the same either way.

``by="frame"`` (default): a uniform sample of frames without replacement (the per-utterance counts are one
multivariate hypergeometric draw), so every utterance is read once when the sample is large.
``by="utterance"`` (fairseq's ``learn_kmeans.py``): whole utterances in random order until ``n`` frames, the
last one cut; only those utterances are read (cheaper I/O at scale, frames more correlated).
Both are deterministic for a given ``seed`` and scp.

Records that hold a pickle (kaldiio's ``PKL`` extension) are refused for ``path:offset`` entries.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import kaldiio
import numpy as np
from tqdm import tqdm

from stok.core.tables import TableError, read_table

log = logging.getLogger("stok.kmeans")

_OFFSET = re.compile(r"^(?P<path>.+):(?P<offset>\d+)$")


class FeatsError(ValueError):
    """A feature scp that cannot be used at all (missing, malformed, no usable entries)."""


def read_feats_scp(path: str) -> List[Tuple[str, str]]:
    """``(key, spec)`` pairs of a feature scp in file order; duplicate keys and bad lines name ``path:line``."""
    if not os.path.isfile(path):
        raise FeatsError(f"feature scp not found: {path} (stage 1 writes dump/<teacher>/<split>/feats.scp)")
    try:
        out = list(read_table(path, scp=True).items())
    except TableError as e:
        raise FeatsError(str(e)) from None
    if not out:
        raise FeatsError(f"feature scp is empty: {path}")
    return out


def resolve_feats_scp(feats_scp: Optional[str], feats_dir: Optional[str]) -> str:
    if feats_scp:
        return feats_scp
    if feats_dir:
        p = os.path.join(feats_dir, "feats.scp")
        if not os.path.isfile(p):
            raise FeatsError(f"{p} not found: --feats_dir must hold a feats.scp (stage 1 output)")
        return p
    raise FeatsError("give --feats_scp or --feats_dir")


class MatrixReader:
    """Reads matrices (or only their shapes) from scp specs, keeping ark files open."""

    def __init__(self):
        self.fds: Dict[str, object] = {}

    def close(self):
        for fd in self.fds.values():
            fd.close()
        self.fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fd(self, path: str):
        fd = self.fds.get(path)
        if fd is None:
            if len(self.fds) >= 64:
                self.close()
            fd = self.fds[path] = open(path, "rb")
        return fd

    def _at(self, spec: str):
        """(fd positioned at the record, path) for a plain ``path:offset`` spec, else None."""
        m = _OFFSET.match(spec)
        if not m or spec.rstrip().endswith("|") or not os.path.isfile(m.group("path")):
            return None
        fd = self._fd(m.group("path"))
        fd.seek(int(m.group("offset")))
        return fd

    def shape(self, spec: str) -> Tuple[int, ...]:
        fd = self._at(spec)
        if fd is not None:
            head = fd.read(32)
            if head[:3] == b"PKL":
                raise ValueError("pickled record refused (kaldiio PKL); features must be Kaldi matrices")
            if head[:2] == b"\0B" and head[2:3] != b"\4":
                token, _, rest = head[2:].partition(b" ")
                if token in (b"FM", b"DM") and len(rest) >= 10 and rest[0:1] == b"\4" and rest[5:6] == b"\4":
                    return struct.unpack("<i", rest[1:5])[0], struct.unpack("<i", rest[6:10])[0]
                if token in (b"CM", b"CM2", b"CM3") and len(rest) >= 16:
                    return struct.unpack("<ii", rest[8:16])
                if token in (b"FV", b"DV"):
                    return (struct.unpack("<i", rest[1:5])[0],)
            if head[:3] == b"\0B\4":
                return (struct.unpack("<i", head[3:7])[0],)  # int32 vector (e.g. a labels scp by mistake)
        return tuple(np.shape(self.load(spec)))

    def load(self, spec: str) -> np.ndarray:
        fd = self._at(spec)
        if fd is not None:
            if fd.read(3) == b"PKL":
                raise ValueError("pickled record refused (kaldiio PKL); features must be Kaldi matrices")
        array = kaldiio.load_mat(spec, fd_dict=self.fds)
        if isinstance(array, tuple):  # audio records: (rate, samples)
            raise ValueError("record holds audio, not a feature matrix")
        return np.asarray(array)


@dataclass
class Sample:
    frames: object  # float32 numpy [n, D] in memory, or sample_file.DiskFrames on disk
    dim: int
    total_frames: int
    total_utterances: int
    sampled_utterances: int
    failures: Dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.frames.n if hasattr(self.frames, "n") else len(self.frames))

    def info(self) -> dict:
        return {"total_frames": self.total_frames, "total_utterances": self.total_utterances,
                "sampled_frames": self.n, "sampled_utterances": self.sampled_utterances,
                "failed": len(self.failures), "dim": self.dim}


@dataclass
class SamplePlan:
    """Pass 1's result: which rows each usable utterance gives (``counts``), and the generator that then
    draws the rows inside each utterance (pass 2, :func:`fill_sample`)."""
    scp: str
    usable: List[Tuple[str, str]]
    rows: np.ndarray
    counts: np.ndarray
    n: int
    dim: int
    total: int
    failures: Dict[str, str]
    rng: np.random.Generator
    entries: int


class ArraySink:
    """Sampled rows into one float32 array [n, D] in memory."""

    def __init__(self, n: int, dim: int):
        self.out = np.empty((n, dim), dtype=np.float32)
        self.count = 0

    def put(self, rows: np.ndarray, key: str = "") -> None:
        self.out[self.count:self.count + len(rows)] = rows
        self.count += len(rows)

    def finish(self, info: dict, failures: Dict[str, str]) -> np.ndarray:
        return self.out if self.count == len(self.out) else self.out[:self.count]

    def abort(self) -> None:
        self.out = None


def scan_shapes(entries: List[Tuple[str, str]], reader: MatrixReader,
                failures: Dict[str, str]) -> Dict[str, Tuple[int, ...]]:
    shapes = {}
    for key, spec in entries:
        try:
            shapes[key] = tuple(int(v) for v in reader.shape(spec))
        except Exception as e:  # noqa: BLE001 - every unreadable entry is listed with its reason
            failures[key] = f"unreadable: {type(e).__name__}: {e}"
    return shapes


def majority_dim(shapes: Dict[str, Tuple[int, ...]], failures: Dict[str, str], where: str) -> int:
    frames_per_dim: Counter = Counter()
    for key, shp in shapes.items():
        if len(shp) == 2:
            frames_per_dim[shp[1]] += shp[0]
    if not frames_per_dim:
        raise FeatsError(f"{where}: no readable feature matrices ({len(failures)} entries failed"
                         + (f", e.g. {next(iter(failures.items()))}" if failures else "") + ")")
    dim = max(frames_per_dim.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    for key, shp in list(shapes.items()):
        if len(shp) != 2:
            failures[key] = f"not a matrix: shape {shp}"
        elif shp[1] != dim:
            failures[key] = f"dimension {shp[1]} != {dim} (the majority of frames)"
    return dim


def check_memory(nbytes: int, n: int, dim: int) -> None:
    """Fail before allocating an in-memory sample that does not fit in the memory available now (Linux)."""
    from stok.models.kmeans.memory import MARGIN, gb, mem_available

    avail = mem_available()
    if avail is None:
        return
    if nbytes > MARGIN * avail:
        raise FeatsError(f"the sample of {n} frames x {dim} dims needs {gb(nbytes)} in memory, more than "
                         f"{100 * MARGIN:.0f}% of the {gb(avail)} available now (MemAvailable): learn from an "
                         "on-disk sample (--sample_in disk), lower --percent or set --max_frames")


def _check_args(percent: float, max_frames: int, by: str) -> None:
    if not 0.0 < percent <= 1.0:
        raise FeatsError(f"percent must be a fraction in (0, 1] (0.1 means 10%), got {percent}")
    if max_frames < 0:
        raise FeatsError("max_frames must be >= 0 (0: no limit)")
    if by not in ("frame", "utterance"):
        raise FeatsError(f"sample_by must be 'frame' or 'utterance', got {by!r}")


def plan_sample(scp: str, percent: float = 1.0, max_frames: int = 0, seed: int = 0,
                by: str = "frame") -> SamplePlan:
    """Pass 1: read every entry's shape (matrix headers) and decide how many rows each utterance gives."""
    _check_args(percent, max_frames, by)
    entries = read_feats_scp(scp)
    failures: Dict[str, str] = {}
    with MatrixReader() as reader:
        shapes = scan_shapes(entries, reader, failures)
    dim = majority_dim(shapes, failures, scp)
    usable = [(k, s) for k, s in entries if k not in failures]
    rows = np.array([shapes[k][0] for k, _ in usable], dtype=np.int64)
    total = int(rows.sum())
    if total == 0:
        raise FeatsError(f"{scp}: the usable matrices hold no frames")
    n = math.ceil(percent * total)
    if max_frames:
        n = min(n, max_frames)
    rng = np.random.default_rng(seed)
    if n == total:
        counts = rows.copy()
    elif by == "frame":
        counts = rng.multivariate_hypergeometric(rows, n, method="marginals")
    else:
        counts = np.zeros_like(rows)
        need = n
        for i in rng.permutation(len(rows)):
            if need <= 0:
                break
            counts[i] = min(rows[i], need)
            need -= counts[i]
    return SamplePlan(scp=scp, usable=usable, rows=rows, counts=counts, n=int(n), dim=dim, total=total,
                      failures=failures, rng=rng, entries=len(entries))


def fill_sample(plan: SamplePlan, sink) -> Sample:
    """Pass 2: the chosen rows of each utterance, in scp order, into ``sink`` (in memory or on disk)."""
    failures, dim, rng = plan.failures, plan.dim, plan.rng
    pos = 0
    sampled_utts = 0
    bar = tqdm(total=plan.n, desc="sampling frames", unit="frame", unit_scale=True, mininterval=5, disable=None)
    try:
        with MatrixReader() as reader:
            for (key, spec), c, r in zip(plan.usable, plan.counts, plan.rows):
                if c == 0:
                    continue
                bar.update(int(c))
                try:
                    mat = reader.load(spec)
                except Exception as e:  # noqa: BLE001
                    failures[key] = f"unreadable: {type(e).__name__}: {e}"
                    continue
                if mat.shape != (r, dim):
                    failures[key] = f"shape {mat.shape} differs from its header {(int(r), dim)}"
                    continue
                take = mat if c == r else mat[np.sort(rng.choice(r, size=int(c), replace=False))]
                if not np.isfinite(take).all():
                    failures[key] = "non-finite values (NaN/inf)"
                    continue
                sink.put(take, key)
                pos += int(c)
                sampled_utts += 1
        bar.close()
        if failures:
            log.warning("%d of %d entries of %s failed and are left out of the sample, e.g. %s: %s",
                        len(failures), plan.entries, plan.scp, *next(iter(failures.items())))
        info = {"total_frames": plan.total, "total_utterances": len(plan.usable), "sampled_frames": pos,
                "sampled_utterances": sampled_utts, "failed": len(failures), "dim": dim}
        frames = sink.finish(info, failures)
    except BaseException:
        sink.abort()
        raise
    return Sample(frames=frames, dim=dim, total_frames=plan.total, total_utterances=len(plan.usable),
                  sampled_utterances=sampled_utts, failures=failures)


def sample_frames(scp: str, percent: float = 1.0, max_frames: int = 0, seed: int = 0,
                  by: str = "frame") -> Sample:
    """Sample frames from the float matrices of ``scp`` into memory (see the module docstring)."""
    plan = plan_sample(scp, percent, max_frames, seed, by)
    check_memory(plan.n * plan.dim * 4, plan.n, plan.dim)
    return fill_sample(plan, ArraySink(plan.n, plan.dim))

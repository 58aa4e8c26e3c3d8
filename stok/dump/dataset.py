"""Per-item loading in DataLoader workers: read audio (or a feature matrix), run ``model.prepare``, collate.

Bad input never stops a dump: an unreadable, empty, truncated or too-short item comes back as a failure
``(key, reason)`` in its batch, and the engine lists it in ``failed.list``.

:class:`ThreadLoader` is the CPU engine's loader of audio: the same batches from worker *threads* of the dumping
process. Forked DataLoader workers share the parent's memory copy-on-write, so while they live every page of the
parent's heap that the model writes again (its activations reuse freed memory) costs a page fault and a copy, and
with several compute threads a TLB shootdown across cores: measured on 2 AVX-512 cores (S3Tokenizer v1 50 Hz, 2
torch threads), ~46,000 such faults per 106 s of audio made the engine 15-20% slower than loading in-process.
Threads share the heap without faults; reading, resampling and the front ends release the GIL. The loader threads
run their torch operations on one thread each: with torch's OpenMP backend every calling thread otherwise starts
its own team of ``torch.get_num_threads()`` threads, which then spin beside the model's compute threads.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
import threading
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from stok.core.ark import read_array, split_location
from stok.core.model_api import BadInput, DumpModel, TooShort
from stok.data.audio import AudioError, load_audio
from stok.data.kaldi_dir import Utterance


@dataclass
class Batch:
    keys: List[str]
    padded: Optional[torch.Tensor]
    lengths: Optional[torch.Tensor]
    num_samples: List[int]
    failures: List[Tuple[str, str]] = field(default_factory=list)


class UtteranceDataset(torch.utils.data.Dataset):
    """Audio of utterances, resampled to the model's rate, through ``model.prepare``."""

    def __init__(self, utts: Sequence[Utterance], model: DumpModel):
        self.utts = list(utts)
        self.model = model

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int):
        u = self.utts[i]
        try:
            wave = load_audio(u.spec, self.model.sample_rate, u.start, u.end)
            return u.utt_id, self.model.prepare(wave), wave.numel()
        except (AudioError, TooShort) as e:
            return u.utt_id, None, f"{type(e).__name__}: {e}"


class FeatureDataset(torch.utils.data.Dataset):
    """Float matrices ``[T, D]`` of a feature scp (``path:offset`` records, or anything kaldiio reads), through
    ``model.prepare``; the "samples" of an item are its frames."""

    def __init__(self, entries: Sequence[Tuple[str, str]], model: DumpModel):
        self.entries = list(entries)
        self.model = model
        self._fds: Dict[str, BinaryIO] = {}  # per worker process

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, spec: str) -> np.ndarray:
        try:
            path, offset = split_location(spec)
        except ValueError:
            path = None
        if path is None or not path or spec.rstrip().endswith("|"):
            import kaldiio

            return np.asarray(kaldiio.load_mat(spec))
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= 64:
                for f in self._fds.values():
                    f.close()
                self._fds.clear()
            fd = self._fds[path] = open(path, "rb")
        return read_array(fd, offset, spec)[0]

    def __getitem__(self, i: int):
        key, spec = self.entries[i]
        try:
            mat = self._read(spec)
        except Exception as e:  # noqa: BLE001 - every unreadable entry is listed with its reason
            return key, None, f"unreadable: {type(e).__name__}: {e}"
        if mat.ndim != 2:
            return key, None, f"not a feature matrix: shape {mat.shape}"
        try:
            return key, self.model.prepare(torch.from_numpy(np.require(mat, np.float32, ["C", "W"]))), len(mat)
        except BadInput as e:
            return key, None, str(e)


class Collate:
    """Batches prepared items with ``model.collate``; keeps failures aside."""

    def __init__(self, model: DumpModel):
        self.model = model

    def __call__(self, items) -> Batch:
        ok = [(k, x, n) for k, x, n in items if x is not None]
        failures = [(k, reason) for k, x, reason in items if x is None]
        if not ok:
            return Batch([], None, None, [], failures)
        padded, lengths = self.model.collate([x for _, x, _ in ok])
        return Batch([k for k, _, _ in ok], padded, lengths, [n for _, _, n in ok], failures)


_loader_state = threading.local()


class ThreadLoader:
    """``DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers)`` with threads: each
    batch is read and collated by one of ``workers`` threads, at most ``prefetch`` batches per worker ahead,
    yielded in order (a worker's exception is raised here, at its batch)."""

    def __init__(self, dataset, batches: Iterable[Sequence[int]], collate: Callable, workers: int, prefetch: int = 4):
        self.dataset, self.batches, self.collate = dataset, batches, collate
        self.workers, self.prefetch = max(1, workers), max(1, prefetch)

    def _load(self, batch: Sequence[int]) -> Batch:
        if not getattr(_loader_state, "single", False):
            torch.get_num_threads()  # torch's per-thread set-up first (it would reset what follows)
            torch.set_num_threads(1)  # this thread's OpenMP/MKL threads (and torch's default for new threads)
            _loader_state.single = True
        return self.collate([self.dataset[i] for i in batch])

    def __iter__(self) -> Iterator[Batch]:
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stok-loader")
        pending: deque = deque()
        todo = iter(self.batches)
        try:
            while True:
                while len(pending) < self.prefetch * self.workers:
                    batch = next(todo, None)
                    if batch is None:
                        break
                    pending.append(pool.submit(self._load, batch))
                if not pending:
                    return
                batch = pending.popleft().result()
                torch.set_num_threads(threads)  # torch's default for new threads, as before the loader threads
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)

"""Per-item loading in DataLoader workers: read audio (or a feature matrix), run ``model.prepare``, collate.

Bad input never stops a dump: an unreadable, empty, truncated or too-short item comes back as a failure
``(key, reason)`` in its batch, and the engine lists it in ``failed.list``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

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

"""Per-utterance loading in DataLoader workers: read audio, resample, run ``model.prepare``, collate.

Bad input never stops a dump: an unreadable, empty, truncated or too-short utterance comes back
as a failure ``(utt_id, reason)`` in its batch, and the engine lists it in ``failed.list``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from stok.data.audio import AudioError, load_audio
from stok.data.kaldi_dir import Utterance
from stok.dump.model_api import DumpModel, TooShort


@dataclass
class Batch:
    keys: List[str]
    padded: Optional[torch.Tensor]
    lengths: Optional[torch.Tensor]
    num_samples: List[int]
    failures: List[Tuple[str, str]] = field(default_factory=list)


class UtteranceDataset(torch.utils.data.Dataset):
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

"""A weight-free model for the dump engine: quantised log-energy per frame.

It reads and frames every utterance like a real model does, so it checks a corpus end to end
(every file decodes, durations, failures) and measures the engine's own overhead in tests and
``bench/dump_engine.py``. Tokens: ``clamp(round(2 * log2(mean square + 1e-10)) + 80, 0, 127)`` per frame
of ``hop`` samples, frames = ceil(samples / hop); padding never changes an utterance's tokens. Its fingerprint
(``describe``: hop, rate, vocabulary) is all that decides the tokens: there are no weights.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from stok.core.model_api import DumpModel


class EnergyTokens(DumpModel):
    def __init__(self, hop: int = 320, sample_rate: int = 16000, min_samples: int = 1):
        self.hop = hop
        self.sample_rate = sample_rate
        self.min_samples = min_samples

    def num_frames(self, num_samples: int) -> int:
        return -(-num_samples // self.hop)

    #: frames computed at a time (a long utterance's temporaries stay the size of one block)
    block_frames = 3000

    @torch.inference_mode()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        b, t = padded.shape
        frames = -(-t // self.hop)
        tokens = torch.empty(b, frames, dtype=torch.int32, device=padded.device)  # filled block by block
        for f0 in range(0, frames, self.block_frames):
            f1 = min(frames, f0 + self.block_frames)
            x = padded[:, f0 * self.hop: f1 * self.hop]
            x = torch.nn.functional.pad(x, (0, (f1 - f0) * self.hop - x.shape[1])).view(b, f1 - f0, self.hop)
            pos = torch.arange(f0 * self.hop, f1 * self.hop, device=padded.device).view(f1 - f0, self.hop)
            valid = pos[None] < lengths[:, None, None]
            counts = valid.sum(-1).clamp(min=1)
            power = (x.square() * valid).sum(-1) / counts
            tokens[:, f0:f1] = (torch.round(2 * torch.log2(power + 1e-10)) + 80).clamp(0, 127)
        n = (lengths + self.hop - 1) // self.hop
        return [tokens[i, : int(n[i])].cpu().numpy() for i in range(b)]

    def describe(self) -> dict:
        return {"model": "energy_tokens", "hop": self.hop, "sample_rate": self.sample_rate, "vocab": 128}

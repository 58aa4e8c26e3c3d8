"""S3Tokenizers with random weights whose v1 codebooks spread tokens the way a learned one does, for tests and
benches (a random codebook collapses every frame onto a handful of tokens)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def spread_codebook(model, mels: Sequence[torch.Tensor], seed: int = 0) -> None:
    """v1: codebook rows = L2-normalised encoder outputs of the log-mels ``mels`` ([n_mels, T] each), drawn with
    replacement and perturbed by 0.3 standard deviations, then normalised again."""
    frames = []
    for mel in mels:
        hidden, _ = model.encoder(mel[None], torch.tensor([mel.shape[1]]))
        frames.append(F.normalize(hidden[0].float(), dim=-1))
    x = torch.cat(frames)
    g = torch.Generator().manual_seed(seed)
    rows = x[torch.randint(0, x.shape[0], (model.cfg.codebook_size,), generator=g)]
    rows = rows + 0.3 * x.std(0) * torch.randn(rows.shape, generator=g)
    model.quantizer.codebook.copy_(F.normalize(rows, dim=-1))

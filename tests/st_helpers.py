"""SpeechTokenizers with random weights that use their codebooks the way a trained one does, for tests.

A random SpeechTokenizer's codebooks are placeholders, so a short utterance would use a handful of codes.
Here every RVQ layer in turn gets codebook rows drawn from real residual frames of speech-like audio, so a
short utterance uses many code values across the whole range. The functions work on stok's model and on the
public package's alike: both hold their codebooks as ``_codebook`` modules with the released buffer names
(``inited``, ``cluster_size``, ``embed``, ``embed_avg``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from tests.conftest import speechlike


def nearest_rows(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``embed`` for each row of ``x`` (Euclidean, in float64)."""
    return torch.cdist(x.double(), embed.double()).argmin(1)


def speechlike_batch(seconds: float, seeds: Sequence[int]) -> torch.Tensor:
    """Speech-like waveforms ``[len(seeds), 1, samples]`` (one per seed)."""
    return torch.from_numpy(np.stack([speechlike(seconds, seed=s) for s in seeds]))[:, None]


@torch.no_grad()
def centre_latents(model, wav: torch.Tensor) -> torch.Tensor:
    """Shift the encoder's last bias so its latents on ``wav`` have zero mean per channel (a random encoder's
    frames sit in a tight cluster away from 0, where most of the latent is one shared offset); returns
    those centred latents ``[B, D, T]`` (one encoder pass)."""
    z = model.encoder(wav)
    z = z[0] if isinstance(z, tuple) else z
    mean = z.mean((0, 2))
    model.encoder.model[-1].conv.conv.bias -= mean
    return z - mean[:, None]


@torch.no_grad()
def fill_from_frames(codebooks: Sequence[torch.nn.Module], frames: torch.Tensor, seed: int = 0,
                     jitter: Union[float, Sequence[float]] = 0.5,
                     slots: Optional[Sequence[torch.Tensor]] = None) -> None:
    """Fill each codebook with rows drawn from the residual frames ``[N, D]`` of the layers before it, plus
    Gaussian noise of ``jitter`` (one value, or one per layer) times the residual's standard deviation.

    ``slots`` (one ``[N]`` tensor of distinct row indices per layer) gives frame ``i`` its own row
    ``slots[q][i]`` in layer ``q``; the other rows are then decoys, four standard deviations away from every
    frame, so encoding those frames gives exactly ``slots[q]`` when ``jitter`` is small. Without ``slots``
    every row is a frame drawn with replacement."""
    g = torch.Generator().manual_seed(seed)
    residual = frames.detach().double()
    jitters = [jitter] * len(codebooks) if isinstance(jitter, (int, float)) else list(jitter)
    for q, (cb, jitter) in enumerate(zip(codebooks, jitters)):
        k, (n, d) = cb.embed.shape[0], residual.shape
        std = residual.std()
        noise = torch.randn(k, d, generator=g, dtype=torch.float64)
        rows = residual[torch.randint(0, n, (k,), generator=g)]
        if slots is None:
            rows = rows + jitter * std * noise
        else:
            rows = rows + 4.0 * std * noise
            rows[slots[q]] = residual + jitter * std * noise[:n]
        cb.embed.copy_(rows)
        cb.embed_avg.copy_(rows)
        cb.cluster_size.fill_(1.0)
        cb.inited.fill_(1.0)
        residual = residual - cb.embed.double()[nearest_rows(residual, cb.embed)]


@torch.no_grad()
def move_codes(codebooks: Sequence[torch.nn.Module], codes: torch.Tensor, targets: List[int]) -> None:
    """Relabel codebook rows so that layer ``q`` uses code ``targets[q]``: the row of the code that
    ``codes[q]`` (``[n_q, frames]``, the codes of some utterance) uses most swaps places with row
    ``targets[q]``. A relabelling: the encoder picks the same vectors, only their indices change."""
    for cb, layer_codes, target in zip(codebooks, codes, targets):
        used = int(torch.bincount(layer_codes.flatten()).argmax())
        for name in ("embed", "embed_avg", "cluster_size"):
            buf = getattr(cb, name)
            buf[[used, target]] = buf[[target, used]].clone()


@torch.no_grad()
def flip_margins(model, z: torch.Tensor, ref: torch.Tensor, got: torch.Tensor) -> List[float]:
    """How near a tie each code flip is: for each frame whose codes ``ref`` and ``got`` (``[n_q, frames]``)
    differ, at its first differing layer, ``(d_ref - d_got) / |r|^2`` with ``r`` the residual there of the
    latents ``z`` (``[dimension, frames]``, the ones that gave ``got``) and ``d_x`` its squared distance to the
    row of the code ``x`` chose (fp64)."""
    out = []
    for f in (ref != got).any(0).nonzero().flatten().tolist():
        r = z[:, f].double()
        for q, layer in enumerate(model.quantizer.layers):
            embed = layer._codebook.embed.double()
            a, b = int(ref[q, f]), int(got[q, f])
            if a != b:
                out.append(float((((r - embed[a]) ** 2).sum() - ((r - embed[b]) ** 2).sum()) / (r ** 2).sum()))
                break
            r = r - embed[b]
    return out

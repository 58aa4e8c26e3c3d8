"""Per-utterance reconstruction metrics: multi-resolution log-mel distance, SI-SNR, STOI; codebook usage.

- ``mel_distance``: mean over the trainer's four log-mel resolutions (80 mels; n_fft/hop 1024/240 .. 128/30,
  as ``stok.models.speechtokenizer.mel.MelLoss``) of the L1 distance between log-mels, unweighted: the dev metric of
  stage 3 at every resolution, so numbers from training and evaluation compare.
- ``si_snr``: scale-invariant signal-to-noise ratio in dB (both signals made zero-mean).
- ``stoi``: short-time objective intelligibility from ``pystoi`` when it is installed, else None.
- ``CodeUsage``: per RVQ layer histogram of codes: codes used and perplexity (exp of the entropy).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch

from stok.models.speechtokenizer.mel import MelLoss, MelSettings


class MelDistance:
    def __init__(self, sample_rate: int, device: torch.device):
        self.loss = MelLoss(MelSettings(), sample_rate).to(device)

    @torch.no_grad()
    def __call__(self, ref: torch.Tensor, est: torch.Tensor) -> float:
        """Mean L1 of log-mels over the resolutions, for two 1-D signals of the same length."""
        parts = [float(self.loss.distance(i, ref[None].float(), est[None].float())[0])
                 for i in range(len(self.loss.mels))]
        return sum(parts) / len(parts)


def si_snr(ref: np.ndarray, est: np.ndarray, eps: float = 1e-8) -> float:
    ref = ref.astype(np.float64) - ref.mean()
    est = est.astype(np.float64) - est.mean()
    target = (est @ ref) / (ref @ ref + eps) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + eps) / (noise @ noise + eps)))


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> Optional[float]:
    try:
        from pystoi import stoi as _stoi
    except ImportError:
        return None
    return float(_stoi(ref, est, sample_rate, extended=False))


class CodeUsage:
    """Accumulates code histograms per RVQ layer."""

    def __init__(self, n_q: int, codebook_size: int):
        self.hist = np.zeros((n_q, codebook_size), dtype=np.int64)

    def add(self, codes: np.ndarray) -> None:
        """``codes [T, n_q]`` of one utterance."""
        for layer in range(codes.shape[1]):
            self.hist[layer] += np.bincount(codes[:, layer], minlength=self.hist.shape[1])[: self.hist.shape[1]]

    def summary(self) -> List[Dict[str, float]]:
        out = []
        for layer, h in enumerate(self.hist):
            total = int(h.sum())
            p = h[h > 0] / max(1, total)
            out.append({"layer": layer + 1, "frames": total, "codes_used": int((h > 0).sum()),
                        "perplexity": float(math.exp(-(p * np.log(p)).sum())) if total else 0.0})
        return out

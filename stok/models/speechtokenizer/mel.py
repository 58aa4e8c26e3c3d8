"""The SpeechTokenizer's multi-resolution log-mel spectrogram distance: its training loss and evaluation metric.

Spectrogram as the released trainer computes it: reflect padding of (n_fft - hop) / 2 on each side, no
centring, magnitude + 1e-9, Slaney-normalised HTK mel filters, log of the value clamped at 1e-5. Resolution i
uses n_fft/2^i, hop/2^i, win/2^i (1024/240, 512/120, 256/60, 128/30 by default, weights 45, 1, 1, 1); an optional
added L2 term gives the paper's L1 + L2 variant. With padded batches, only frames whose centre lies inside the
true length count. :class:`MelSettings` holds the parameters (the trainer's ``loss:`` section extends it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MelSettings:
    # multi-resolution log-mel L1: resolution i uses n_fft/2^i, hop/2^i, win/2^i (1024/240, 512/120, 256/60, 128/30)
    mel_lambdas: List[float] = field(default_factory=lambda: [45.0, 1.0, 1.0, 1.0])
    mel_n_fft: int = 1024
    mel_hop: int = 240
    mel_win: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: Optional[float] = None  # None: sample_rate / 2 (the released ``fmax_for_loss: null``)
    mel_l2_lambda: float = 0.0  # the paper's L1+L2 mel variant: weight of the added L2 (MSE) term per resolution


class MelSpectrogram(nn.Module):
    """Log-mel spectrogram as the released trainer computes it (``[B, T] -> [B, n_mels, frames]``)."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, win: int, n_mels: int = 80,
                 fmin: float = 0.0, fmax: Optional[float] = None):
        super().__init__()
        import torchaudio.functional as AF

        self.n_fft, self.hop, self.win = n_fft, hop, win
        with warnings.catch_warnings():  # 80 mels at n_fft 128/256 leave empty filters, as in the released trainer
            warnings.simplefilter("ignore", UserWarning)
            fb = AF.melscale_fbanks(n_fft // 2 + 1, fmin, fmax if fmax else sample_rate / 2, n_mels, sample_rate,
                                    norm="slaney", mel_scale="htk")
        self.register_buffer("fb", fb.T.contiguous(), persistent=False)  # [n_mels, n_freq]
        self.register_buffer("window", torch.hann_window(win), persistent=False)

    @property
    def pad(self) -> int:
        return (self.n_fft - self.hop) // 2

    def frames_mask(self, lengths: Optional[torch.Tensor], frames: int) -> Optional[torch.Tensor]:
        """Frames whose centre lies inside the true length."""
        if lengths is None:
            return None
        centre = torch.arange(frames, device=lengths.device) * self.hop + self.hop // 2
        return centre[None, :] < lengths[:, None]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(y.device.type, enabled=False):
            y = y.float()
            y = F.pad(y.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
            spec = torch.stft(y, self.n_fft, self.hop, self.win, window=self.window, center=False,
                              return_complex=True)
            mag = spec.abs() + 1e-9
            return torch.log(torch.clamp(self.fb @ mag, min=1e-5))


class MelLoss(nn.Module):
    """Weighted multi-resolution log-mel L1 (+ optional L2); returns (total, per-resolution L1 list)."""

    def __init__(self, cfg, sample_rate: int):
        super().__init__()
        self.lambdas = list(cfg.mel_lambdas)
        self.l2_lambda = cfg.mel_l2_lambda
        self.mels = nn.ModuleList([
            MelSpectrogram(sample_rate, cfg.mel_n_fft >> i, cfg.mel_hop >> i, cfg.mel_win >> i, cfg.n_mels,
                           cfg.fmin, cfg.fmax) for i in range(len(self.lambdas))])

    @staticmethod
    def _masked_mean(d: torch.Tensor, m: Optional[torch.Tensor]) -> torch.Tensor:
        if m is None:
            return d.mean()
        m = m[:, None, :].to(d.dtype)
        return (d * m).sum() / (m.sum() * d.shape[1]).clamp_min(1)

    def distance(self, i: int, x: torch.Tensor, x_hat: torch.Tensor,
                 lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(L1, L2) between log-mels of ``x`` and ``x_hat`` ``[B, T]`` at resolution i."""
        a, b = self.mels[i](x), self.mels[i](x_hat)
        n = min(a.shape[-1], b.shape[-1])
        a, b = a[..., :n], b[..., :n]
        m = self.mels[i].frames_mask(lengths, n)
        diff = a - b
        l1 = self._masked_mean(diff.abs(), m)
        l2 = self._masked_mean(diff.pow(2), m) if self.l2_lambda else torch.zeros((), device=x.device)
        return l1, l2

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        total = torch.zeros((), device=x.device)
        parts = []
        for i, lam in enumerate(self.lambdas):
            l1, l2 = self.distance(i, x, x_hat, lengths)
            total = total + lam * l1 + self.l2_lambda * l2
            parts.append(l1)
        return total, parts

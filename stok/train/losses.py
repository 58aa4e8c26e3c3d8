"""Losses of the SpeechTokenizer trainer.

Defaults follow the released trainer; the paper's variants are options (see ``LossConfig``).

- **Mel**: multi-resolution log-mel L1, 80 mels, resolution i at n_fft/2^i, hop/2^i, win/2^i
  (1024/240, 512/120, 256/60, 128/30 with weights 45, 1, 1, 1). Spectrogram as released: reflect padding
  of (n_fft - hop) / 2 on each side, no centring, magnitude + 1e-9, Slaney-normalised HTK mel filters,
  log of the value clamped at 1e-5. Optional added L2 term (the paper's L1 + L2).
  With padded batches, only frames whose centre lies inside the true length count.
- **Time-domain L1** over the true samples.
- **Distillation** between ``transform(RVQ-1)`` ``[B, T, D]`` and the teacher ``[B, T', D]``, cut to the
  shorter length and masked to the true frames:
  *D-axis* (default): ``-mean_{b,d} log sigmoid(cos_t(f[b, :, d], g[b, :, d]))``, the cosine taken **along time**
  per feature dimension (0.3133 when identical, log 2 = 0.6931 when orthogonal);
  *T-axis*: per-frame L1 + ``lambda_sim`` x ``-log sigmoid(cos_d)`` per frame;
  *k-means*: cross-entropy of a linear head on the semantic output against k-means unit labels.
- **Adversarial**: LSGAN (released; D: (1 - D(x))^2 + D(G)^2, G: (1 - D(G))^2) or hinge (paper/EnCodec;
  D: relu(1 - D(x)) + relu(1 + D(G)), G: relu(1 - D(G))), each a mean per sub-discriminator, summed over them.
- **Feature matching**: sum over sub-discriminators and layers of mean |D_l(x) - D_l(G)| (optionally divided by
  mean |D_l(x)|, the paper's normalisation); the real features carry no gradient.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from stok.models.speechtokenizer.mel import MelLoss, MelSpectrogram  # noqa: F401 - the trainer's mel loss


def sample_mask(lengths: Optional[torch.Tensor], total: int, device=None) -> Optional[torch.Tensor]:
    """``[B, total]`` float mask of the true samples (None when lengths is None)."""
    if lengths is None:
        return None
    ar = torch.arange(total, device=device if device is not None else lengths.device)
    return (ar[None, :] < lengths[:, None].to(ar.device)).float()


def frame_mask(lengths: Optional[torch.Tensor], frames: int, hop: int) -> Optional[torch.Tensor]:
    """``[B, frames]`` bool mask of codec frames ``ceil(length / hop)`` per item."""
    if lengths is None:
        return None
    n = (lengths + hop - 1) // hop
    return torch.arange(frames, device=lengths.device)[None, :] < n[:, None]


def recon_l1(x: torch.Tensor, x_hat: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Time-domain L1 ``[B, T]`` over the true samples."""
    n = min(x.shape[-1], x_hat.shape[-1])
    d = (x[..., :n].float() - x_hat[..., :n].float()).abs()
    if mask is None:
        return d.mean()
    m = mask[..., :n]
    return (d * m).sum() / m.sum().clamp_min(1)


def _cut(feature: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]):
    n = min(feature.shape[1], target.shape[1])
    f, t = feature[:, :n].float(), target[:, :n].float()
    m = mask[:, :n] if mask is not None else None
    return f, t, m


def d_axis_distill(feature: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``-mean log sigmoid(cos)`` with cos taken along time for each feature dimension (``[B, T, D]``)."""
    f, t, m = _cut(feature, target, mask)
    if m is not None:  # padded frames drop out of both dot products and norms
        mm = m[..., None].to(f.dtype)
        f, t = f * mm, t * mm
    cos = F.cosine_similarity(f, t, dim=1)  # [B, D]
    return -F.logsigmoid(cos).mean()


def t_axis_distill(feature: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   lambda_sim: float = 1.0) -> torch.Tensor:
    """Per-frame L1 + ``lambda_sim`` x ``-log sigmoid(cos)``, cos along the feature dimension."""
    f, t, m = _cut(feature, target, mask)
    l1 = (f - t).abs().mean(-1)  # [B, T]
    sim = -F.logsigmoid(F.cosine_similarity(f, t, dim=-1))  # [B, T]
    per_frame = l1 + lambda_sim * sim
    if m is None:
        return per_frame.mean()
    m = m.to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp_min(1)


def kmeans_ce(logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of ``logits [B, T, K]`` against unit labels ``[B, T']`` (cut to the shorter, masked)."""
    n = min(logits.shape[1], labels.shape[1])
    lab = labels[:, :n].long().clone()
    if mask is not None:
        lab[~mask[:, :n].bool()] = -100
    return F.cross_entropy(logits[:, :n].float().reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100)


def distill_loss(cfg, semantic: torch.Tensor, logits: Optional[torch.Tensor], teacher: torch.Tensor,
                 mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The distillation of ``cfg.distill_type`` (a ``loss:`` section): k-means cross-entropy of the head's
    ``logits``, or T-axis / D-axis distillation of the ``semantic`` output."""
    if cfg.distill_type == "kmeans":
        return kmeans_ce(logits, teacher, mask)
    if cfg.distill_type == "t_axis":
        return t_axis_distill(semantic, teacher, mask, cfg.lambda_sim)
    return d_axis_distill(semantic, teacher, mask)


def discriminator_loss(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor], kind: str = "lsgan"):
    """Sum over sub-discriminators; returns (total, per-sub-discriminator list)."""
    parts = []
    for r, g in zip(real, fake):
        r, g = r.float(), g.float()
        if kind == "lsgan":
            parts.append(torch.mean((1 - r) ** 2) + torch.mean(g ** 2))
        else:
            parts.append(torch.mean(F.relu(1 - r)) + torch.mean(F.relu(1 + g)))
    return sum(parts), parts


def generator_adv_loss(fake: Sequence[torch.Tensor], kind: str = "lsgan") -> torch.Tensor:
    total = 0.0
    for g in fake:
        g = g.float()
        total = total + (torch.mean((1 - g) ** 2) if kind == "lsgan" else torch.mean(F.relu(1 - g)))
    return total


def feature_matching(fmaps_real, fmaps_fake, normalize: bool = False) -> torch.Tensor:
    total = 0.0
    for dr, dg in zip(fmaps_real, fmaps_fake):
        for r, g in zip(dr, dg):
            r = r.detach().float()
            d = torch.mean(torch.abs(r - g.float()))
            if normalize:
                d = d / r.abs().mean().clamp_min(1e-5)
            total = total + d
    return total


def codebook_stats(codes: torch.Tensor, codebook_size: int, mask: Optional[torch.Tensor] = None):
    """Per layer of ``codes [n_q, B, T]``: (number of codes used, perplexity = exp(entropy of the code histogram))."""
    out = []
    for layer in codes:
        vals = layer[mask.bool()] if mask is not None else layer.reshape(-1)
        if vals.numel() == 0:
            out.append((0, 0.0))
            continue
        hist = torch.bincount(vals.long().reshape(-1).cpu(), minlength=codebook_size).double()
        p = hist / hist.sum()
        ent = -(p[p > 0] * p[p > 0].log()).sum().item()
        out.append((int((hist > 0).sum()), math.exp(ent)))
    return out


def as_float_dict(d: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in d.items()}


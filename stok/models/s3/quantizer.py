"""S3Tokenizer quantizers, always computed in float32 (also when the encoder runs in bf16/fp16).

- v1: VQ. Hidden states L2-normalised; token = the Euclidean-nearest codebook row
  (distance |x|^2 - 2 x.e + |e|^2, in the official graph's order; first index on ties). With ``fast_cpu`` the
  product x.e runs through oneDNN with the codebook prepacked (``stok.models.packed_linear``).
- v2/v3: FSQ. ``project_in`` Linear(D -> 8); digit_i = round(0.999 * tanh(h_i)) + 1 in {0, 1, 2};
  token = sum_i digit_i * 3^i (dimension 0 least significant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stok.models.packed_linear import WeightPack
from stok.models.s3.config import S3Config


class VQQuantizer(nn.Module):
    fast_cpu: bool = True

    def __init__(self, cfg: S3Config):
        super().__init__()
        self.codebook = nn.Parameter(torch.zeros(cfg.codebook_size, cfg.d_model))
        self._pack = WeightPack()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = F.normalize(hidden.float(), p=2.0, dim=-1)
        e = self.codebook.float()
        xe = self._pack.linear(x, e) if self.fast_cpu else x @ e.t()
        dist = (x.pow(2).sum(-1, keepdim=True) - 2.0 * xe) + e.pow(2).sum(-1)
        return dist.argmin(dim=-1).to(torch.int32)


class FSQQuantizer(nn.Module):
    def __init__(self, cfg: S3Config):
        super().__init__()
        self.project_in = nn.Linear(cfg.d_model, cfg.fsq_dims)
        self.levels = cfg.fsq_levels
        self.scale = cfg.fsq_scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = F.linear(hidden.float(), self.project_in.weight.float(), self.project_in.bias.float())
        digits = torch.round(torch.tanh(h) * torch.tensor(self.scale, dtype=torch.float32)) + (self.levels - 1) // 2
        # powers built here in float32 (a buffer would follow a model-wide .to(bfloat16) and lose 3^7 = 2187)
        powers = float(self.levels) ** torch.arange(h.shape[-1], device=h.device, dtype=torch.float32)
        return (digits * powers).sum(-1).to(torch.int32)


def build_quantizer(cfg: S3Config) -> nn.Module:
    return VQQuantizer(cfg) if cfg.quantizer == "vq" else FSQQuantizer(cfg)

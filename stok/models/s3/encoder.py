"""The S3Tokenizer encoder: Whisper-style pre-LayerNorm transformer over a 2-conv stem.

Batched inference gives the tokens of one-at-a-time inference because padding never reaches a
valid position: padded frames are zeroed before each conv (the solo run sees the conv's own zero
padding there), lengths are recomputed after each stride (ceil(L / stride)), padded keys are
masked in attention, and the FSMN memory (v2, v3) masks its input and output.

Module and parameter names follow the official graphs' module scopes (``conv1``, ``blocks.N.attn.query``,
``blocks.N.mlp.0`` ...), which is what ``stok.models.s3.onnx_import`` maps onto.

CPU kernels (``fast_cpu``, on by default; ``S3Tokenizer.set_fast_cpu(False)`` gives the plain reference path):
the Linear layers run through oneDNN with prepacked weights (``stok.models.packed_linear``), the FSMN's depthwise
convolution is a sum of 31 shifted multiply-adds on the [B, T, D] layout (oneDNN's depthwise kernel is ~5x slower
here), and attention gets no mask when no frame is padded. Same products, other summation orders: hidden states
agree to float32 rounding, so only near-tie tokens can change (tests/test_cpu_fast_paths.py).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from stok.models.packed_linear import PackedLinear
from stok.models.s3.config import S3Config


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (weights kept in float32), result in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def lengths_after(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """Valid outputs of a kernel-3, padding-1 conv with ``stride``: ceil(L / stride)."""
    return torch.div(lengths + stride - 1, stride, rounding_mode="floor")


def rotary_tables(n: int, head_dim: int, theta: float, device, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, head_dim] for rotate-half rotary embedding (the two halves share frequencies)."""
    half = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[:half].float() / head_dim))
    angles = torch.outer(torch.arange(n, device=device).float(), freqs)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def fsmn_shifted_sum(vm: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Depthwise ``conv1d(vm [B, T, D] as channels, taps [D, 1, K], zero padding (K-1)/2)`` as K shifted
    multiply-adds in the [B, T, D] layout (tap 0 first, as a direct convolution sums)."""
    k = taps.shape[-1]
    t = vm.shape[1]
    w = taps[:, 0, :].t().contiguous()  # [K, D]
    vp = F.pad(vm, (0, 0, (k - 1) // 2, (k - 1) // 2))
    out = vp[:, 0:t] * w[0]
    for j in range(1, k):
        out.addcmul_(vp[:, j: j + t], w[j])
    return out


class Attention(nn.Module):
    fast_cpu: bool = True

    def __init__(self, cfg: S3Config):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.query = PackedLinear(d, d)
        self.key = PackedLinear(d, d, bias=False)
        self.value = PackedLinear(d, d)
        self.out = PackedLinear(d, d)
        self.fsmn_block = (nn.Conv1d(d, d, cfg.fsmn_kernel, padding=(cfg.fsmn_kernel - 1) // 2, groups=d, bias=False)
                           if cfg.fsmn_kernel else None)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, frame_mask: torch.Tensor,
                rope: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads
        q = self.query(x).view(b, t, h, -1)
        k = self.key(x).view(b, t, h, -1)
        v = self.value(x)
        if rope is not None:
            cos, sin = rope  # [T, head_dim] -> broadcast over batch and heads
            cos, sin = cos[:, None, :], sin[:, None, :]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        scale = q.shape[-1] ** -0.25  # q and k each scaled, as the official graphs do
        att = F.scaled_dot_product_attention(
            (q * scale).transpose(1, 2), (k * scale).transpose(1, 2), v.view(b, t, h, -1).transpose(1, 2),
            attn_mask=key_mask, scale=1.0)
        out = self.out(att.transpose(1, 2).reshape(b, t, d))
        if self.fsmn_block is not None:
            vm = v * frame_mask
            if self.fast_cpu and vm.device.type == "cpu" and not torch.is_grad_enabled():
                mem = fsmn_shifted_sum(vm, self.fsmn_block.weight)
            else:
                mem = self.fsmn_block(vm.transpose(1, 2)).transpose(1, 2)
            out = out + (mem + vm) * frame_mask
        return out


class Block(nn.Module):
    def __init__(self, cfg: S3Config):
        super().__init__()
        d = cfg.d_model
        self.attn_ln = LayerNorm32(d, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.mlp_ln = LayerNorm32(d, eps=cfg.ln_eps)
        self.mlp = nn.Sequential(PackedLinear(d, d * cfg.mlp_ratio), nn.GELU(), PackedLinear(d * cfg.mlp_ratio, d))

    def forward(self, x, key_mask, frame_mask, rope):
        x = x + self.attn(self.attn_ln(x), key_mask, frame_mask, rope)
        return x + self.mlp(self.mlp_ln(x))


class Encoder(nn.Module):
    fast_cpu: bool = True

    def __init__(self, cfg: S3Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, 3, stride=cfg.conv1_stride, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        if cfg.positions == "learned":
            self.positional_embedding = nn.Parameter(torch.zeros(cfg.n_ctx, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self._rope_cache = None

    def _rope(self, n: int, device, dtype):
        c = self._rope_cache
        if c is None or c[0].shape[0] < n or c[0].device != device or c[0].dtype != dtype:
            size = max(n, 1024)
            c = rotary_tables(size, self.cfg.head_dim, self.cfg.rope_theta, device, dtype)
            self._rope_cache = c
        return c[0][:n], c[1][:n]

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mels [B, n_mels, T] (padding anywhere past each length), lengths [B] -> hidden [B, T', D], lengths [B]."""
        dtype = self.conv1.weight.dtype
        x = mels.to(dtype)
        t = x.shape[-1]
        lengths = lengths.to(device=x.device, dtype=torch.long)
        x = x * (torch.arange(t, device=x.device) < lengths[:, None])[:, None, :].to(dtype)
        x = F.gelu(self.conv1(x))
        lengths = lengths_after(lengths, self.cfg.conv1_stride)
        x = x * (torch.arange(x.shape[-1], device=x.device) < lengths[:, None])[:, None, :].to(dtype)
        x = F.gelu(self.conv2(x))
        lengths = lengths_after(lengths, 2)
        t = x.shape[-1]
        x = x.transpose(1, 2)
        valid = torch.arange(t, device=x.device)[None, :] < lengths[:, None]  # [B, T']
        rope = None
        if self.cfg.positions == "learned":
            if t > self.cfg.n_ctx:
                raise ValueError(f"{t} positions exceed the learned table ({self.cfg.n_ctx}); use long-audio windows")
            x = x + self.positional_embedding[:t].to(dtype)
        else:
            rope = self._rope(t, x.device, dtype)
        key_mask = valid[:, None, None, :]  # [B, 1, 1, T']: True = attend
        if self.fast_cpu and x.device.type == "cpu" and bool(valid.all()):
            key_mask = None  # nothing padded: the unmasked kernel
        frame_mask = valid[:, :, None].to(dtype)
        x = x.contiguous()
        for block in self.blocks:
            x = block(x, key_mask, frame_mask, rope)
        return x, lengths


def init_random(module: nn.Module, seed: int, std: float = 0.02) -> None:
    """Deterministic random weights (demo and benchmark models): normal(0, std) matrices,
    normal(0, std) biases, LayerNorm weight 1 + normal, FSMN taps normal / sqrt(kernel)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("_ln.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "fsmn_block" in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif name.endswith("conv1.weight") or name.endswith("conv2.weight"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1] * p.shape[2]))
            elif name.endswith("codebook"):
                p.copy_(F.normalize(torch.randn(p.shape, generator=g), dim=-1))
            elif p.dim() == 2 and not name.endswith("positional_embedding"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))

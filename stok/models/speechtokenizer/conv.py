"""Weight-normed, length-aware 1-D convolutions of the SEANet encoder/decoder (EnCodec's ``SConv1d`` rules).

Every module here maps ``(x [B, C, T], lengths [B] or None) -> (y, out_lengths)`` and gives each batch item
exactly what it would get alone (``lengths=None``: the whole tensor is one item per row):

- :class:`SConv1d`: non-causal conv. ``padding_total = (k - 1) * dilation - (stride - 1)``, split
  ``right = total // 2`` (plus the extra right padding that makes the output ``ceil(L / stride)`` frames),
  ``left = total - right``; reflect padding, with EnCodec's zero-extension first when the input is not longer
  than the padding. With ``lengths``, the padded input is built by one vectorised gather with per-item reflected
  indices, so the right-end reflection reads each item's own last samples and nothing past an item's length is
  ever read.
- :class:`SConvTranspose1d`: transposed conv; ``k - stride`` output samples are trimmed (``right = total // 2``,
  ``left`` the rest); inputs past an item's length are zeroed first; output lengths are ``L * stride``.

Parameter names follow the released checkpoint (old ``torch.nn.utils.weight_norm`` layout):
``conv.conv.{weight_g, weight_v, bias}`` and ``convtr.convtr.{weight_g, weight_v, bias}``, ``weight_g`` shaped
``[dim0, 1, 1]``. The weight-norm parametrization is implemented here (``weight = g * v / ||v||``, norm over all
dims but 0, ``g = ||v||`` at init) rather than with the deprecated ``torch.nn.utils.weight_norm`` hook; the weight
is computed by torch's primitive ``torch._weight_norm`` (the op behind both the old hook and
``torch.nn.utils.parametrizations.weight_norm``), so it is bitwise the weight the public package computes and
near-tie codes cannot flip between the two (a hand-written ``v * (g / ||v||)`` differs by ~1 ulp).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Lengths = Optional[torch.Tensor]


class _WeightNormed(nn.Module):
    """Holds ``weight_g``, ``weight_v`` and ``bias``; initialised as ``nn.Conv1d`` + ``weight_norm`` would be."""

    def _init_params(self, shape: Tuple[int, int, int], bias_size: int) -> None:
        v = torch.empty(shape)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        fan_in = shape[1] * shape[2]  # as torch computes it for Conv1d [out, in, k] and ConvTranspose1d [in, out, k]
        bound = 1.0 / math.sqrt(fan_in)
        self.weight_g = nn.Parameter(_norm_except_dim0(v))
        self.weight_v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.empty(bias_size).uniform_(-bound, bound))

    @property
    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)  # g * v / ||v||, norm over dims 1..


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)


class WNConv1d(_WeightNormed):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        self._init_params((out_channels, in_channels, kernel_size), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.training and w.shape[-1] == 1 and self.stride == 1 and x.device.type == "cpu":
            # a pointwise conv in training on CPU as one matmul: oneDNN's conv kernels are slow for the few
            # channels of the high-rate layers of small models (~3x, forward + backward, at 8 channels x 16 kHz);
            # same values to float rounding. Inference keeps F.conv1d (bitwise the released package's codes).
            return torch.matmul(w[:, :, 0], x) + self.bias[:, None]
        return F.conv1d(x, w, self.bias, stride=self.stride, dilation=self.dilation)


class WNConvTranspose1d(_WeightNormed):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self._init_params((in_channels, out_channels, kernel_size), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, stride=self.stride)


class SConv1d(nn.Module):
    """Non-causal weight-normed conv with reflect padding; output ``ceil(L / stride)`` frames per item."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        if stride > 1 and dilation > 1:
            raise ValueError(f"SConv1d: stride {stride} with dilation {dilation} is not supported (SEANet uses one "
                             "or the other)")
        self.conv = nn.Module()  # the released layout has one more level: conv.conv.weight_g
        self.conv.conv = WNConv1d(in_channels, out_channels, kernel_size, stride, dilation)
        self.stride = stride
        self.padding_total = (kernel_size - 1) * dilation - (stride - 1)
        self.pad_right = self.padding_total // 2
        self.pad_left = self.padding_total - self.pad_right

    def forward(self, x: torch.Tensor, lengths: Lengths = None) -> Tuple[torch.Tensor, Lengths]:
        s, T = self.stride, x.shape[-1]
        if self.padding_total == 0 and s == 1:  # 1x1 conv: nothing to pad, positions are independent
            return self.conv.conv(x), lengths
        if lengths is None:
            extra = -(-T // s) * s - T
            x = reflect_pad(x, self.pad_left, self.pad_right + extra)
            return self.conv.conv(x), None
        out_lengths = -(-lengths // s)
        right = self.pad_right + out_lengths * s - lengths  # per item: fixed right pad + its own extra
        width = self.pad_left + -(-T // s) * s + self.pad_right
        x = reflect_pad_per_item(x, lengths, self.pad_left, right, width)
        return self.conv.conv(x), out_lengths


class SConvTranspose1d(nn.Module):
    """Non-causal weight-normed transposed conv; output ``L * stride`` samples per item."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.convtr = nn.Module()  # released layout: convtr.convtr.weight_g
        self.convtr.convtr = WNConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.stride = stride
        total = kernel_size - stride
        self.trim_right = total // 2
        self.trim_left = total - self.trim_right

    def forward(self, x: torch.Tensor, lengths: Lengths = None) -> Tuple[torch.Tensor, Lengths]:
        if lengths is not None:  # frames past an item's end would otherwise add to its last output samples
            x = x.masked_fill(~length_mask(lengths, x.shape[-1])[:, None, :], 0.0)
        y = self.convtr.convtr(x)
        y = y[..., self.trim_left: y.shape[-1] - self.trim_right]
        return y, None if lengths is None else lengths * self.stride


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool, True before each item's length."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding of the last axis; inputs not longer than the padding are zero-extended first."""
    T = x.shape[-1]
    longest = max(left, right)
    if T > longest:
        return F.pad(x, (left, right), mode="reflect")
    x = F.pad(x, (0, longest - T + 1))
    return F.pad(x, (left, right), mode="reflect")[..., : left + T + right]


def reflect_pad_per_item(x: torch.Tensor, lengths: torch.Tensor, left: int, right: torch.Tensor,
                         width: int) -> torch.Tensor:
    """Per item ``b``: :func:`reflect_pad` of ``x[b, :, :lengths[b]]`` by ``(left, right[b])``, zero-filled to
    ``width``. One gather; samples at or past an item's length are never read.

    For an item of length ``L`` (zero-extended to ``L' = max(L, max(left, right) + 1)`` when short, as
    :func:`reflect_pad` does), padded position ``p`` reads source ``j = p - left`` reflected into ``[0, L')``:
    ``-j`` left of 0, ``2 (L' - 1) - j`` right of ``L' - 1``; sources at or past ``L`` are zeros.
    """
    B, C, T = x.shape
    j = torch.arange(width, device=x.device) - left  # [W]
    L = lengths[:, None]  # [B, 1]
    longest = torch.clamp(right, min=left)[:, None]
    Lx = torch.where(L > longest, L, longest + 1)
    src = torch.where(j < 0, -j, torch.where(j >= Lx, 2 * (Lx - 1) - j, j))  # [B, W]
    valid = (src >= 0) & (src < L)
    src = src.clamp(0, T - 1)
    y = x.gather(2, src[:, None, :].expand(B, C, width))
    return y.masked_fill(~valid[:, None, :], 0.0)

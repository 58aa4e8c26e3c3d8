"""HuBERT's convolutions on CPU, fp32: the conv front end and the positional convolution, faster and exact.

torchaudio runs the front end as seven ``Conv1d`` in the [C, T] layout, each followed by its norm and a
separate GELU over tensors of up to 512 x 50 frames per 10 ms of audio (65 MB for 10 s): oneDNN's 1-D
convolutions reach ~80 GFLOP/s per core here, and the first layer (one input channel, kernel 10, stride 5)
with its whole-utterance GroupNorm and GELU is memory-bound (~150 ms for 10 s of audio). Here, per utterance:

- the layout is [T, C] throughout; a kernel-k, stride-s layer is a matrix product of the im2col rows
  (``as_strided`` windows, copied block by block, ~1000 output frames at a time so each block stays in cache)
  with the kernel as a prepacked oneDNN weight (``stok.models.packed_linear``), GELU fused into the product;
- layer 0's GroupNorm (one group per channel, statistics over the utterance) is folded into that product: its
  input is linear in the waveform windows, so each channel's mean and variance come exactly (float64) from the
  windows' 10-dim mean and covariance, and the norm becomes a per-channel scale of the kernel and a bias, with
  the windows centred first (no cancellation). LayerNorm front ends (large, xlarge) normalise each block's
  [rows, C] output over C;
- the positional convolution (kernel 128, 16 groups) runs as a channels-last 2-D convolution (~100 instead of
  ~70 GFLOP/s), its weight-normed kernel computed once per weight change.

Same products, other summation orders (and float64 GroupNorm statistics): features agree with torchaudio to
float32 rounding (tests/test_cpu_fast_paths.py: <= 1e-4 at full size).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from stok.models.packed_linear import WeightPack, packing_available, tensor_key

BLOCK_ROWS = 1024  # output frames per im2col block (measured best on 1 MB L2 caches: 512-4096 within 3%)


def _im2col_layout(weight: torch.Tensor) -> torch.Tensor:
    """Conv1d kernel [out, in, k] -> [out, k * in], matching [T, C] windows flattened tap-major."""
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)


def _layer_norm_kind(norm: Optional[nn.Module]) -> str:
    if norm is None:
        return "none"
    if isinstance(norm, nn.GroupNorm):
        return "group" if norm.num_groups == norm.num_channels and norm.affine else "unsupported"
    if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine:  # torchaudio's transposing LayerNorm
        return "layer"
    return "unsupported"


class FastFrontend:
    """``feature_extractor(wave[None], None)[0][0]`` of a torchaudio wav2vec2/HuBERT front end, for one 1-D
    waveform on CPU in float32 (see module docstring)."""

    def __init__(self, feature_extractor: nn.Module):
        self.fe = feature_extractor
        self.packs = [WeightPack() for _ in feature_extractor.conv_layers]

    @staticmethod
    def supports(feature_extractor: nn.Module) -> bool:
        layers = getattr(feature_extractor, "conv_layers", None)
        if layers is None or not packing_available():
            return False
        for i, block in enumerate(layers):
            conv = block.conv
            if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
                return False
            kind = _layer_norm_kind(block.layer_norm)
            if kind == "unsupported" or (kind == "group" and i != 0) or (i == 0 and conv.in_channels != 1):
                return False
        return True

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        x = self._first(wave.reshape(-1))
        for i in range(1, len(self.fe.conv_layers)):
            x = self._layer(i, x)
        return x

    def _first(self, wave: torch.Tensor) -> torch.Tensor:
        block = self.fe.conv_layers[0]
        conv, kind = block.conv, _layer_norm_kind(block.layer_norm)
        k, s = conv.kernel_size[0], conv.stride[0]
        windows = wave.unfold(0, k, s)  # [T0, k] view
        w = conv.weight[:, 0, :]  # [C, k]
        norm = block.layer_norm
        if kind == "none":
            return self.packs[0].linear(windows, w, conv.bias, "gelu")
        if kind == "layer":
            y = self.packs[0].linear(windows, w, conv.bias)
            return F.gelu(F.layer_norm(y, y.shape[-1:], norm.weight, norm.bias, norm.eps))
        w64, u64 = w.double(), windows.double()
        mean_u = u64.mean(0)
        centred = u64 - mean_u
        cov = centred.t() @ centred / windows.shape[0]
        var = ((w64 @ cov) * w64).sum(1)  # the bias only shifts the mean, which centring removes
        scale = norm.weight.double() * torch.rsqrt(var + norm.eps)
        folded = (w64 * scale[:, None]).float()
        # per-utterance weight: plain (unpacked) oneDNN product, no reorder of a 512 x 10 matrix to amortise
        return torch.ops.mkldnn._linear_pointwise(centred.float(), folded, norm.bias.float().contiguous(),
                                                  "gelu", [], "none")

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        block = self.fe.conv_layers[i]
        conv, kind = block.conv, _layer_norm_kind(block.layer_norm)
        k, s = conv.kernel_size[0], conv.stride[0]
        t_in, c_in = x.shape
        t_out = (t_in - k) // s + 1
        if t_out < 1:
            return x.new_zeros(0, conv.out_channels)
        out = x.new_empty(t_out, conv.out_channels)
        x = x.contiguous()
        for a in range(0, t_out, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, t_out - a)
            cols = x.as_strided((rows, k * c_in), (s * c_in, 1), x.storage_offset() + a * s * c_in).contiguous()
            if kind == "none":
                out[a: a + rows] = self.packs[i].linear(cols, conv.weight, conv.bias, "gelu", _im2col_layout)
            else:
                y = self.packs[i].linear(cols, conv.weight, conv.bias, "none", _im2col_layout)
                norm = block.layer_norm
                out[a: a + rows] = F.gelu(F.layer_norm(y, y.shape[-1:], norm.weight, norm.bias, norm.eps))
        return out


class FastPosConv:
    """``pos_conv_embed(x)`` (grouped conv, drop the last frame for even kernels, GELU) of torchaudio's
    ``ConvolutionalPositionalEmbedding`` as a channels-last 2-D convolution; ``x`` [B, T, D] -> [B, T, D]."""

    def __init__(self, pos_conv: nn.Module):
        self.pc = pos_conv
        self._key = None
        self._weight: Optional[torch.Tensor] = None

    def kernel(self) -> torch.Tensor:
        conv = self.pc.conv
        key = tuple(tensor_key(p) for p in conv.parameters())
        if key != self._key:
            with torch.no_grad():  # weight norm applied once, not at every call
                w = conv.weight.detach()
                self._weight = w[:, :, None, :].contiguous(memory_format=torch.channels_last)
            self._key = key
        return self._weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.pc.conv
        b, t, d = x.shape
        x4 = x.transpose(1, 2)[:, :, None, :].contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x4, self.kernel(), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups)
        y = y[:, :, 0, :t] if self.pc.num_remove else y[:, :, 0, :]
        return F.gelu(y).transpose(1, 2)

"""Inference fast path of ``SpeechTokenizer.encode`` on CPU in fp32, for ``stok-dump-codes``: one padded batch
-> the codes of each item as ``model.encode`` gives them for that item alone (the reference), up to flips at
float near-ties.

It reads the model's own modules and parameters (state dict, training and ``model.encode`` are untouched).
The batch is cut into groups of similar lengths (:mod:`~stok.models.speechtokenizer.length_groups`); per group:

- **Convolutions before the LSTM item by item**, each item at its own length: exactly the reference's
  convolution calls (one item's activations also stay closer to the cache than a batch's). The weight norm
  (``torch._weight_norm``, the model's own call) is folded once per conv and cached
  (:class:`FoldedWeights`: rebuilt when a parameter's storage or version counter changes). Each conv's padded
  input is one buffer: the activation before it writes straight into it, then the reflections are copied in.
- **LSTM on the group's padded batch**, layer by layer and direction by direction
  (:mod:`~stok.models.speechtokenizer.batched_lstm`): the recurrent product becomes a matrix product over
  the items, and the weights are reordered once per group instead of once per item.
- **The convolution after the LSTM on the padded batch**, each item with its own reflect padding: oneDNN's
  convolutions give each item bitwise the one-item result; where torch would run the one-item call with its
  native kernel instead (1x1 convs with one thread; at most 20480 input values), that item runs alone.
- **RVQ** item by item: exactly ``quantizer.encode`` of the item's latent.

Two steps round differently from the reference, each by about one float32 ulp where it does: the LSTM on two
or more items (oneDNN's matrix-matrix product sums in another order than its matrix-vector one), and the
ELU, computed from torch's vectorised ``exp`` (:func:`elu_by_exp`) where ``F.elu`` calls a scalar ``expm1``
(6x slower; it also rounds the last elements of each chunk it splits a tensor into differently, so its
result depends on the tensor's shape). Latents move by ~1e-7 relative, which flips a code only where two
codes are that close; ``bench/st_encode.py`` counts the flips and prints their margins. With
``exact_elu=True`` and batches of fewer than :data:`~stok.models.speechtokenizer.batched_lstm.MIN_BATCH`
items the codes are bitwise the reference's (tested). ``exact=True`` is that for any batch (ELU by the model's
module, every LSTM item by item through ``nn.LSTM``): the reference's codes bitwise, with the folded weight
norms, per-item convolutions and the batched last convolution still saving time (``stok-dump-codes
--cpu_kernels auto`` where that is faster on the CPU, ``stok.models.speechtokenizer.dump_model``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from stok.models.speechtokenizer.batched_lstm import MIN_BATCH, lstm_padded
from stok.models.speechtokenizer.conv import SConv1d, _WeightNormed, reflect_pad
from stok.models.speechtokenizer.length_groups import length_groups
from stok.models.speechtokenizer.seanet import ResidualBlock, SLSTM

#: a group of the batch costs about as much as this many frames of padded work (the per-call weight reorders of
#: the LSTM and the last convs: ~75 ms on 2 cores; ~0.6 ms per frame), see :mod:`.length_groups`
GROUP_COST_FRAMES = 125
#: torch runs a one-item conv of at most this many input values with its native kernel, not oneDNN
NATIVE_MAX_NUMEL = 20480


class FoldedWeights:
    """``torch._weight_norm`` of each weight-normed conv, computed once and kept while its parameters stay."""

    def __init__(self):
        self._cache: Dict[int, Tuple[tuple, torch.Tensor]] = {}

    @staticmethod
    def _stamp(m: _WeightNormed) -> tuple:
        v, g = m.weight_v, m.weight_g
        return (v.data_ptr(), v._version, g.data_ptr(), g._version, v.dtype, v.device)

    def __call__(self, m: _WeightNormed) -> torch.Tensor:
        stamp = self._stamp(m)
        hit = self._cache.get(id(m))
        if hit is None or hit[0] != stamp:
            with torch.no_grad():
                hit = (stamp, m.weight.detach())
            self._cache[id(m)] = hit
        return hit[1]


def one_item_uses_onednn(conv: SConv1d, channels: int, width: int) -> bool:
    """Whether torch runs ``conv`` on one item of ``channels x width`` (padded) input with oneDNN (fp32 CPU):
    its rule for 1-D (as 2-D) convolutions."""
    c = conv.conv.conv
    k = c.weight_v.shape[-1]
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    first = c.stride > 1 or c.dilation > 1 or k != 1 or torch.get_num_threads() > 1
    return first and channels * width > NATIVE_MAX_NUMEL


def conv_is_pointwise(conv: SConv1d) -> bool:
    return conv.padding_total == 0 and conv.stride == 1


def _conv(conv: SConv1d, weights: FoldedWeights, x: torch.Tensor) -> torch.Tensor:
    c = conv.conv.conv
    return F.conv1d(x, weights(c), c.bias, stride=c.stride, dilation=c.dilation)


def elu_by_exp(x: torch.Tensor, out: torch.Tensor) -> None:
    """``out[...] = elu(x)`` (alpha 1) as ``max(x, exp(min(x, 0)) - 1)``: torch's vectorised ``exp`` instead of
    its scalar ``expm1`` (~6x faster); differs from ``F.elu`` by at most ~6e-8, on part of the negative
    inputs (``exp(x) - 1 >= x`` for ``x <= 0``, so the maximum picks the ELU branch there). ``out`` may be ``x``."""
    t = out if out.data_ptr() != x.data_ptr() else torch.empty_like(x)
    torch.clamp(x, max=0, out=t)
    t.exp_().sub_(1)
    torch.maximum(x, t, out=out)


class FastEncoder:
    """``encode(wav [B, 1, T], lengths [B]) -> codes [n_q, B, ceil(T / hop)]`` on CPU, fp32 (see module doc)."""

    def __init__(self, model: nn.Module, exact_elu: bool = False, exact: bool = False):
        self.model = model
        self.weights = FoldedWeights()
        #: True: ELU by the model's module (``F.elu``) on the tensors the model gives it, bitwise the reference
        self.exact_elu = exact_elu or exact
        #: True: also every LSTM item by item (``nn.LSTM`` on each item alone): codes bitwise the reference's
        self.exact = exact

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None, n_q: Optional[int] = None
               ) -> torch.Tensor:
        """Codes ``[n_q, B, ceil(T / hop)]`` of ``wav [B, 1, T]`` (or ``[B, T]``) with ``lengths [B]`` samples
        (None: all ``T``); code 0 past an item's frames, as ``model.encode``."""
        out = None
        for b, z in enumerate(self._latents(wav, lengths)):  # exactly quantizer.encode of the latent alone
            codes = self.model.quantizer.encode(z[None], None, n_q)
            if out is None:
                out = codes.new_zeros(codes.shape[0], wav.shape[0], self.model.frames(wav.shape[-1]))
            out[:, b, :z.shape[-1]] = codes[:, 0]
        return out

    @torch.inference_mode()
    def latents(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Encoder output of each item, ``[dimension, frames]``."""
        return self._latents(wav, lengths)

    def _latents(self, wav: torch.Tensor, lengths: Optional[torch.Tensor]) -> List[torch.Tensor]:
        if wav.device.type != "cpu" or wav.dtype != torch.float32:
            raise ValueError("FastEncoder runs fp32 on CPU; use model.encode elsewhere")
        wav, lengths = self.model._inputs(wav, lengths)
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long)
        lengths = lengths.cpu()
        layers = list(self.model.encoder.model)
        split = next((i for i, layer in enumerate(layers) if isinstance(layer, SLSTM)), len(layers))
        hop = self.model.hop
        out: List[Optional[torch.Tensor]] = [None] * wav.shape[0]
        for group in length_groups(lengths.tolist(), MIN_BATCH, GROUP_COST_FRAMES * hop):
            z, frames = self._group(layers, split, wav, lengths, group)
            for row, b in enumerate(group):
                out[b] = z[row, :, :frames[row]]
        return out

    # ------------------------------------------------------------------------------------------ layers
    def _group(self, layers: List[nn.Module], split: int, wav: torch.Tensor, lengths: torch.Tensor,
               group: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Layers before ``split`` item by item, the rest on the group's padded batch; returns the latents
        ``[G, dimension, F]`` and the frames of each item."""
        items, act = [], None
        for b in group:
            x, _, act = self._run(layers[:split], wav[b:b + 1, :, :int(lengths[b])], lengths[b:b + 1])
            items.append(x[0])
        widths = torch.tensor([x.shape[-1] for x in items])
        x = items[0].new_zeros(len(items), items[0].shape[0], int(widths.max()))
        for row, item in enumerate(items):
            x[row, :, :item.shape[-1]] = item
        del items
        x, frames, act = self._run(layers[split:], x, widths, act)
        return self._apply(act, x), frames

    def _run(self, layers: List[nn.Module], x: torch.Tensor, lengths: torch.Tensor,
             act: Optional[nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[nn.Module]]:
        """``act`` then ``layers`` on ``x``; returns the output, its lengths and an activation still to apply
        to it (or None): an activation waits for the next layer, which writes it into its padded input."""
        for layer in layers:
            if isinstance(layer, SConv1d):
                x, lengths = self._sconv(layer, x, lengths, act)
            elif isinstance(layer, ResidualBlock):
                x = self._residual(layer, self._apply(act, x), lengths)
            elif isinstance(layer, SLSTM):
                x = self._slstm(layer, self._apply(act, x), lengths)
            else:
                x = self._apply(act, x)
                act = layer
                continue
            act = None
        return x, lengths, act

    def _by_exp(self, act: Optional[nn.Module]) -> bool:
        return type(act) is nn.ELU and act.alpha == 1.0 and not self.exact_elu

    def _apply(self, act: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if act is None:
            return x
        if self._by_exp(act):
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            elu_by_exp(x, out)
            return out
        return act(x)

    def _activate(self, act: Optional[nn.Module], x: torch.Tensor, out: torch.Tensor) -> None:
        """``out[...] = act(x)`` (``out`` a view of the same shape, or ``x`` itself for :func:`elu_by_exp`)."""
        if act is None:
            out.copy_(x)
        elif self._by_exp(act):
            elu_by_exp(x, out)
        else:  # the module on the tensor the model gives it: F.elu's result depends on the tensor's shape
            out.copy_(act(x))

    def _residual(self, block: ResidualBlock, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y, act, fresh = x, None, False  # fresh: y is this block's own temporary
        for layer in block.block:
            if isinstance(layer, SConv1d):
                if fresh and conv_is_pointwise(layer) and self._by_exp(act):
                    self._activate(act, y, y)
                    act = None
                y, _ = self._sconv(layer, y, lengths, act)
                act, fresh = None, True
            else:
                if act is not None:
                    y = self._apply(act, y)
                    fresh = True
                act = layer
        y = self._apply(act, y)
        skip, _ = self._sconv(block.shortcut, x, lengths, None)
        return skip.add_(y)

    def _slstm(self, layer: SLSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        xt = x.permute(2, 0, 1)  # [T, B, C]
        y = lstm_padded(layer.lstm, xt.contiguous(), lengths,
                        min_batch=xt.shape[1] + 1 if self.exact else MIN_BATCH)
        skip = torch.cat([xt, xt], dim=-1) if layer.bidirectional else xt
        return (y + skip).permute(1, 2, 0)

    def _sconv(self, conv: SConv1d, x: torch.Tensor, lengths: torch.Tensor, act: Optional[nn.Module]
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``conv(act(x))`` per item with its own reflect padding; returns output and output lengths."""
        B, C, T = x.shape
        s, left = conv.stride, conv.pad_left
        out_lengths = -(-lengths // s)
        rights = (conv.pad_right + out_lengths * s - lengths).tolist()
        lens = lengths.tolist()
        if conv_is_pointwise(conv):  # no padding
            buf = x if act is None else self._apply(act, x)
            widths = lens
        else:
            width = left + -(-T // s) * s + conv.pad_right
            buf = x.new_empty(B, C, width)
            self._activate(act, x, buf[:, :, left:left + T])
            buf[:, :, left + T:].zero_()
            if 0 < left < T:
                buf[:, :, :left] = buf[:, :, left + 1:2 * left + 1].flip(-1)
            for b, (n, r) in enumerate(zip(lens, rights)):
                if n > max(left, r):
                    if r:
                        end = left + n
                        buf[b, :, end:end + r] = buf[b, :, end - 1 - r:end - 1].flip(-1)
                else:  # shorter than the padding: reflect_pad's zero extension, from the item's own samples
                    row = reflect_pad(buf[b:b + 1, :, left:left + n], left, r)
                    buf[b, :, :row.shape[-1]] = row[0]
            widths = [left + n + r for n, r in zip(lens, rights)]
        if B == 1:
            return _conv(conv, self.weights, buf), out_lengths
        alone = [b for b in range(B) if not one_item_uses_onednn(conv, C, widths[b])]
        y = _conv(conv, self.weights, buf) if len(alone) < B else None
        for b in alone:  # exactly the one-item call torch makes for this item
            yb = _conv(conv, self.weights, buf[b:b + 1, :, :widths[b]])
            if y is None:
                y = yb.new_zeros(B, yb.shape[1], -(-T // s))
            y[b:b + 1, :, :yb.shape[-1]] = yb
        return y, out_lengths

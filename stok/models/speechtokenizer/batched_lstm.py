"""The encoder's LSTM on a right-padded batch, each item independent of the others' lengths (inference only).

:class:`~stok.models.speechtokenizer.seanet.SLSTM` runs ``nn.LSTM``; on a padded batch that needs packed
sequences, whose CPU kernel is slow. Here the LSTM runs layer by layer and direction by direction on the
plain padded batch ``[T, B, C]`` with oneDNN's LSTM kernel (the one ``nn.LSTM`` uses for one item):

- forward direction: on the padded batch as it is; an item's steps before its length never see its padding
  (the recurrence only looks back);
- backward direction: on each item reversed within its own length (padding stays at the end), then
  reversed back;
- a layer's input is the previous layer's output, both directions concatenated.

So each item gets what it gets alone, up to rounding: oneDNN computes the recurrent product with a
matrix-vector kernel for one item and a matrix-matrix kernel for two or more, which sum in a different order
(outputs differ by ~1e-7; two or more items give each item the same result whatever the batch, checked in
``tests/test_st_fast_encode.py``). Below :data:`MIN_BATCH` items the batch gains nothing, so its items run
one by one through ``nn.LSTM`` itself, bitwise the one-item result.
The parameters are the module's own (``weight_ih_l{k}[_reverse]`` ...); nothing is copied or stored.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn


def _layer(x: torch.Tensor, params: List[torch.Tensor], hidden: int) -> torch.Tensor:
    """One unidirectional LSTM layer over ``x [T, B, C]`` from zero state -> ``[T, B, hidden]``."""
    zeros = x.new_zeros(1, x.shape[1], hidden)
    out, _, _ = torch._VF.lstm(x, (zeros, zeros), params, True, 1, 0.0, False, False, False)
    return out


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x [T, B, C]`` with each item's first ``lengths[b]`` steps reversed; steps past it stay in place."""
    T, B = x.shape[:2]
    t = torch.arange(T)[:, None]
    src = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]
    return x[src, torch.arange(B)[None, :]]


#: below this many items the batch runs item by item: on 2 CPU cores oneDNN's LSTM took longer per item for 2 items
#: than for one, ~0.55x (layer 1) and ~0.75x (layer 2) the time per item-step from 4 on, and ~5-20 ms per call
MIN_BATCH = 4


def lstm_padded(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, min_batch: int = MIN_BATCH) -> torch.Tensor:
    """``nn.LSTM`` output for ``x [T, B, C]`` whose item ``b`` holds ``lengths[b]`` valid steps (CPU lengths).

    Rows past an item's length hold values computed from its padding (zeros when the items run one by one);
    nothing before them depends on them."""
    if lstm.batch_first or lstm.proj_size or not lstm.bias:
        raise ValueError("lstm_padded: only time-major LSTMs with biases and no projection")
    if x.shape[1] < max(2, min_batch):
        out = None
        for b, n in enumerate(lengths.tolist()):
            y = lstm(x[:n, b:b + 1])[0]
            if out is None:
                out = y.new_zeros(x.shape[0], x.shape[1], y.shape[-1])
            out[:n, b:b + 1] = y
        return out
    h = x
    for k in range(lstm.num_layers):
        suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
        outs = []
        for suffix in suffixes:
            params = [getattr(lstm, f"{name}_l{k}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if suffix:
                outs.append(reverse_within(_layer(reverse_within(h, lengths), params, lstm.hidden_size), lengths))
            else:
                outs.append(_layer(h, params, lstm.hidden_size))
        h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    return h

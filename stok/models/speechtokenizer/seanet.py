"""SEANet encoder and decoder of SpeechTokenizer, length-aware, with the released module indices.

Encoder (released config: ``model.0`` .. ``model.15``)::

    conv k7 1 -> F
    per stride of reversed(strides) (2, 4, 5, 8):  residual block(s), act, conv k=2s stride s (C -> 2C)
    LSTM (bidirectional as configured; output lstm(x) + x, x repeated to 2C when bidirectional)
    act, conv k7 -> dimension

Decoder (``model.0`` .. ``model.15``)::

    conv k7 dimension -> F * 2**len(strides), unidirectional LSTM (output lstm(x) + x)
    per stride of strides (8, 5, 4, 2):  act, transposed conv k=2s stride s (C -> C/2), residual block(s)
    act, conv k7 -> 1 (no final tanh)

A residual block is ``shortcut(x) + block(x)`` with ``block = [act, conv k=residual_kernel_size dilation
dilation_base**j (C -> C/2), act, conv k1 (C/2 -> C)]`` and a 1x1 conv shortcut. Indices follow from the config
(``n_residual_layers``, ``lstm_layers = 0`` drops the LSTM as the released code does).

Every length-aware module maps ``(x, lengths) -> (y, lengths)``; with ``lengths`` the LSTMs run on packed
sequences and the convolutions pad each item from its own samples, so no item reads another item's padding
(see :mod:`~stok.models.speechtokenizer.conv`).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from stok.models.speechtokenizer.config import SpeechTokenizerConfig
from stok.models.speechtokenizer.conv import Lengths, SConv1d, SConvTranspose1d


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int, activation: str):
        super().__init__()
        act = getattr(nn, activation)
        hidden = dim // 2
        self.block = nn.ModuleList([act(), SConv1d(dim, hidden, kernel_size, dilation=dilation),
                                    act(), SConv1d(hidden, dim, 1)])
        self.shortcut = SConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, lengths: Lengths = None) -> Tuple[torch.Tensor, Lengths]:
        y, _ = run_layers(self.block, x, lengths)
        skip, _ = self.shortcut(x, lengths)
        return skip + y, lengths


class SLSTM(nn.Module):
    """LSTM over the time axis of ``[B, C, T]`` with a skip connection; packed when lengths are given."""

    def __init__(self, dim: int, num_layers: int, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(dim, dim, num_layers, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor, lengths: Lengths = None) -> Tuple[torch.Tensor, Lengths]:
        T = x.shape[-1]
        x = x.permute(2, 0, 1)  # [T, B, C]
        if lengths is None:
            y, _ = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            y, _ = pad_packed_sequence(self.lstm(packed)[0], total_length=T)
        skip = torch.cat([x, x], dim=-1) if self.bidirectional else x
        return (y + skip).permute(1, 2, 0), lengths


def run_layers(layers: nn.ModuleList, x: torch.Tensor, lengths: Lengths) -> Tuple[torch.Tensor, Lengths]:
    """Apply ``layers`` in order; length-aware ones take and return lengths, activations take ``x`` only."""
    for layer in layers:
        if isinstance(layer, (SConv1d, SConvTranspose1d, ResidualBlock, SLSTM)):
            x, lengths = layer(x, lengths)
        else:
            x = layer(x)
    return x, lengths


def _residual_blocks(cfg: SpeechTokenizerConfig, dim: int) -> List[nn.Module]:
    return [ResidualBlock(dim, cfg.residual_kernel_size, cfg.dilation_base ** j, cfg.activation)
            for j in range(cfg.n_residual_layers)]


class SEANetEncoder(nn.Module):
    """``[B, 1, T]`` waveform -> ``[B, dimension, ceil(T / hop)]``."""

    def __init__(self, cfg: SpeechTokenizerConfig):
        super().__init__()
        act = getattr(nn, cfg.activation)
        ch = cfg.n_filters
        layers: List[nn.Module] = [SConv1d(1, ch, 7)]
        for s in reversed(cfg.strides):
            layers += _residual_blocks(cfg, ch)
            layers += [act(), SConv1d(ch, 2 * ch, 2 * s, stride=s)]
            ch *= 2
        if cfg.lstm_layers:
            layers.append(SLSTM(ch, cfg.lstm_layers, cfg.bidirectional))
            ch = 2 * ch if cfg.bidirectional else ch
        layers += [act(), SConv1d(ch, cfg.dimension, 7)]
        self.model = nn.ModuleList(layers)

    def forward(self, wav: torch.Tensor, lengths: Lengths = None) -> Tuple[torch.Tensor, Lengths]:
        """``lengths`` in samples in, frames out."""
        return run_layers(self.model, wav, lengths)


class SEANetDecoder(nn.Module):
    """``[B, dimension, T]`` -> ``[B, 1, T * hop]``."""

    def __init__(self, cfg: SpeechTokenizerConfig):
        super().__init__()
        act = getattr(nn, cfg.activation)
        ch = cfg.n_filters * 2 ** len(cfg.strides)
        layers: List[nn.Module] = [SConv1d(cfg.dimension, ch, 7)]
        if cfg.lstm_layers:
            layers.append(SLSTM(ch, cfg.lstm_layers, bidirectional=False))
        for s in cfg.strides:
            layers += [act(), SConvTranspose1d(ch, ch // 2, 2 * s, stride=s)]
            ch //= 2
            layers += _residual_blocks(cfg, ch)
        layers += [act(), SConv1d(ch, 1, 7)]
        self.model = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Lengths]:
        """``lengths`` in frames in, samples out."""
        return run_layers(self.model, z, lengths)

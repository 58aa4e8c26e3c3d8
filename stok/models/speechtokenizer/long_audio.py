"""Utterances of any length through the SpeechTokenizer in bounded memory: encode in overlapping windows, decode
as a stream.

The encoder's and decoder's activations take ~17-20 MB per second of audio at the released size (fp32, CPU), so
a whole hour would need ~60 GB. Here memory depends on the window, not on the utterance.

**Encode** (:func:`plan_windows`, :func:`encode_windows`). An utterance of at most ``span`` frames is encoded
whole: its codes are exactly :meth:`SpeechTokenizer.encode`'s. A longer one is cut into windows of ``span``
frames (the last may be shorter) starting every ``span - 2 * margin`` frames, at multiples of the hop, so that
window frame ``j`` is utterance frame ``start + j``. Each window keeps the frames between the middles of its
overlaps with its neighbours (at least ``margin`` frames from any window edge that is not an edge of the
utterance); the first keeps from frame 0, the last to the end, and the kept ranges tile the
``ceil(samples / hop)`` frames exactly. The convolutions before and after the LSTM reach a few frames, so a
kept frame differs from whole-utterance encoding only through the bidirectional LSTM's view, which a window
cuts ``margin`` frames away at least; measured agreement: ``bench/st_long_encode.py`` (README).

**Decode** (:func:`decode_stream`). The decoder's LSTM runs forward only, so it is carried across chunks (its
state at a chunk's end starts the next chunk); the convolutions around it are local and run on each chunk with
``reach`` frames of context on either side, and the samples of frames too close to a chunk's unfinished edge wait
for the next chunk. Every operation sees the values whole-utterance decoding gives it; the result equals
:meth:`SpeechTokenizer.decode` to float32 rounding (the ELU rounds the last elements of each block it splits a
tensor into differently, so results depend on tensor shapes by ~1e-7), and blocks of samples come out in order,
to be written as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from stok.models.speechtokenizer.conv import SConv1d, SConvTranspose1d
from stok.models.speechtokenizer.seanet import SLSTM, ResidualBlock, run_layers

#: frames (50 Hz at the released hop) above which an utterance is encoded in windows, and the windows' length:
#: 60 s, whose whole-utterance encode (~2 GB peak at the released size on CPU) is then the most any length takes
ENCODE_SPAN = 3000
#: frames of context a window keeps on each inner side (5 s at 50 Hz), chosen by ``bench/st_long_encode.py``
ENCODE_MARGIN = 250
#: frames decoded per chunk of a stream (60 s at 50 Hz): a chunk costs what decoding 60 s whole costs
DECODE_CHUNK = 3000


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of an utterance go through the encoder; frames ``[keep_from, keep_to)`` are kept."""

    start: int
    end: int
    keep_from: int
    keep_to: int


def plan_windows(frames: int, span: int = ENCODE_SPAN, margin: int = ENCODE_MARGIN) -> List[Window]:
    """Windows of an utterance of ``frames`` frames (one window, the whole utterance, when it fits in ``span``)."""
    if span <= 2 * margin or margin < 0:
        raise ValueError(f"windows of {span} frames cannot keep {margin} frames of context on each side")
    if frames <= span:
        return [Window(0, frames, 0, frames)]
    step = span - 2 * margin
    count = 1 + -(-(frames - span) // step)
    out = []
    for k in range(count):
        start = k * step
        last = k == count - 1
        out.append(Window(start, frames if last else start + span, 0 if k == 0 else start + margin,
                          frames if last else start + margin + step))
    return out


def encode_windows(encode: Callable[[torch.Tensor], torch.Tensor], wave: torch.Tensor, hop: int,
                   span: int = ENCODE_SPAN, margin: int = ENCODE_MARGIN) -> torch.Tensor:
    """Codes ``[n_q, ceil(T / hop)]`` of a waveform ``[T]``, window by window (see module docstring).

    ``encode(wav [1, 1, t]) -> codes [n_q, 1, ceil(t / hop)]`` encodes one window alone (e.g.
    ``model.encode``); windows start at multiples of ``hop`` and the last one ends at ``T``."""
    wave = wave.reshape(-1)
    total = wave.numel()
    frames = -(-total // hop)
    out: Optional[torch.Tensor] = None
    for w in plan_windows(frames, span, margin):
        codes = encode(wave[w.start * hop: min(total, w.end * hop)].reshape(1, 1, -1))[:, 0]
        if out is None:
            out = codes.new_zeros(codes.shape[0], frames)
        out[:, w.keep_from: w.keep_to] = codes[:, w.keep_from - w.start: w.keep_to - w.start]
    return out


# ---------------------------------------------------------------------------------------------------------- decode
def _reach(layers: List[nn.Module]) -> int:
    """How many input frames on either side (at least) an output frame of ``layers`` can depend on."""
    reach, rate = 0.0, 1  # frames; samples per frame at the current layer
    for layer in layers:
        convs = [layer] if isinstance(layer, (SConv1d, SConvTranspose1d)) else \
            [m for m in layer.modules() if isinstance(m, SConv1d)] if isinstance(layer, ResidualBlock) else []
        for conv in convs:
            if isinstance(conv, SConv1d):
                reach += (conv.padding_total + conv.stride) / rate
            else:
                k = conv.convtr.convtr.weight_v.shape[-1]
                reach += k / conv.stride + 1
                rate *= conv.stride
    return int(reach) + 1


def _split_decoder(decoder: nn.Module) -> Tuple[List[nn.Module], Optional[SLSTM], List[nn.Module]]:
    layers = list(decoder.model)
    at = next((i for i, layer in enumerate(layers) if isinstance(layer, SLSTM)), None)
    if at is None:
        return [], None, layers
    if layers[at].bidirectional:
        raise ValueError("decode_stream: the decoder's LSTM must be unidirectional (the released decoder's is)")
    return layers[:at], layers[at], layers[at + 1:]


@torch.no_grad()
def decode_stream(model: nn.Module, codes: torch.Tensor, first_layer: int = 0, chunk: int = DECODE_CHUNK
                  ) -> Iterator[torch.Tensor]:
    """Waveform of one utterance's codes ``[n_q, F]`` (RVQ layers ``first_layer ..``) as consecutive blocks
    ``[samples]`` that add up to ``F * hop`` samples, decoding ``chunk`` frames at a time (see module docstring)."""
    if codes.dim() != 2:
        raise ValueError(f"decode_stream: codes must be [n_q, frames], got shape {tuple(codes.shape)}")
    if chunk < 1:
        raise ValueError(f"decode_stream: chunk must be >= 1 frame, got {chunk}")
    pre, lstm, post = _split_decoder(model.decoder)
    frames, hop = codes.shape[-1], model.hop
    pre_reach, post_reach = _reach(pre), _reach(post)
    codes = codes.long()[:, None]  # [n_q, 1, F]
    state = None
    tail: Optional[torch.Tensor] = None  # post-stack input of frames [tail_from, a)
    tail_from = emitted = 0
    for a in range(0, frames, chunk):
        b = min(frames, a + chunk)
        lo, hi = max(0, a - pre_reach), min(frames, b + pre_reach)
        x, _ = run_layers(pre, model.quantizer.decode(codes[:, :, lo:hi], first_layer), None)
        x = x[..., a - lo: b - lo]  # [1, C, b - a]
        if lstm is not None:
            seq = x.permute(2, 0, 1)  # [T, 1, C]
            y, state = lstm.lstm(seq, state)
            x = (y + seq).permute(1, 2, 0)
        buf = x if tail is None else torch.cat([tail, x], dim=-1)  # frames [tail_from, b)
        upto = frames if b == frames else max(emitted, b - post_reach)
        if upto > emitted:
            wav, _ = run_layers(post, buf, None)
            yield wav[0, 0, (emitted - tail_from) * hop: (upto - tail_from) * hop]
            emitted = upto
        keep = max(0, upto - post_reach - tail_from)
        tail, tail_from = buf[..., keep:], tail_from + keep

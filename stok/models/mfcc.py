"""The weight-free MFCC teacher: 13 MFCCs + deltas + delta-deltas (39 dims) at 50 Hz.

As fairseq's ``examples/hubert/simple_kmeans/dump_mfcc_feature.py`` (HuBERT's first iteration): Kaldi-compatible
MFCCs (``torchaudio.compliance.kaldi.mfcc``: 23 mel bins, 13 cepstra, povey window, pre-emphasis 0.97, no
dither, no energy) on the waveform in [-1, 1], then ``torchaudio.functional.compute_deltas`` twice (window 5)
over the whole utterance, concatenated ``[mfcc, delta, delta-delta]``.

One difference, deliberate: fairseq uses a 10 ms shift (100 Hz) with a 25 ms window; here the shift is
**20 ms (hop 320 at 16 kHz, 50 Hz)** with the same 25 ms (400-sample) window, so frame k covers samples
``[320k, 320k + 400)``, exactly HuBERT's frames, and the count ``floor((n - 400) / 320) + 1`` matches HuBERT's.
The features are per utterance, so batching cannot change them. Inputs shorter than 400 samples have no frame.

Long inputs: every MFCC frame is computed from its own window (no dither, no mean subtraction), so above
:data:`BLOCK_FRAMES` frames the cepstra are computed in nearly equal blocks of at most that many frames, each from
exactly the samples its frames cover; only the 13-dim cepstra of the whole utterance are held for the deltas.
Bitwise the whole-utterance result (tested), in the memory of one block (Kaldi's framing of a whole hour takes
several copies of ``[frames, 512]``, ~2 GB).
"""

from __future__ import annotations

import torch
import torchaudio
from torchaudio.compliance import kaldi

HOP = 320
WINDOW = 400
DIM = 39
#: longer inputs are framed this many frames (60 s at 50 Hz) at a time
BLOCK_FRAMES = 3000


def mfcc_features(wave: torch.Tensor, sample_rate: int = 16000, hop: int = HOP) -> torch.Tensor:
    """``[frames, 39]`` float32 for a 1-D waveform; frames = ``floor((n - 400) / 320) + 1`` at 16 kHz."""
    wave = wave.reshape(1, -1).float()
    win = int(round(WINDOW * sample_rate / 16000))
    if wave.shape[1] < win:
        raise ValueError(f"MFCC needs at least {win} samples, got {wave.shape[1]}")
    shift_ms, length_ms = 1000.0 * hop / sample_rate, 1000.0 * win / sample_rate
    # Kaldi's own framing (torchaudio.compliance.kaldi): frame k covers samples [k * shift, k * shift + size)
    shift, size = int(sample_rate * shift_ms * 0.001), int(sample_rate * length_ms * 0.001)
    frames = (wave.shape[1] - size) // shift + 1

    def cepstra(x: torch.Tensor) -> torch.Tensor:
        return kaldi.mfcc(x, sample_frequency=float(sample_rate), frame_shift=shift_ms, frame_length=length_ms,
                          use_energy=False, dither=0.0)  # [T, 13]

    if frames <= BLOCK_FRAMES:
        mf = cepstra(wave)
    else:
        count = -(-frames // BLOCK_FRAMES)
        bounds = [frames * k // count for k in range(count + 1)]
        mf = torch.cat([cepstra(wave[:, t0 * shift: (t1 - 1) * shift + size])
                        for t0, t1 in zip(bounds[:-1], bounds[1:])])
    mf = mf.transpose(0, 1)  # [13, T]
    d = torchaudio.functional.compute_deltas(mf)
    dd = torchaudio.functional.compute_deltas(d)
    return torch.cat([mf, d, dd], 0).transpose(0, 1).contiguous()

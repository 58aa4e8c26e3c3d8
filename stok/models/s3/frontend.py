"""The S3Tokenizer log-mel front end (Whisper style), one utterance or a padded batch.

16 kHz mono -> STFT (n_fft 400, hop 160, periodic Hann 400, centred with reflect padding of 200)
-> last frame dropped (frames = samples // 160) -> power spectrum -> 128-band Slaney mel filterbank
over 0-8 kHz -> log10(max(mel, 1e-10)) -> floored at (max of **that utterance** - 8) -> (x + 4) / 4.

The floor uses the utterance's own maximum: a maximum taken over a padded batch changes the features.
:func:`batch_log_mel` reflect-pads every utterance at its own end, so each utterance's frames equal
:func:`log_mel` of that utterance alone. Inputs of at most 200 samples cannot be framed (``TooShort``).

**Long inputs.** Whole, the STFT of an hour takes ~0.6 GB and its power, mel and log copies as much again. Above
:data:`BLOCK_FRAMES` frames :func:`log_mel` computes the mel power in nearly equal blocks of at most that many
frames (each frame from its own 400 reflect-padded samples) into the output, then takes the log, the utterance's
maximum and the floor in place on the whole output, with the same calls on the same ``[128, frames]`` tensor as
the whole computation: the features are bitwise the same (tested; the blocks are never small, as a matrix product
of a few columns may take another kernel), and the memory is the output's plus one block.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from stok.core.model_api import TooShort
from stok.models.s3.config import HOP, MIN_SAMPLES, N_FFT, SAMPLE_RATE

N_MELS = 128
_PAD = N_FFT // 2
#: log_mel computes longer inputs this many frames (30 s) at a time
BLOCK_FRAMES = 3000
_cache: Dict[Tuple[str, int], Tuple[torch.Tensor, torch.Tensor]] = {}


def mel_frames(num_samples: int) -> int:
    """Mel frames of an utterance of ``num_samples`` samples (the last STFT frame is dropped)."""
    return num_samples // HOP


def _filters(device: torch.device, n_mels: int = N_MELS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Hann window [400], mel filterbank [n_mels, 201]) on ``device``, float32, cached."""
    key = (str(device), n_mels)
    if key not in _cache:
        import torchaudio.functional as AF

        fb = AF.melscale_fbanks(n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=n_mels,
                                sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        _cache[key] = (torch.hann_window(N_FFT, periodic=True, device=device),
                       fb.t().contiguous().to(device))
    return _cache[key]


def check_length(num_samples: int) -> None:
    if num_samples < MIN_SAMPLES:
        raise TooShort(f"{num_samples} samples: the S3 front end needs at least {MIN_SAMPLES} "
                       f"({MIN_SAMPLES / SAMPLE_RATE * 1000:.1f} ms at 16 kHz)")


def _log_compress(mel: torch.Tensor, valid: torch.Tensor = None) -> torch.Tensor:
    """mel [..., n_mels, T] power -> normalised log-mel, with the floor from each item's own max."""
    logm = torch.clamp(mel, min=1e-10).log10()
    if valid is None:
        peak = logm.amax(dim=(-2, -1), keepdim=True)
    else:
        peak = logm.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(-2, -1), keepdim=True)
    logm = torch.maximum(logm, peak - 8.0)
    return (logm + 4.0) / 4.0


@torch.no_grad()
def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """One utterance: 1-D float waveform at 16 kHz -> float32 log-mel [128, samples // 160]."""
    if wave.dim() != 1:
        raise ValueError(f"log_mel takes a 1-D waveform, got shape {tuple(wave.shape)}")
    check_length(wave.numel())
    wave = wave.float()
    window, fb = _filters(wave.device)
    n, frames = wave.numel(), mel_frames(wave.numel())
    if frames <= BLOCK_FRAMES:
        spec = torch.stft(wave, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
        power = spec[:, :-1].abs() ** 2
        return _log_compress(fb @ power)
    mel = torch.empty(fb.shape[0], frames, device=wave.device)
    count = -(-frames // BLOCK_FRAMES)
    bounds = [frames * k // count for k in range(count + 1)]  # nearly equal blocks: no tiny matrix product
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        # frame t reads samples [160 t - 200, 160 t + 200) of the reflect-padded waveform
        idx = torch.arange(t0 * HOP - _PAD, (t1 - 1) * HOP + _PAD, device=wave.device).abs()
        idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)
        spec = torch.stft(wave[idx], N_FFT, HOP, window=window, center=False, return_complex=True)
        torch.matmul(fb, spec.abs() ** 2, out=mel[:, t0:t1])
    logm = torch.clamp(mel, min=1e-10, out=mel).log10_()
    torch.maximum(logm, logm.amax(dim=(-2, -1), keepdim=True) - 8.0, out=logm)
    return logm.add_(4.0).div_(4.0)


@torch.no_grad()
def batch_log_mel(waves: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded batch [B, S] with sample counts [B] -> (log-mel [B, 128, T] zero-padded, mel lengths [B]).

    Every utterance is reflect-padded at its own edges and floored by its own maximum, so item i
    equals ``log_mel(waves[i, :lengths[i]])`` on its valid frames (for online extraction on GPU).
    """
    if waves.dim() != 2:
        raise ValueError(f"batch_log_mel takes [B, samples], got shape {tuple(waves.shape)}")
    lengths = lengths.to(device=waves.device, dtype=torch.long)
    too_short = lengths < MIN_SAMPLES
    if bool(too_short.any()):
        check_length(int(lengths[too_short][0]))
    waves = waves.float()
    b, s = waves.shape
    window, fb = _filters(waves.device)
    # index of the source sample for every position of the per-utterance reflect-padded signal
    pos = torch.arange(s + 2 * _PAD, device=waves.device)[None, :] - _PAD  # [1, S + 400]
    n = lengths[:, None]
    idx = pos.abs()
    idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx).clamp(min=0)
    idx = torch.minimum(idx, n - 1)
    padded = torch.gather(waves, 1, idx.expand(b, -1))
    spec = torch.stft(padded, N_FFT, HOP, window=window, center=False, return_complex=True)  # [B, 201, S//160 + 1]
    frames = lengths // HOP
    t = int(frames.max())
    power = spec[:, :, :t].abs() ** 2
    valid = torch.arange(t, device=waves.device)[None, :] < frames[:, None]
    feats = _log_compress(fb @ power, valid) * valid[:, None, :]
    return feats, frames

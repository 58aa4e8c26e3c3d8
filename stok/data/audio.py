"""Read one utterance of audio from a ``wav.scp`` value, as a mono float32 tensor at a given rate.

A ``wav.scp`` value is one of:

- a path to any file soundfile can read (wav, flac, ogg, ...);
- a Kaldi pipe, ``sox a.sph -t wav - |``: the command's stdout is read as an audio file;
- an ark entry, ``/path/x.ark:1234``: a Kaldi wave record inside an archive (read through kaldiio).

``start``/``end`` (seconds, from ``segments``; ``end`` < 0 or None means "to the end") cut a
part of the recording. Multi-channel audio is averaged to mono (as CosyVoice's extractor does)
and any rate is resampled with ``torchaudio.functional.resample``. We deliberately do not use
``torchaudio.load``: since torchaudio 2.9 it needs TorchCodec and FFmpeg.

A long file that needs averaging or resampling is read in blocks of :data:`BLOCK_SECONDS` (its rate's frames),
each block averaged and resampled with the neighbouring samples the resampling filter reaches, into the output:
the whole-file result to float32 rounding (the filter's products summed in blocks of another length: at most
~3e-8 apart, tested), in the memory of the output plus one block (whole, an hour of 44.1 kHz
stereo is 1.3 GB as float32 before the 16 kHz mono result's 0.23 GB). Pipes and ark entries are decoded whole.
"""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
from typing import Optional, Tuple

import numpy as np
import soundfile
import torch

_ARK_SPEC = re.compile(r"^(.+):(\d+)$")
#: a plain file that needs averaging or resampling and holds more than this many seconds is read in blocks
BLOCK_SECONDS = 60.0
#: ``torchaudio.functional.resample``'s defaults, which :func:`resample` uses
_LOWPASS_WIDTH, _ROLLOFF = 6, 0.99


class AudioError(ValueError):
    """An utterance whose audio cannot be read; the message names the source and the reason."""


def is_pipe(spec: str) -> bool:
    return spec.rstrip().endswith("|")


def is_ark(spec: str) -> bool:
    m = _ARK_SPEC.match(spec)
    return bool(m) and not os.path.exists(spec) and not is_pipe(spec)


def _read_pipe(spec: str) -> Tuple[np.ndarray, int]:
    cmd = spec.rstrip()[:-1]
    proc = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"command '{cmd}' exited with {proc.returncode}: {err[-1] if err else ''}")
    if not proc.stdout:
        raise AudioError(f"command '{cmd}' wrote no audio")
    data, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return data, rate


def _wav_declared_bytes(path: str) -> Optional[int]:
    """Size the RIFF header declares for the 'data' chunk (None: not a plain RIFF/WAVE or no data chunk)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return None if size in (0, 0xFFFFFFFF) else size  # streamed WAVs leave it unset
            f.seek(size + (size & 1), 1)


def check_complete(path: str, info) -> None:
    """libsndfile silently shortens a truncated WAV to the bytes present; compare with its header."""
    declared = _wav_declared_bytes(path)
    if declared is None or not info.frames:
        return
    width = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8, "PCM_U8": 1, "ULAW": 1, "ALAW": 1}
    bytes_per_sample = width.get(info.subtype)
    if bytes_per_sample:
        expected = declared // (bytes_per_sample * info.channels)
        if info.frames < expected:
            raise AudioError(f"truncated file {path}: header declares {expected} frames, only {info.frames} present")


def _read_ark(spec: str) -> Tuple[np.ndarray, int]:
    import kaldiio

    value = kaldiio.load_mat(spec)
    if not (isinstance(value, tuple) and len(value) == 2):
        raise AudioError(f"{spec} is not a wave record (found a {type(value).__name__})")
    rate, data = value
    data = np.asarray(data)
    if data.dtype == np.int16:
        data = data.astype(np.float32) / 32768.0
    data = data.astype(np.float32)
    if data.ndim == 1:
        data = data[:, None]
    return data, int(rate)


def read_raw(spec: str, start: Optional[float] = None, end: Optional[float] = None) -> Tuple[np.ndarray, int]:
    """Read ``[frames, channels]`` float32 and the file's own rate; ``start``/``end`` in seconds."""
    try:
        if is_pipe(spec):
            data, rate = _read_pipe(spec)
        elif is_ark(spec):
            data, rate = _read_ark(spec)
        else:
            if not os.path.exists(spec):
                raise AudioError(f"audio file not found: {spec}")
            if os.path.getsize(spec) == 0:
                raise AudioError(f"audio file is empty: {spec}")
            info = soundfile.info(spec)
            check_complete(spec, info)
            rate = info.samplerate
            first = int(round(start * rate)) if start else 0
            last = int(round(end * rate)) if end is not None and end >= 0 else None
            data, rate = soundfile.read(spec, start=first, stop=last, dtype="float32", always_2d=True)
            start = end = None  # already applied
    except AudioError:
        raise
    except Exception as e:  # soundfile/libsndfile, kaldiio: name the file and the cause
        raise AudioError(f"cannot decode {spec}: {type(e).__name__}: {e}") from e
    if start or (end is not None and end >= 0):
        first = int(round((start or 0.0) * rate))
        last = int(round(end * rate)) if end is not None and end >= 0 else None
        data = data[first:last]
    return data, rate


def to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    if orig_rate == new_rate:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, orig_rate, new_rate)


def all_finite(wave: torch.Tensor, block: int = 1 << 20) -> bool:
    """Whether every sample is finite, checked a block at a time (``torch.isfinite`` of a whole hour makes
    temporaries of ~1.7 times the waveform)."""
    flat = wave.reshape(-1)
    return all(bool(torch.isfinite(flat[i: i + block]).all()) for i in range(0, flat.numel(), block))


def _filter_reach(orig_rate: int, new_rate: int) -> Tuple[int, int]:
    """(input period, samples) of ``resample``'s polyphase filter: output block ``i`` (``new / g`` samples) reads
    input samples ``[i * o - width, i * o + width + o)``, ``o = orig / g``, ``g = gcd``; returns ``(o, width + o)``."""
    g = math.gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    width = math.ceil(_LOWPASS_WIDTH * o / (min(o, n) * _ROLLOFF))
    return o, width + o


def _load_blocks(path: str, first: int, count: int, channels: int, rate: int, sample_rate: int) -> torch.Tensor:
    """Frames ``[first, first + count)`` of a plain file, averaged to mono and resampled block by block."""
    o, reach = _filter_reach(rate, sample_rate) if rate != sample_rate else (1, 0)
    n = sample_rate // math.gcd(rate, sample_rate) if rate != sample_rate else 1
    pad = -(-reach // o) * o  # context read on each side of a block: a multiple of the filter's period
    step = max(o, int(BLOCK_SECONDS * rate) // o * o)
    total = -(-count * n // o)  # resample's length: ceil(new * samples / orig)
    out = torch.empty(total)
    with soundfile.SoundFile(path) as f:
        for c0 in range(0, count, step):
            c1 = min(count, c0 + step)
            r0, r1 = max(0, c0 - pad), min(count, c1 + pad)
            f.seek(first + r0)
            data = f.read(r1 - r0, dtype="float32", always_2d=True)
            if data.shape[0] != r1 - r0:
                raise AudioError(f"{path}: {r1 - r0} frames expected at frame {first + r0}, {data.shape[0]} read")
            wave = torch.from_numpy(np.ascontiguousarray(to_mono(data)))
            if not all_finite(wave):
                raise AudioError(f"non-finite samples in {path}")
            y = resample(wave, rate, sample_rate)
            lo, hi = c0 * n // o, (c1 * n // o if c1 < count else total)
            out[lo:hi] = y[lo - r0 * n // o: hi - r0 * n // o]
    return out


def _blockwise(spec: str, start: Optional[float], end: Optional[float], sample_rate: int
               ) -> Optional[Tuple[str, int, int, int, int]]:
    """(path, first frame, frames, channels, rate) when ``spec`` is a plain file long enough to read in blocks and
    needing averaging or resampling; None otherwise (or when anything is off: the whole-file path reports it)."""
    if is_pipe(spec) or is_ark(spec) or not os.path.isfile(spec) or os.path.getsize(spec) == 0:
        return None
    try:
        info = soundfile.info(spec)
        check_complete(spec, info)
    except Exception:  # noqa: BLE001 - read_raw names the problem
        return None
    rate = info.samplerate
    first = int(round(start * rate)) if start else 0
    last = int(round(end * rate)) if end is not None and end >= 0 else info.frames
    last = min(last, info.frames)
    if (info.channels == 1 and rate == sample_rate) or last - first <= BLOCK_SECONDS * rate:
        return None
    return spec, first, last - first, info.channels, rate


def load_audio(spec: str, sample_rate: int, start: Optional[float] = None,
               end: Optional[float] = None) -> torch.Tensor:
    """Mono float32 1-D tensor at ``sample_rate`` from a wav.scp value (see module docstring)."""
    blocks = _blockwise(spec, start, end, sample_rate)
    if blocks is not None:
        try:
            return _load_blocks(*blocks, sample_rate)
        except Exception:  # noqa: BLE001 - a format soundfile cannot seek in, a damaged file: read it whole, which
            pass  # gives the same result or names the problem
    data, rate = read_raw(spec, start, end)
    if data.shape[0] == 0:
        raise AudioError(f"no samples in {spec}" + (f" [{start}, {end}]" if start or end else ""))
    wave = torch.from_numpy(np.ascontiguousarray(to_mono(data)))
    if not all_finite(wave):
        raise AudioError(f"non-finite samples in {spec}")
    return resample(wave, rate, sample_rate)


def duration_seconds(spec: str) -> float:
    """Duration without decoding for plain files (header only); pipes and ark entries are decoded."""
    if not is_pipe(spec) and not is_ark(spec):
        if not os.path.exists(spec):
            raise AudioError(f"audio file not found: {spec}")
        if os.path.isfile(spec) and os.path.getsize(spec) == 0:
            raise AudioError(f"audio file is empty: {spec}")
        try:
            info = soundfile.info(spec)
        except Exception as e:
            raise AudioError(f"cannot read the header of {spec}: {e}") from e
        return info.frames / info.samplerate
    data, rate = read_raw(spec)
    return data.shape[0] / rate

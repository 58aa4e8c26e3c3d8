"""The SpeechTokenizer as a dump-engine model: waveforms in, RVQ codes ``[T, n_q]`` out.

The engine reads and resamples audio in its workers; ``encode`` runs one padded, length-sorted batch
through the encoder with each item's true length and returns, per utterance, its ``ceil(samples / hop)``
frames of the first ``n_q`` codebooks as int32 ``[T, n_q]`` (stored as exact float32 matrices, 4 bytes a
code; read back with ``stok.core.storage.load_codes``). Three CPU paths in fp32 (``kernels``):

- ``reference``: ``model.encode`` (on CPU item by item: bitwise the one-at-a-time codes);
- ``exact``: the fast path in its exact mode (``FastEncoder(exact=True)``): bitwise the same codes, faster where
  its folded weight norms and batched last convolution outweigh its bookkeeping;
- ``fast`` (``--cpu_kernels fast``): the inference fast path (:mod:`~stok.models.speechtokenizer.fast_encode`,
  batched LSTMs, ELU from ``exp``; ~1.4x on 2 cores): the same codes but for flips where two codes are within
  float rounding of each other.

``--cpu_kernels auto`` (the default) takes the faster of the two exact paths on this CPU (:func:`auto_kernels`).
Utterances longer than ``window`` frames (default 3000, 60 s) are encoded in overlapping windows of that length
keeping ``margin`` frames (default 250, 5 s) of context on each inner side
(:mod:`~stok.models.speechtokenizer.long_audio`), one window at a time (through the same kernels), so an utterance
of any length takes the memory of a 60 s one; shorter utterances are encoded whole, exactly as before.
``window=0`` encodes every utterance whole (memory then grows by ~17 MB per second of the longest utterance on CPU).
``fingerprint`` (what a resumed dump must share): the config, ``n_q``, the dtype, the windows and the SHA-256 of
the weights files (``weights_files``: config.json and SpeechTokenizer.pt).
"""

from __future__ import annotations

import contextlib
from typing import List, Sequence

import numpy as np
import torch

from stok.core.model_api import DumpModel
from stok.models.speechtokenizer.fast_encode import FastEncoder
from stok.models.speechtokenizer.long_audio import ENCODE_MARGIN, ENCODE_SPAN, encode_windows
from stok.models.speechtokenizer.model import SpeechTokenizer


def auto_kernels() -> str:
    """``--cpu_kernels auto``: the faster exact path on this CPU (``exact`` or ``reference``; see module docstring),
    as measured by ``bench/st_encode.py`` (modes a, e) per instruction set."""
    from stok.models.cpu_isa import cpu_isa

    return "exact" if cpu_isa().avx512 else "reference"


class STDumpModel(DumpModel):
    # On CPU both paths run the convolutions item by item; --cpu_kernels fast runs the LSTM on the batch, which pays
    # from 16 utterances on (stok.models.speechtokenizer.batched_lstm): the batch holds only 50 Hz features
    batch_seconds = {"cpu": 600.0, "cuda": 600.0}

    def __init__(self, model: SpeechTokenizer, n_q: int = 0, dtype: torch.dtype = torch.float32,
                 weights_files: Sequence[str] = (), window: int = ENCODE_SPAN, margin: int = ENCODE_MARGIN):
        cfg = model.cfg
        self.weights_files = list(weights_files)
        if not 0 <= n_q <= cfg.n_q:
            raise ValueError(f"n_q must be between 1 and the model's {cfg.n_q} codebooks (0: all), got {n_q}")
        if window and not 0 <= 2 * margin < window:
            raise ValueError(f"windows of {window} frames cannot keep {margin} frames of context on each side")
        #: utterances of more frames than this are encoded in windows of this many frames (0: always whole)
        self.window = int(window)
        self.margin = int(margin) if window else 0
        self.model = model.eval()
        self.fast = FastEncoder(self.model)
        self.exact = FastEncoder(self.model, exact=True)
        self.kernels = "reference"
        self.n_q = n_q or cfg.n_q
        self.dtype = dtype
        self.sample_rate = cfg.sample_rate

    def to(self, device: torch.device) -> "STDumpModel":
        self.model.to(device)
        return self

    @property
    def fast_cpu(self) -> bool:
        return self.kernels == "fast"

    def set_fast_cpu(self, enabled: bool) -> None:
        self.kernels = "fast" if enabled else "reference"

    def set_cpu_kernels(self, kernels: str) -> None:
        """``--cpu_kernels``: auto (the faster exact path here, :func:`auto_kernels`), fast or reference; also
        ``exact`` (the fast path's exact mode). ``fast`` flips ~1% of frames at near-ties (random-weights
        benchmark), so ``auto`` never takes it: it is opt-in."""
        if kernels not in ("auto", "fast", "reference", "exact"):
            raise ValueError(f"cpu kernels {kernels!r}: choose auto, fast, reference or exact")
        self.kernels = auto_kernels() if kernels == "auto" else kernels

    def _codes(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Codes ``[n_q, B, F]`` of a padded batch ``[B, 1, T]``, each item encoded whole."""
        if self.kernels != "reference" and wav.device.type == "cpu" and self.dtype == wav.dtype == torch.float32:
            fast = self.fast if self.kernels == "fast" else self.exact
            return fast.encode(wav, lengths, n_q=self.n_q)
        precision = (torch.autocast(wav.device.type, dtype=self.dtype) if self.dtype != torch.float32
                     else contextlib.nullcontext())
        with precision:
            return self.model.encode(wav, lengths, n_q=self.n_q)

    def _windowed(self, wave: torch.Tensor) -> torch.Tensor:
        """Codes ``[n_q, F]`` of one long waveform ``[T]``, window by window."""
        def one(w: torch.Tensor) -> torch.Tensor:
            return self._codes(w, torch.tensor([w.shape[-1]], device=w.device))

        return encode_windows(one, wave, self.model.hop, self.window, self.margin)

    @torch.inference_mode()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        frames = self.model.frames(lengths).tolist()
        long = [i for i, f in enumerate(frames) if self.window and f > self.window]
        short = [i for i, f in enumerate(frames) if not (self.window and f > self.window)]
        out: List[np.ndarray] = [None] * len(frames)
        if short:
            wav, lens = padded[:, None, :], lengths
            if long:  # the short items as a batch of their own
                idx = torch.tensor(short, device=padded.device)
                lens = lengths[idx]
                wav = padded[idx, None, : int(lens.max())]
            codes = self._codes(wav, lens).to(torch.int32).permute(1, 2, 0).cpu().numpy()  # [B, T, n_q]
            for row, i in enumerate(short):
                out[i] = codes[row, : frames[i]]
        for i in long:
            codes = self._windowed(padded[i, : int(lengths[i])])
            out[i] = codes.to(torch.int32).t().contiguous().cpu().numpy()
        return out

    def describe(self) -> dict:
        cfg = self.model.cfg
        return {"model": "speechtokenizer", "n_q": self.n_q, "codebook_size": cfg.codebook_size,
                "frame_rate": cfg.sample_rate / cfg.hop, "sample_rate": cfg.sample_rate,
                "dtype": str(self.dtype).replace("torch.", ""), "layout": "[T, n_q] frames x codebooks",
                "windows": self._windows()}

    def _windows(self) -> dict:
        """The windows long utterances are encoded in (what changes their codes)."""
        if not self.window:
            return {"above_frames": None}
        return {"above_frames": self.window, "span_frames": self.window, "margin_frames": self.margin}

    def fingerprint(self) -> dict:
        from stok.core.checksums import file_sha256, module_checksum

        weights = ([file_sha256(p) for p in self.weights_files] if self.weights_files
                   else module_checksum(self.model))
        return {"model": "speechtokenizer", "config": self.model.cfg.to_dict(), "n_q": self.n_q,
                "dtype": str(self.dtype).replace("torch.", ""), "windows": self._windows(), "weights_sha256": weights}

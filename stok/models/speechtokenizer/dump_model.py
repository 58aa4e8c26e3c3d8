"""The SpeechTokenizer as a dump-engine model: waveforms in, RVQ codes ``[T, n_q]`` out.

The engine reads and resamples audio in its workers; ``encode`` runs one padded, length-sorted batch
through the encoder with each item's true length and returns, per utterance, its ``ceil(samples / hop)``
frames of the first ``n_q`` codebooks as int32 ``[T, n_q]`` (stored as exact float32 matrices, 4 bytes a
code; read back with ``stok.core.storage.load_codes``): by default through ``model.encode`` (on CPU item by
item: bitwise the one-at-a-time codes). With ``--cpu_kernels fast`` (``set_fast_cpu(True)``), on CPU in fp32,
the batch runs through the inference fast path (:mod:`~stok.models.speechtokenizer.fast_encode`, ~1.4x on
2 cores): the same codes but for flips where two codes are within float rounding of each other.
``fingerprint`` (what a resumed dump must share): the config, ``n_q``, the dtype and the SHA-256 of the weights
files (``weights_files``: config.json and SpeechTokenizer.pt).
"""

from __future__ import annotations

import contextlib
from typing import List, Sequence

import numpy as np
import torch

from stok.core.model_api import DumpModel
from stok.models.speechtokenizer.fast_encode import FastEncoder
from stok.models.speechtokenizer.model import SpeechTokenizer


class STDumpModel(DumpModel):
    #: the fast path flips ~1% of frames at near-ties (random-weights benchmark): opt-in (--cpu_kernels fast)
    fast_cpu_by_default = False
    # On CPU both paths run the convolutions item by item; --cpu_kernels fast runs the LSTM on the batch, which pays
    # from 16 utterances on (stok.models.speechtokenizer.batched_lstm): the batch holds only 50 Hz features
    batch_seconds = {"cpu": 600.0, "cuda": 600.0}
    def __init__(self, model: SpeechTokenizer, n_q: int = 0, dtype: torch.dtype = torch.float32,
                 weights_files: Sequence[str] = ()):
        cfg = model.cfg
        self.weights_files = list(weights_files)
        if not 0 <= n_q <= cfg.n_q:
            raise ValueError(f"n_q must be between 1 and the model's {cfg.n_q} codebooks (0: all), got {n_q}")
        self.model = model.eval()
        self.fast = FastEncoder(self.model)
        self.fast_cpu = self.fast_cpu_by_default
        self.n_q = n_q or cfg.n_q
        self.dtype = dtype
        self.sample_rate = cfg.sample_rate

    def to(self, device: torch.device) -> "STDumpModel":
        self.model.to(device)
        return self

    def set_fast_cpu(self, enabled: bool) -> None:
        self.fast_cpu = bool(enabled)

    @torch.inference_mode()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        precision = (torch.autocast(padded.device.type, dtype=self.dtype) if self.dtype != torch.float32
                     else contextlib.nullcontext())
        if self.fast_cpu and padded.device.type == "cpu" and self.dtype == padded.dtype == torch.float32:
            codes = self.fast.encode(padded[:, None, :], lengths, n_q=self.n_q)
        else:
            with precision:
                codes = self.model.encode(padded[:, None, :], lengths, n_q=self.n_q)
        codes = codes.to(torch.int32).permute(1, 2, 0).cpu().numpy()  # [B, T, n_q]
        return [codes[i, :n] for i, n in enumerate(self.model.frames(lengths).tolist())]

    def describe(self) -> dict:
        cfg = self.model.cfg
        return {"model": "speechtokenizer", "n_q": self.n_q, "codebook_size": cfg.codebook_size,
                "frame_rate": cfg.sample_rate / cfg.hop, "sample_rate": cfg.sample_rate,
                "dtype": str(self.dtype).replace("torch.", ""), "layout": "[T, n_q] frames x codebooks"}

    def fingerprint(self) -> dict:
        from stok.core.checksums import file_sha256, module_checksum

        weights = ([file_sha256(p) for p in self.weights_files] if self.weights_files
                   else module_checksum(self.model))
        return {"model": "speechtokenizer", "config": self.model.cfg.to_dict(), "n_q": self.n_q,
                "dtype": str(self.dtype).replace("torch.", ""), "weights_sha256": weights}

"""The S3Tokenizer as a dump-engine model: log-mel per utterance in the workers, batched tokens.

``prepare`` computes each utterance's log-mel in a DataLoader worker (the floor uses that
utterance's own maximum, so padding never changes features); ``num_frames`` is the mel frame count
(the engine's bucketing and ``--max_frames`` budget are in mel frames); ``encode`` runs one padded
batch through the model (long utterances in bounded window batches) and returns int32 token vectors.
``fingerprint`` (what a resumed dump must share): the version, the full config, the dtype and the SHA-256 of
the weights file (``weights_file``; for an official name, the verified official ONNX file's). A CPU run in bfloat16
(``--dtype bf16``: fp32 parameters, bf16 matrix products by the recipe ``stok.models.s3.cpu_infer.Precision``)
records dtype ``bfloat16`` and the recipe as ``cpu_precision``; fp32 fingerprints are unchanged by it.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from stok.core.model_api import DumpModel
from stok.models.s3.config import MIN_SAMPLES, SAMPLE_RATE
from stok.models.s3.frontend import log_mel, mel_frames
from stok.models.s3.model import S3Tokenizer


class S3DumpModel(DumpModel):
    sample_rate = SAMPLE_RATE
    min_samples = MIN_SAMPLES
    batch_seconds = {"cpu": 40.0, "cuda": 240.0}
    #: On CPU a batch is one matrix of frames without padding (``stok.models.s3.cpu_infer``): its products reach
    #: full speed at a few hundred token rows, and past about a thousand rows the activations outgrow the caches
    #: (measured on 2 AVX-512 cores: 2000 rows 15-20% slower than 1000). So CPU batches hold about 1000 tokens:
    #: 20 s of audio at 50 Hz, 40 s at 25 Hz.
    cpu_batch_tokens = 1000

    def default_batch_seconds(self, device: torch.device) -> float:
        if torch.device(device).type == "cpu":
            return self.cpu_batch_tokens / self.model.cfg.token_rate
        return super().default_batch_seconds(device)

    def __init__(self, model: S3Tokenizer, weights_file: Optional[str] = None):
        self.model = model
        self.weights_file = weights_file

    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        return log_mel(wave)  # raises TooShort under MIN_SAMPLES samples

    def num_frames(self, num_samples: int) -> int:
        return max(1, mel_frames(num_samples))

    def to(self, device: torch.device) -> "S3DumpModel":
        self.model.to(device)
        return self

    def set_fast_cpu(self, enabled: bool) -> None:
        self.model.set_fast_cpu(enabled)

    @torch.inference_mode()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        codes, code_lens = self.model.quantize(padded, lengths)
        codes = codes.to(torch.int32).cpu().numpy()
        return [codes[i, :n] for i, n in enumerate(code_lens.tolist())]

    def precision(self) -> dict:
        """{"dtype": what the encoder computes in} (+ {"cpu_precision": the bf16 recipe} for a CPU bf16 run)."""
        p = self.model.cpu_inference.precision
        if self.model.device.type == "cpu" and self.model.fast_cpu and p.bf16:
            return {"dtype": "bfloat16", "cpu_precision": p.tag}
        return {"dtype": str(self.model.dtype).replace("torch.", "")}

    def describe(self) -> dict:
        cfg, info = self.model.cfg, self.model.info
        return {"model": "s3tokenizer", "version": cfg.version, "token_rate": cfg.token_rate,
                "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
                **self.precision(), "source": info.get("source"),
                "source_sha256": info.get("source_sha256"), "demo": bool(info.get("demo")),
                "window_frames": cfg.window_frames, "hop_frames": cfg.hop_frames}

    def fingerprint(self) -> dict:
        from stok.core.checksums import file_sha256, module_checksum

        if self.weights_file:
            weights = file_sha256(self.weights_file)
        else:  # an official name: the ONNX file it was loaded or converted from, checked against its SHA-256
            weights = self.model.info.get("source_sha256") or module_checksum(self.model)
        return {"model": "s3tokenizer", "version": self.model.cfg.version, "config": self.model.cfg.to_dict(),
                **self.precision(), "weights_sha256": weights}

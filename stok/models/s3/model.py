"""``S3Tokenizer``: log-mel frames in, discrete tokens out (v1 50 Hz, v1 25 Hz, v2 25 Hz, v3 25 Hz).

    tok = load_s3("speech_tokenizer_v2_25hz")          # or an ONNX/checkpoint path + version
    tok.freeze()                                        # eval, no gradients: usable inside a training step
    codes, code_lens = tok.quantize(mels, mel_lens)     # [B, 128, T] float, [B] -> [B, N] int64, [B] int64

``quantize`` runs on the module's device, under ``torch.no_grad``; the tokens of a batch equal the
tokens of each utterance alone. Utterances longer than one window (30 s) are cut into overlapping
windows (``stok.models.s3.long_audio``), processed ``window_batch`` windows at a time, so memory
does not grow with the length of a file. Padded positions of ``codes`` are 0.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from stok.models.packed_linear import PackedLinear
from stok.models.s3.config import S3Config
from stok.models.s3.cpu_infer import FP32, CpuInference, Precision, eligible
from stok.models.s3.encoder import Encoder, LayerNorm32, init_random
from stok.models.s3.long_audio import Window, plan_windows
from stok.models.s3.quantizer import build_quantizer


class S3Tokenizer(nn.Module):
    fast_cpu: bool = True

    def __init__(self, cfg: S3Config, window_batch: int = 8):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = build_quantizer(cfg)
        self.window_batch = window_batch
        self.info = {"version": cfg.version, "source": None, "source_sha256": None, "demo": False}
        self.cpu_inference = CpuInference(FP32)

    # ------------------------------------------------------------------ set-up
    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    def set_dtype(self, dtype: torch.dtype) -> "S3Tokenizer":
        """Run the encoder in ``dtype``; LayerNorms (computed in fp32) and the quantizer stay float32."""
        self.encoder.to(dtype)
        for m in self.modules():
            if isinstance(m, LayerNorm32):
                m.float()
        self.quantizer.float()
        return self

    def set_fast_cpu(self, enabled: bool = True) -> "S3Tokenizer":
        """CPU kernels (default on): ``quantize`` runs ``stok.models.s3.cpu_infer`` (ragged batches without padding,
        prepacked oneDNN products, fused GELU and residual adds) and direct encoder calls use prepacked Linear
        layers, the FSMN as shifted multiply-adds and no attention mask when nothing is padded
        (``stok.models.s3.encoder``). Off: the plain reference path (and the packed copies are freed). Either way
        GPUs, other dtypes and gradients take the plain path."""
        self.fast_cpu = bool(enabled)
        if not enabled:
            self.cpu_inference.clear()
        for m in self.modules():
            if isinstance(m, PackedLinear):
                m.packed = bool(enabled)
                if not enabled:
                    m.__dict__.pop("_weight_pack", None)
            if hasattr(m, "fast_cpu"):
                m.fast_cpu = bool(enabled)
        if not enabled and hasattr(self.quantizer, "_pack"):
            self.quantizer._pack.clear()
        return self

    def set_cpu_precision(self, precision: Precision) -> "S3Tokenizer":
        """Which parts of the CPU fast path run in bfloat16 (``stok.models.s3.cpu_infer.Precision``; default fp32).
        Used only where the fast path runs (``set_fast_cpu(True)``, CPU, fp32 parameters, no gradients). Packed
        weights are kept per dtype, so switching back and forth repacks nothing."""
        self.cpu_inference.precision = precision
        return self

    def freeze(self) -> "S3Tokenizer":
        """Eval mode and no parameter gradients: a fixed tokenizer inside another model's training."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def init_random(self, seed: int = 0) -> "S3Tokenizer":
        init_random(self, seed)
        return self

    def token_lengths(self, mel_lens: torch.Tensor) -> torch.Tensor:
        n = torch.div(mel_lens.long() + self.cfg.conv1_stride - 1, self.cfg.conv1_stride, rounding_mode="floor")
        return torch.div(n + 1, 2, rounding_mode="floor")

    # ------------------------------------------------------------------ inference
    def single_pass(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One encoder pass over a padded batch (no windowing): tokens [B, T'] int32 (padding = 0), lengths."""
        if self.fast_cpu and eligible(self):
            parts = self.cpu_inference.tokens(self, mels, mel_lens.tolist())
            lens = torch.tensor([len(p) for p in parts], device=mels.device)
            return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True), lens
        hidden, lens = self.encoder(mels, mel_lens)
        tokens = self.quantizer(hidden)
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lens[:, None]
        return tokens * valid, lens

    def forward(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.quantize(mels, mel_lens)

    @torch.no_grad()
    def quantize(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mels [B, n_mels, T] (any padding past each length), mel_lens [B] -> codes [B, N] int64, code_lens [B]
        int64."""
        if mels.dim() != 3 or mels.shape[1] != self.cfg.n_mels:
            raise ValueError(f"mels must be [B, {self.cfg.n_mels}, T], got {tuple(mels.shape)}")
        device = self.device
        mels = mels.to(device)
        mel_lens = mel_lens.to(device=device, dtype=torch.long)
        lens_list: List[int] = mel_lens.tolist()
        if min(lens_list, default=1) < 1:
            raise ValueError("every utterance needs at least one mel frame")
        w = self.cfg.window_frames
        if max(lens_list, default=0) <= w:
            tokens, lens = self.single_pass(mels[:, :, : max(lens_list)], mel_lens)
            return tokens.long(), lens
        code_lens = self.token_lengths(mel_lens)
        codes = torch.zeros(len(lens_list), int(code_lens.max()), dtype=torch.long, device=device)
        short = [i for i, n in enumerate(lens_list) if n <= w]
        if short:
            idx = torch.tensor(short, device=device)
            tokens, lens = self.single_pass(mels[idx, :, : max(lens_list[i] for i in short)], mel_lens[idx])
            codes[idx, : tokens.shape[1]] = tokens.long()
        windows: List[Tuple[int, Window]] = [(i, win) for i, n in enumerate(lens_list) if n > w
                                             for win in plan_windows(n, self.cfg)]
        for j in range(0, len(windows), max(1, self.window_batch)):
            self._run_windows(mels, windows[j: j + self.window_batch], codes)
        return codes, code_lens

    def _run_windows(self, mels: torch.Tensor, windows: List[Tuple[int, Window]], codes: torch.Tensor) -> None:
        longest = max(win.end - win.start for _, win in windows)
        batch = mels.new_zeros(len(windows), mels.shape[1], longest)
        for k, (i, win) in enumerate(windows):
            batch[k, :, : win.end - win.start] = mels[i, :, win.start: win.end]
        lens = torch.tensor([win.end - win.start for _, win in windows], device=mels.device)
        tokens, _ = self.single_pass(batch, lens)
        for k, (i, win) in enumerate(windows):
            codes[i, win.offset: win.offset + win.keep_to - win.keep_from] = tokens[k, win.keep_from: win.keep_to]


def build_model(cfg: S3Config, seed: Optional[int] = None, window_batch: int = 8) -> S3Tokenizer:
    model = S3Tokenizer(cfg, window_batch=window_batch)
    if seed is not None:
        model.init_random(seed)
    return model.freeze()

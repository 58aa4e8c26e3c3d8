"""S3Tokenizer versions and their model dimensions.

The version is always an explicit choice (an argument or a checkpoint's metadata), never
guessed from a file name. ``full_config(version)`` gives the dimensions of the official
files; ``tiny_config(version)`` a small model with the same structure (tests, demo recipe).

| version  | conv1 stride | tokens/s | positions            | FSMN | quantizer          | blocks |
|----------|--------------|----------|----------------------|------|--------------------|--------|
| v1_50hz  | 1            | 50       | learned 1500 x D     | no   | VQ, 4096 codes     | 6      |
| v1_25hz  | 2            | 25       | learned 1500 x D     | no   | VQ, 4096 codes     | 6      |
| v2_25hz  | 2            | 25       | rotary (theta 1e4)   | yes  | FSQ, 3^8 = 6561    | 6      |
| v3_25hz  | 2            | 25       | rotary (theta 1e4)   | yes  | FSQ, 3^8 = 6561    | 12     |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict

VERSIONS = ("v1_50hz", "v1_25hz", "v2_25hz", "v3_25hz")

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (100 frames/s)
N_FFT = 400
MIN_SAMPLES = 201  # the centred STFT's reflect pad of 200 needs more than 200 samples


@dataclass
class S3Config:
    version: str
    n_mels: int = 128
    d_model: int = 1280
    n_heads: int = 20
    n_layers: int = 6
    mlp_ratio: int = 4
    conv1_stride: int = 1
    positions: str = "learned"  # "learned" (v1: absolute table) or "rotary" (v2, v3)
    n_ctx: int = 1500  # rows of the learned table (v1)
    rope_theta: float = 10000.0
    fsmn_kernel: int = 0  # 0: no FSMN memory (v1); 31 for v2/v3
    quantizer: str = "vq"  # "vq" (v1) or "fsq" (v2, v3)
    codebook_size: int = 4096  # VQ rows; FSQ: levels ** fsq_dims
    fsq_dims: int = 8
    fsq_levels: int = 3
    fsq_scale: float = 0.999
    ln_eps: float = 1e-5
    # long audio: windows of window_frames mel frames every hop_frames frames (30 s / 26 s)
    window_frames: int = 3000
    hop_frames: int = 2600

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"unknown S3Tokenizer version {self.version!r}; choose one of {', '.join(VERSIONS)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.positions not in ("learned", "rotary") or self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"bad positions/quantizer: {self.positions}/{self.quantizer}")
        s = self.stride
        if self.window_frames % s or self.hop_frames % s or (self.window_frames - self.hop_frames) % (2 * s):
            raise ValueError(f"window {self.window_frames} and hop {self.hop_frames} frames must be multiples of the "
                             f"stride {s}, and half their overlap too")
        if not 0 < self.hop_frames < self.window_frames:
            raise ValueError("need 0 < hop_frames < window_frames")
        if self.positions == "learned" and self.window_frames // s > self.n_ctx:
            raise ValueError(f"a window of {self.window_frames} frames gives {self.window_frames // s} positions, "
                             f"more than the learned table's {self.n_ctx}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def stride(self) -> int:
        """Mel frames per token."""
        return self.conv1_stride * 2

    @property
    def token_rate(self) -> float:
        return SAMPLE_RATE / HOP / self.stride

    @property
    def vocab_size(self) -> int:
        return self.fsq_levels ** self.fsq_dims if self.quantizer == "fsq" else self.codebook_size

    def token_count(self, mel_frames: int) -> int:
        """Tokens for ``mel_frames`` frames: each conv gives ceil(L / stride)."""
        n = -(-mel_frames // self.conv1_stride)
        return -(-n // 2)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "S3Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown S3Config fields: {sorted(unknown)}")
        return cls(**d)


def full_config(version: str) -> S3Config:
    """Dimensions of the official model of ``version``."""
    if version == "v1_50hz":
        return S3Config(version, conv1_stride=1)
    if version == "v1_25hz":
        return S3Config(version, conv1_stride=2)
    if version in ("v2_25hz", "v3_25hz"):
        return S3Config(version, conv1_stride=2, positions="rotary", fsmn_kernel=31, quantizer="fsq",
                        codebook_size=3 ** 8, n_layers=12 if version == "v3_25hz" else 6)
    raise ValueError(f"unknown S3Tokenizer version {version!r}; choose one of {', '.join(VERSIONS)}")


def tiny_config(version: str, d_model: int = 64, n_heads: int = 2, n_layers: int = 2, **overrides) -> S3Config:
    """A small model with the structure of ``version`` (tests, the demo recipe)."""
    base = full_config(version).to_dict()
    base.update(d_model=d_model, n_heads=n_heads, n_layers=n_layers)
    if base["quantizer"] == "vq":
        base["codebook_size"] = overrides.pop("codebook_size", 256)
    base.update(overrides)
    return S3Config(**base)

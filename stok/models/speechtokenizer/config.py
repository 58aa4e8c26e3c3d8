"""SpeechTokenizer configuration: the fields of the released ``config.json`` plus the quantizer's training knobs.

The model fields and their defaults are those of the released ``speechtokenizer_hubert_avg`` model. The
released ``config.json`` also carries settings of the HiFi-GAN trainer it was copied from (``segment_size``,
``learning_rate``, ``adam_b1``, ...); the model does not read them, :meth:`SpeechTokenizerConfig.from_dict`
keeps them aside (not as fields) so that :meth:`~SpeechTokenizerConfig.to_dict` writes them back unchanged.

The constructor is a plain dataclass constructor: an unknown keyword raises ``TypeError``. Numbers given as
strings (YAML reads ``1e-5`` as a string) are converted; values that cannot be are ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch.nn as nn

log = logging.getLogger(__name__)

#: keys of the released config.json that come from the HiFi-GAN trainer and that the model does not read
RELEASED_LEFTOVERS = frozenset({
    "resblock", "num_gpus", "batch_size", "learning_rate", "adam_b1", "adam_b2", "lr_decay", "seed",
    "lambda_distill", "segment_size", "num_mels", "num_freq", "n_fft", "hop_size", "win_size", "sampling_rate",
    "fmin", "fmax", "fmax_for_loss", "num_workers", "dist_config",
})

_INT_FIELDS = ("n_filters", "dimension", "semantic_dimension", "dilation_base", "residual_kernel_size",
               "n_residual_layers", "lstm_layers", "codebook_size", "n_q", "sample_rate", "kmeans_iters")
_FLOAT_FIELDS = ("ema_decay", "ema_eps", "dead_code_threshold")


@dataclass
class SpeechTokenizerConfig:
    # --- read by the released model (config.json names and values)
    n_filters: int = 64
    strides: List[int] = field(default_factory=lambda: [8, 5, 4, 2])
    dimension: int = 1024
    semantic_dimension: int = 768
    bidirectional: bool = True
    dilation_base: int = 2
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    lstm_layers: int = 2
    activation: str = "ELU"
    codebook_size: int = 1024
    n_q: int = 8
    sample_rate: int = 16000
    # --- quantizer training (the released values; they do not change inference)
    kmeans_iters: int = 50  # k-means iterations of the codebook initialisation
    ema_decay: float = 0.99  # EMA decay of the codebook statistics
    ema_eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    dead_code_threshold: float = 2.0  # codes whose EMA cluster size falls below this are replaced

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            setattr(self, name, _as_number(name, getattr(self, name), int))
        for name in _FLOAT_FIELDS:
            setattr(self, name, _as_number(name, getattr(self, name), float))
        if isinstance(self.strides, (str, bytes)) or not hasattr(self.strides, "__iter__"):
            raise ValueError(f"SpeechTokenizerConfig.strides must be a list of integers, got {self.strides!r}")
        self.strides = [_as_number("strides", s, int) for s in self.strides]
        self.bidirectional = bool(self.bidirectional)
        positive = ["n_filters", "dimension", "semantic_dimension", "dilation_base", "residual_kernel_size",
                    "codebook_size", "n_q", "sample_rate"]
        bad = [n for n in positive if getattr(self, n) <= 0]
        bad += [n for n in ("n_residual_layers", "lstm_layers", "kmeans_iters", "dead_code_threshold")
                if getattr(self, n) < 0]
        if not self.strides or any(s <= 0 for s in self.strides):
            bad.append("strides")
        if not 0.0 <= self.ema_decay < 1.0:
            bad.append("ema_decay")
        if self.ema_eps <= 0:
            bad.append("ema_eps")
        if bad:
            raise ValueError(f"SpeechTokenizerConfig: invalid value(s) for {', '.join(bad)}: "
                             f"{ {n: getattr(self, n) for n in bad} }")
        act = getattr(nn, self.activation, None)
        if not (isinstance(act, type) and issubclass(act, nn.Module)):
            raise ValueError(f"SpeechTokenizerConfig.activation {self.activation!r} is not a torch.nn module "
                             "(the released model uses 'ELU')")
        self._leftovers: Dict[str, Any] = {}

    @property
    def hop(self) -> int:
        """Samples per frame: the product of the strides (320 for the released model)."""
        return math.prod(self.strides)

    @property
    def leftovers(self) -> Dict[str, Any]:
        """Keys of the source ``config.json`` that the model does not read, written back by :meth:`to_dict`."""
        return dict(self._leftovers)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "<dict>") -> "SpeechTokenizerConfig":
        """Build from a released-style mapping; keys that are not fields are kept as leftovers.

        Keys that are neither fields nor known HiFi-GAN leftovers are kept too, with a warning (a typo of a
        field name would otherwise fall back to the default silently)."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a SpeechTokenizer config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        rest = {k: v for k, v in d.items() if k not in names}
        odd = sorted(set(rest) - RELEASED_LEFTOVERS)
        if odd:
            log.warning("%s: %s not SpeechTokenizer config field(s); kept as is but unused (fields: %s)",
                        source, odd, sorted(names))
        try:
            cfg = cls(**known)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e
        cfg._leftovers = rest
        return cfg

    @classmethod
    def from_json(cls, path: str) -> "SpeechTokenizerConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d, source=path)

    def to_dict(self) -> Dict[str, Any]:
        """The leftovers first (as in the released file), then every field."""
        out = dict(self._leftovers)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, list) else v
        return out

    def write_json(self, path: str) -> None:
        """Write ``path`` (plain write; :func:`~stok.models.speechtokenizer.checkpoint.save_released` is atomic)."""
        with open(path, "w") as f:
            f.write(self.to_json())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=4) + "\n"


def _as_number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"SpeechTokenizerConfig.{name} must be a number, got {value!r}")
    try:
        out = kind(value) if isinstance(value, str) else value
        if kind is int and isinstance(out, float) and out.is_integer():
            out = int(out)
        if kind is float and isinstance(out, int):
            out = float(out)
    except ValueError:
        raise ValueError(f"SpeechTokenizerConfig.{name} must be {kind.__name__}, got {value!r}") from None
    if not isinstance(out, kind):
        raise ValueError(f"SpeechTokenizerConfig.{name} must be {kind.__name__}, got {value!r}")
    return out

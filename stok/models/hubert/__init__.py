"""HuBERT teachers through ``torchaudio.models``: architectures, weight loading from every common layout, and
exact batched feature extraction.

- :mod:`~stok.models.hubert.configs`: base / large / xlarge, and architecture inference from weights.
- :mod:`~stok.models.hubert.load_fairseq`: fairseq ``.pt`` checkpoints (restricted unpickler, no fairseq).
- :mod:`~stok.models.hubert.load_hf`: Hugging Face directories (``config.json`` + ``pytorch_model.bin`` or
  ``model.safetensors``).
- :mod:`~stok.models.hubert.load_torchaudio`: torchaudio state dicts, and torchaudio pipeline bundles by name.
- :mod:`~stok.models.hubert.extract`: per-utterance front end + batched transformer, layer L or the average.

:func:`load_hubert` picks the loader (``fmt="auto"``): a directory is a Hugging Face model, a name such as
``HUBERT_BASE`` that is not a path is a torchaudio bundle, and a file is inspected after a safe load
(fairseq dict with ``cfg``/``args`` + ``model``; otherwise a state dict whose key names say fairseq,
Hugging Face or torchaudio).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

FORMATS = ("auto", "fairseq", "hf", "torchaudio", "bundle")


@dataclass
class LoadedHubert:
    """A torchaudio ``Wav2Vec2Model`` in eval mode with its config and where it came from."""

    model: torch.nn.Module
    config: dict
    #: normalise each waveform to zero mean, unit variance first (None: the checkpoint does not say)
    normalize: Optional[bool]
    source: str
    fmt: str
    notes: dict = field(default_factory=dict)


def _looks_like_fairseq_names(keys) -> bool:
    return any(k.startswith(("post_extract_proj.", "encoder.pos_conv.", "w2v_encoder.")) or ".self_attn." in k
               for k in keys)


def _looks_like_hf_names(keys) -> bool:
    return any(k.startswith(("feature_projection.", "hubert.", "encoder.pos_conv_embed.")) for k in keys)


def load_hubert(path: str, fmt: str = "auto", preset: Optional[str] = None) -> LoadedHubert:
    """Load HuBERT weights (see module docstring); ``preset`` is ``--hubert_config`` (None: auto)."""
    from stok.models.hubert.configs import ConfigError

    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format must be one of {FORMATS}, got {fmt!r}")
    if preset in ("auto", ""):
        preset = None
    if fmt == "bundle" or (fmt == "auto" and not os.path.exists(path) and path.isidentifier()):
        from stok.models.hubert.load_torchaudio import load_bundle

        return load_bundle(path)
    if not os.path.exists(path):
        raise ConfigError(f"HuBERT checkpoint {path} not found; give a fairseq .pt, a Hugging Face dir, a torchaudio "
                          "state dict or a torchaudio bundle name such as HUBERT_BASE")
    if fmt == "hf" or (fmt == "auto" and os.path.isdir(path)):
        from stok.models.hubert.load_hf import load_hf

        return load_hf(path, preset)
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; only --checkpoint_format hf/auto read directories")
    from stok.models.hubert.load_fairseq import from_fairseq_dict, is_fairseq_dict
    from stok.models.hubert.safe_unpickle import load_checkpoint

    if path.endswith(".safetensors"):
        from stok.models.hubert.load_hf import read_safetensors

        obj, stubbed = read_safetensors(path), set()
    else:
        obj, stubbed = load_checkpoint(path)
    if fmt == "fairseq" or (fmt == "auto" and is_fairseq_dict(obj)):
        return from_fairseq_dict(obj, path, preset, stubbed)
    from stok.models.hubert.load_torchaudio import from_state_dict, unwrap_state_dict

    sd, cfg = unwrap_state_dict(obj, path)
    if fmt == "auto" and _looks_like_fairseq_names(sd):
        from stok.models.hubert.load_fairseq import fairseq_to_torchaudio
        from stok.models.hubert.configs import infer_config, load_into

        ta = fairseq_to_torchaudio(sd, path)
        cfg = infer_config(ta, None, preset, path)
        return LoadedHubert(load_into(cfg, ta, path), cfg, None, path, "fairseq-state-dict")
    if fmt == "auto" and _looks_like_hf_names(sd):
        from stok.models.hubert.load_hf import hf_to_torchaudio
        from stok.models.hubert.configs import infer_config, load_into

        ta = hf_to_torchaudio(sd, path)
        cfg = infer_config(ta, None, preset, path)
        return LoadedHubert(load_into(cfg, ta, path), cfg, None, path, "hf-state-dict")
    return from_state_dict(sd, path, preset, cfg)

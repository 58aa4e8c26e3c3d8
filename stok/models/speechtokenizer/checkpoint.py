"""The released file pair: ``config.json`` + ``SpeechTokenizer.pt`` (a plain state dict), read and written.

The pair is what the public ``speechtokenizer`` package reads with
``SpeechTokenizer.load_from_checkpoint(config, ckpt)`` and what it publishes (``speechtokenizer_hubert_avg``:
166 tensors). :func:`save_released` writes exactly the released keys, each file atomically;
:func:`load_released` reads with ``weights_only=True`` and ``strict`` key checking.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Union

import torch

from stok.core.fileio import atomic_torch_save, atomic_write_text
from stok.models.speechtokenizer.config import SpeechTokenizerConfig
from stok.models.speechtokenizer.model import SpeechTokenizer

CONFIG_NAME = "config.json"
CKPT_NAME = "SpeechTokenizer.pt"

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    pass


def save_released(model: SpeechTokenizer, out_dir: PathLike) -> str:
    """Write ``out_dir/config.json`` (fields + kept leftovers) and ``out_dir/SpeechTokenizer.pt``; returns
    ``out_dir``."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ckpt = os.path.join(out_dir, CKPT_NAME)
    atomic_torch_save(state, ckpt)
    atomic_write_text(model.cfg.to_json(), os.path.join(out_dir, CONFIG_NAME))
    return out_dir


def load_released(config_path: PathLike, ckpt_path: Optional[PathLike] = None,
                  map_location: Union[str, torch.device] = "cpu") -> SpeechTokenizer:
    """A :class:`SpeechTokenizer` in eval mode from the released pair.

    ``load_released(model_dir)`` reads ``model_dir/config.json`` and ``model_dir/SpeechTokenizer.pt``."""
    config_path = os.fspath(config_path)
    if ckpt_path is None:
        if not os.path.isdir(config_path):
            raise CheckpointError(f"{config_path}: give a model directory (holding {CONFIG_NAME} and "
                                  f"{CKPT_NAME}) or both the config and the checkpoint path")
        config_path, ckpt_path = os.path.join(config_path, CONFIG_NAME), os.path.join(config_path, CKPT_NAME)
    ckpt_path = os.fspath(ckpt_path)
    for p in (config_path, ckpt_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"{p}: no such file (the released model is {CONFIG_NAME} + {CKPT_NAME}, e.g. "
                                  "fnlp/SpeechTokenizer speechtokenizer_hubert_avg on the Hugging Face hub)")
    cfg = SpeechTokenizerConfig.from_json(config_path)
    state = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{ckpt_path}: expected a plain state dict of tensors (SpeechTokenizer.pt), "
                              f"got {type(state).__name__}")
    model = SpeechTokenizer(cfg)
    _check_keys(model.state_dict(), state, ckpt_path, config_path)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def _check_keys(expected: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor], ckpt_path: str,
                config_path: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if wrong:
            parts.append("shape mismatches " + ", ".join(
                f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong))
        raise CheckpointError(f"{ckpt_path} does not match the model of {config_path}: {'; '.join(parts)} "
                              "(is the config the one written with this checkpoint?)")

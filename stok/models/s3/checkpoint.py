"""Converted S3Tokenizer weights as a torch checkpoint with metadata, loaded with ``weights_only=True``.

File content (plain types and tensors only)::

    {"format": "stok-s3tokenizer", "format_version": 1, "version": "v2_25hz", "config": {...},
     "source": "speech_tokenizer_v2.onnx", "source_sha256": "...", "demo": False,
     "ln_eps": {module: eps}, "state_dict": {name: tensor}}

Loading one takes a fraction of a second, against several seconds to parse and map an ONNX file.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from stok.core.fileio import atomic_torch_save
from stok.models.s3.config import S3Config
from stok.models.s3.encoder import LayerNorm32
from stok.models.s3.model import S3Tokenizer

FORMAT = "stok-s3tokenizer"


class CheckpointError(ValueError):
    pass


def save_checkpoint(model: S3Tokenizer, path: str) -> None:
    eps = {name: float(m.eps) for name, m in model.named_modules() if isinstance(m, LayerNorm32)}
    info = model.info
    blob = {"format": FORMAT, "format_version": 1, "version": model.cfg.version, "config": model.cfg.to_dict(),
            "source": info.get("source") and os.path.basename(str(info["source"])),
            "source_sha256": info.get("source_sha256"), "demo": bool(info.get("demo")), "ln_eps": eps,
            "state_dict": {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}}
    atomic_torch_save(blob, path)


def read_metadata(path: str) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a stok S3Tokenizer checkpoint (written by stok.models.s3.checkpoint)")
    return blob


def load_checkpoint(path: str, version: Optional[str] = None, window_batch: int = 8) -> S3Tokenizer:
    blob = read_metadata(path)
    if version and version != blob["version"]:
        raise CheckpointError(f"{path} holds an S3Tokenizer {blob['version']}, but version {version} was asked")
    cfg = S3Config.from_dict(blob["config"])
    with torch.device("meta"):  # no random initialisation of weights about to be replaced (~1 s at full size)
        model = S3Tokenizer(cfg, window_batch=window_batch)
    model.load_state_dict(blob["state_dict"], strict=True, assign=True)
    for name, eps in blob.get("ln_eps", {}).items():
        model.get_submodule(name).eps = eps
    model.info.update(source=blob.get("source"), source_sha256=blob.get("source_sha256"), demo=bool(blob.get("demo")),
                      checkpoint=path)
    return model.freeze()

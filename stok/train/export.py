"""Export a trained generator as the released pair ``config.json`` + ``SpeechTokenizer.pt``.

The source is the checkpoint with the lowest dev mel error (``sched.export_from: best``, as the released
trainer's ``SpeechTokenizer_best_dev.pt``) or the final state (``final``); with weight EMA on, the EMA weights
are exported. ``export_info.json`` next to them says which step and weights were used.
The trainer's k-means head (``distill_type: kmeans``) is not part of the released layout and is not exported.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import torch
from torch import nn

from stok.core.fileio import atomic_write_text
from stok.train.checkpoint import CheckpointManager, load_checkpoint

log = logging.getLogger("stok.train")


def model_state_from_checkpoint(state: Dict[str, Any], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The SpeechTokenizer state dict inside a training checkpoint (EMA weights when present and wanted)."""
    if use_ema and state.get("ema") is not None:
        return state["ema"]
    prefix = "model."
    return {k[len(prefix):]: v for k, v in state["generator"].items() if k.startswith(prefix)}


def export_from_checkpoint(ckpt_path: str, out_dir: str, use_ema: bool = True,
                           model_config: Optional[Dict[str, Any]] = None) -> str:
    """Write the released pair from a training checkpoint file (no trainer needed)."""
    from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig
    from stok.models.speechtokenizer.checkpoint import save_released

    state = load_checkpoint(ckpt_path)
    cfg = SpeechTokenizerConfig(**(model_config or state["config"]["model"]))
    model = SpeechTokenizer(cfg)
    model.load_state_dict(model_state_from_checkpoint(state, use_ema))
    model.eval()
    save_released(model, out_dir)
    info = {"source": os.path.abspath(ckpt_path), "step": int(state["step"]),
            "weights": "ema" if use_ema and state.get("ema") is not None else "generator"}
    atomic_write_text(json.dumps(info, indent=1) + "\n", os.path.join(out_dir, "export_info.json"))
    return out_dir


def export_generator(out_dir: str, checkpoints: CheckpointManager, export_from: str, model_config: Dict[str, Any],
                     final_model: nn.Module, step: int, ema: bool) -> str:
    """Export per ``sched.export_from``: the best checkpoint of ``checkpoints`` (by dev mel), else (``final``, or
    no validation yet) ``final_model``, the generator at ``step`` (``ema``: it holds the EMA weights)."""
    from stok.models.speechtokenizer.checkpoint import save_released

    os.makedirs(out_dir, exist_ok=True)
    best = checkpoints.best() if export_from == "best" else None
    if best is not None:
        export_from_checkpoint(best["path"], out_dir, model_config=model_config)
        log.info("exported step %d (best dev mel %.4f) to %s", best["step"], best["dev_mel"], out_dir)
        return out_dir
    was = final_model.training
    final_model.eval()
    save_released(final_model, out_dir)
    final_model.train(was)
    info = {"source": "final", "step": step, "weights": "ema" if ema else "generator"}
    atomic_write_text(json.dumps(info, indent=1) + "\n", os.path.join(out_dir, "export_info.json"))
    log.info("exported the final generator (step %d) to %s", step, out_dir)
    return out_dir

"""Command-line options naming a SpeechTokenizer model, shared by ``stok-dump-codes``, ``stok-decode``, ``stok-eval``.

A model is given as the released pair: ``--model_dir`` (a dir with ``config.json`` and ``SpeechTokenizer.pt``,
e.g. ``exp/st/export`` from stage 3 or the released ``speechtokenizer_hubert_avg``), or ``--config`` and
``--ckpt`` for files named otherwise.
"""

from __future__ import annotations

import argparse
import os
import pickle

import torch

from stok.models.speechtokenizer.checkpoint import load_released
from stok.models.speechtokenizer.model import SpeechTokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SpeechTokenizer model")
    g.add_argument("--model_dir", help="dir with config.json + SpeechTokenizer.pt (stage 3's exp/st/export, or a released model)")
    g.add_argument("--config", help="config.json, with --ckpt (instead of --model_dir)")
    g.add_argument("--ckpt", help="SpeechTokenizer.pt state dict in the released layout, with --config")


def check_model_args(args: argparse.Namespace) -> None:
    """Fail before any work when the model files are not there; the message names them."""
    if args.model_dir:
        if args.config or args.ckpt:
            raise SystemExit("error: give --model_dir or --config/--ckpt, not both")
        for name in ("config.json", "SpeechTokenizer.pt"):
            if not os.path.isfile(os.path.join(args.model_dir, name)):
                raise SystemExit(f"error: {os.path.join(args.model_dir, name)} not found; --model_dir must hold "
                                 "config.json and SpeechTokenizer.pt (stage 3 exports them to exp/st/export)")
    elif args.config and args.ckpt:
        for path in (args.config, args.ckpt):
            if not os.path.isfile(path):
                raise SystemExit(f"error: {path} not found")
    else:
        raise SystemExit("error: name the model: --model_dir DIR, or --config config.json --ckpt SpeechTokenizer.pt")


def load_model(args: argparse.Namespace, device: torch.device) -> SpeechTokenizer:
    """The model the options name, in eval mode, on ``device``."""
    try:
        if args.model_dir:
            model = load_released(args.model_dir)
        else:
            model = load_released(args.config, args.ckpt)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # torch.load of a damaged file
        ckpt = os.path.join(args.model_dir, "SpeechTokenizer.pt") if args.model_dir else args.ckpt
        text = str(e).strip().splitlines()[0].split(". ")[0][:120] if str(e).strip() else ""
        raise SystemExit(f"error: {ckpt}: cannot be read as a SpeechTokenizer checkpoint ({type(e).__name__}: "
                         f"{text}); the file is damaged or incomplete: export or download it again") from None
    return model.to(device).eval()


def check_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "fp32" and device.type != "cuda":
        raise SystemExit(f"error: --dtype {dtype} is for GPUs; on {device} use --dtype fp32")
    return DTYPES[dtype]

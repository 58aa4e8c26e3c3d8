"""``stok-dump-s3`` / ``python -m stok.bin.dump_s3``: S3Tokenizer tokens for a Kaldi dir or wav.scp.

    python -m stok.bin.dump_s3 --data_dir data/train --model speech_tokenizer_v2_25hz \\
        --output_dir dump/s3_v2_25hz/train [--device cuda --dtype bf16] [--cosyvoice_export]
    torchrun --nproc_per_node 4 -m stok.bin.dump_s3 ...      # many GPUs or CPU processes

``--model`` is an official name (resolved in the cache, downloaded with a SHA-256 check when online),
an official-layout ONNX file (``--version`` required: the file does not record it), or a stok
checkpoint (its metadata gives the version). Output: ``s3_tokens.scp`` / ``s3_tokens.<rank>.ark``
(Kaldi int32 vectors, one token per 20 ms (v1_50hz) or 40 ms), ``failed.list`` (utterances under
201 samples, unreadable audio), ``s3_tokens.summary.json``; with ``--cosyvoice_export`` also
``utt2speech_token.pt`` (dict utterance id -> list of ints), what CosyVoice's fine-tuning reads.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from stok.bin.entry import entry_point
from stok.core.distributed import on_gpu
from stok.core.errors import UserError
from stok.core.fileio import atomic_torch_save
from stok.dump.engine import run_dump
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.models.s3.config import VERSIONS

NAME = "s3_tokens"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("stok.s3")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("S3Tokenizer")
    g.add_argument("--model", required=True,
                   help="official name (speech_tokenizer_v1_50hz, speech_tokenizer_v1_25hz, speech_tokenizer_v2_25hz, "
                        "speech_tokenizer_v3_25hz), an ONNX file in the official layout, or a stok checkpoint (.pt)")
    g.add_argument("--version", choices=VERSIONS,
                   help="model version; required for an official ONNX file, checked against names and checkpoints")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="encoder precision; bf16/fp16 need a GPU (the quantizer projection stays fp32)")
    g.add_argument("--window_batch", type=int, default=0,
                   help="long audio (> 30 s): 30 s windows encoded at most this many at a time (0: 8 on GPU, 2 on CPU)")
    g.add_argument("--cosyvoice_export", action="store_true",
                   help="also write utt2speech_token.pt (utterance id -> list of ints) for CosyVoice fine-tuning "
                        "(an existing one in --output_dir is always rewritten to match s3_tokens.scp)")
    add_dump_arguments(p)
    return p


def write_cosyvoice_export(output_dir: str) -> str:
    """``utt2speech_token.pt`` (utterance id -> list of ints) from the merged ``s3_tokens.scp``."""
    from stok.core.storage import load_codes

    tokens = {k: [int(x) for x in v] for k, v in load_codes(os.path.join(output_dir, f"{NAME}.scp"))}
    path = os.path.join(output_dir, "utt2speech_token.pt")
    atomic_torch_save(tokens, path)
    return path


@entry_point
def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    settings = DumpSettings.from_args(args)
    if args.window_batch < 0:
        raise UserError(f"--window_batch {args.window_batch}: give a number >= 0")
    if args.dtype != "fp32" and not on_gpu(settings.device):
        raise UserError(f"--dtype {args.dtype} is for GPUs; on {settings.device} use --dtype fp32")
    dtype = DTYPES[args.dtype]

    def build(device: torch.device):
        from stok.models.s3.dump_model import S3DumpModel
        from stok.models.s3.hub import load_s3

        if dtype != torch.float32 and device.type != "cuda":
            raise UserError(f"--dtype {args.dtype} is for GPUs; on {device} use --dtype fp32")
        window_batch = args.window_batch or (8 if device.type == "cuda" else 2)
        try:
            model = load_s3(args.model, args.version, device, dtype, window_batch)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        return S3DumpModel(model, weights_file=args.model if os.path.isfile(args.model) else None)

    def export(summary: dict) -> None:
        path = write_cosyvoice_export(args.output_dir)
        logging.getLogger("stok.dump").info("CosyVoice export: %s", path)

    stale = os.path.exists(os.path.join(args.output_dir, "utt2speech_token.pt"))  # never left behind the tokens
    return run_dump(settings, build, name=NAME, finish=export if args.cosyvoice_export or stale else None)


if __name__ == "__main__":
    main()

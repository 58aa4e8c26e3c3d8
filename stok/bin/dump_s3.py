"""``stok-dump-s3`` / ``python -m stok.bin.dump_s3``: S3Tokenizer tokens for a Kaldi dir or wav.scp.

    python -m stok.bin.dump_s3 --data_dir data/train --model speech_tokenizer_v2_25hz \\
        --output_dir dump/s3_v2_25hz/train [--device cuda --dtype bf16] [--cosyvoice_export]
    python -m stok.bin.dump_s3 ... --device cpu --dtype bf16   # CPUs with AVX-512 BF16 or AMX
    torchrun --nproc_per_node 4 -m stok.bin.dump_s3 ...      # many GPUs or CPU processes

``--model`` is an official name (resolved in the cache, downloaded with a SHA-256 check when online),
an official-layout ONNX file (``--version`` required: the file does not record it), or a stok
checkpoint (its metadata gives the version). Output: ``s3_tokens.scp`` / ``s3_tokens.<rank>.ark``
(Kaldi int32 vectors, one token per 20 ms (v1_50hz) or 40 ms), ``failed.list`` (utterances under
201 samples, unreadable audio), ``s3_tokens.summary.json``; with ``--cosyvoice_export`` also
``utt2speech_token.pt`` (dict utterance id -> list of ints), what CosyVoice's fine-tuning reads.

``--dtype``: fp32 (default) everywhere. On GPUs bf16/fp16 run the encoder in that precision. On CPU, bf16 runs the
matrix products with bfloat16 inputs and weights where the CPU has bfloat16 dot products (AVX-512 BF16 or AMX),
keeping the residual stream, normalisation, softmax statistics and the quantizer in fp32 (per version, see
``stok.models.s3.cpu_infer.BF16``); tokens then differ from fp32 ones at a rate ``bench/s3_dump.py`` prints
(measured: 0.4-0.5% for v2_25hz; 4-13% for v1 and v3, which the run warns about); on a CPU without them it is
refused. The dtype (and on CPU the bf16 recipe) is part of the dump's fingerprint.
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
                   help="encoder precision (the quantizer stays fp32): fp32; bf16 on a GPU, or on a CPU with "
                        "bfloat16 dot products (AVX-512 BF16 or AMX: bf16 matrix products, fp32 residual stream, "
                        "normalisation and softmax statistics; tokens differ from fp32: 0.4-0.5%% for v2_25hz, "
                        "4-13%% for v1 and v3, which the run warns about); fp16 on a GPU")
    g.add_argument("--window_batch", type=int, default=0,
                   help="long audio (> 30 s): 30 s windows encoded at most this many at a time (0: 8 on GPU, 2 on CPU)")
    g.add_argument("--cosyvoice_export", action="store_true",
                   help="also write utt2speech_token.pt (utterance id -> list of ints) for CosyVoice fine-tuning "
                        "(an existing one in --output_dir is always rewritten to match s3_tokens.scp)")
    add_dump_arguments(p)
    return p


def check_cpu_dtype(dtype: str, device: str, cpu_kernels: str) -> None:
    """``--dtype`` on CPU: fp32 always; bf16 only with native bfloat16 dot products (and stok's CPU kernels, which
    run it); fp16 never. Raised before anything is read or written."""
    from stok.models.cpu_isa import cpu_isa

    if dtype == "fp16":
        raise UserError(f"--dtype fp16 is for GPUs; on {device} use --dtype fp32 (or --dtype bf16 on a CPU with "
                        "AVX-512 BF16 or AMX)")
    isa = cpu_isa()
    if dtype == "bf16" and not isa.bf16:
        raise UserError(f"--dtype bf16 on CPU needs bfloat16 dot products (AVX-512 BF16 or AMX), which this CPU "
                        f"({isa.label}) lacks: there it would run slower than fp32; use --dtype fp32")
    if dtype == "bf16" and cpu_kernels == "reference":
        raise UserError("--dtype bf16 on CPU runs stok's CPU kernels; leave out --cpu_kernels reference "
                        "(or use --dtype fp32)")


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
        check_cpu_dtype(args.dtype, settings.device, settings.cpu_kernels)
    dtype = DTYPES[args.dtype]

    def build(device: torch.device):
        from stok.models.s3.dump_model import S3DumpModel
        from stok.models.s3.hub import load_s3

        on_cpu = device.type != "cuda"
        if dtype != torch.float32 and on_cpu:
            check_cpu_dtype(args.dtype, str(device), settings.cpu_kernels)
        window_batch = args.window_batch or (8 if device.type == "cuda" else 2)
        try:
            model = load_s3(args.model, args.version, device, torch.float32 if on_cpu else dtype, window_batch)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        if on_cpu and dtype == torch.bfloat16:
            from stok.models.s3.cpu_infer import BF16, BF16_AGREEMENT, TARGET_AGREEMENT

            version = model.cfg.version
            model.set_cpu_precision(BF16[version])
            if BF16_AGREEMENT[version] < TARGET_AGREEMENT:
                logging.getLogger("stok.dump").warning(
                    "--dtype bf16 on CPU for %s: in stok's measurement (bench/s3_dump.py, random weights) only "
                    "%.1f%% of its tokens equal the fp32 ones (v2_25hz: %.2f%%); use --dtype fp32 where tokens must "
                    "match fp32 dumps", version, 100 * BF16_AGREEMENT[version], 100 * BF16_AGREEMENT["v2_25hz"])
        return S3DumpModel(model, weights_file=args.model if os.path.isfile(args.model) else None)

    def export(summary: dict) -> None:
        path = write_cosyvoice_export(args.output_dir)
        logging.getLogger("stok.dump").info("CosyVoice export: %s", path)

    stale = os.path.exists(os.path.join(args.output_dir, "utt2speech_token.pt"))  # never left behind the tokens
    return run_dump(settings, build, name=NAME, finish=export if args.cosyvoice_export or stale else None)


if __name__ == "__main__":
    main()

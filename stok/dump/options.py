"""Command-line options shared by every dump (``add_dump_args``) and their validation."""

from __future__ import annotations

import argparse
import math
import os

from stok.cli import UserError
from stok.dump.storage import FEATURE_STORAGES

CPU_KERNELS = ("auto", "fast", "reference")


def add_dump_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("input and output (dump engine)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data_dir", help="Kaldi data dir: wav.scp, optional segments and utt2dur (durations for bucketing)")
    src.add_argument("--wav_scp", help="a bare wav.scp (paths, 'cmd |' pipes or ark:offset entries)")
    g.add_argument("--segments", help="segments file to use with --wav_scp (utt rec start end)")
    g.add_argument("--output_dir", required=True, help="where <name>.scp, <name>.<rank>.ark, failed.list and the summary go")
    g.add_argument("--text_output", action="store_true",
                   help="also write <name>.txt: 'utt tok tok ...' (codes [T, n_q] flattened frame by frame)")
    g.add_argument("--feature_storage", choices=FEATURE_STORAGES, default="float32",
                   help="float features: float32 matrices, or Kaldi two-byte compressed matrices (half the size, "
                        "max error (max-min)/65535, read back as float32 by kaldiio)")
    g.add_argument("--overwrite", action="store_true", help="delete earlier output of this dump instead of resuming")
    g.add_argument("--strict", action="store_true", help="exit non-zero if any utterance failed (default: list and go on)")
    g.add_argument("--limit", type=int, default=0, help="process only the first N utterances (by key), for trials")
    g.add_argument("--manifest_dir", default="",
                   help="stage 0's lhotse manifests, whose ids, recordings and supervisions the dump's cut set "
                        "(cuts.jsonl.gz) takes; default: 'manifests' beside the data dir (data/manifests for "
                        "data/<split>), used when it holds *_cuts_<split>.jsonl.gz; else cuts come from the data dir")
    g.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or STOK_DEBUG=1)")

    b = parser.add_argument_group("batching and execution (dump engine)")
    b.add_argument("--device", default="auto",
                   help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N")
    b.add_argument("--batch_size", type=int, default=64, help="max utterances per batch (0: no limit)")
    b.add_argument("--max_frames", type=int, default=0,
                   help="max padded model frames per batch (batch size x longest item, in the model's input frames); "
                        "overrides --batch_seconds")
    b.add_argument("--batch_seconds", type=float, default=240.0,
                   help="max padded audio seconds per batch (batch size x longest utterance)")
    b.add_argument("--no_bucketing", action="store_true",
                   help="batch in key order instead of by length (more padding; for comparisons)")
    b.add_argument("--num_workers", type=int, default=2,
                   help="workers reading audio: DataLoader processes on GPU, threads of the dumping process on CPU "
                        "(0: in the main loop)")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: cores / processes)")
    b.add_argument("--cpu_kernels", choices=CPU_KERNELS, default="auto",
                   help="on CPU in fp32: fast = stok's kernels (prepacked oneDNN matrix products, fused front ends, "
                        "batched LSTMs: the same values to float32 rounding, so a token or code can differ from "
                        "reference only where two choices are that close to a tie); reference = torch's plain "
                        "modules, each utterance's result as computed alone; auto = fast for S3Tokenizer tokens and "
                        "HuBERT features, reference for SpeechTokenizer codes (bitwise the released package's)")


def check_dump_args(args: argparse.Namespace) -> None:
    """Fail before any work on options that cannot work (:class:`UserError`: names the option or file and the fix)."""
    if args.data_dir and not os.path.isfile(os.path.join(args.data_dir, "wav.scp")):
        raise UserError(f"{args.data_dir}/wav.scp not found; --data_dir must be a Kaldi data dir (run stage 0)")
    if args.wav_scp and not os.path.isfile(args.wav_scp):
        raise UserError(f"--wav_scp {args.wav_scp} not found")
    if args.segments and not args.wav_scp:
        raise UserError("--segments goes with --wav_scp (a --data_dir's own segments file is used automatically)")
    if args.segments and not os.path.isfile(args.segments):
        raise UserError(f"--segments {args.segments} not found")
    for name in ("batch_size", "max_frames", "num_workers", "limit", "threads", "batch_seconds"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"--{name} {value}: give a number >= 0")
    if args.batch_seconds <= 0 and not args.max_frames and not args.batch_size:
        raise UserError("give a batch limit: --batch_size, --max_frames or --batch_seconds")

"""``stok-dump-codes`` / ``python -m stok.bin.dump_codes``: SpeechTokenizer RVQ codes for a Kaldi dir or wav.scp.

    python -m stok.bin.dump_codes --model_dir exp/st/export --data_dir data/train --output_dir dump/st_codes/train
    torchrun --nproc_per_node 4 -m stok.bin.dump_codes ... --device cuda --dtype bf16   # many GPUs or CPU processes

Output (through the dump engine, resumable): ``st_codes.scp`` / ``st_codes.<rank>.ark`` with one ``[T, n_q]``
record per utterance (T = ceil(samples / 320) frames at 50 Hz, column i = RVQ layer i + 1; stored as exact
float32 matrices, 4 bytes a code), ``failed.list``, ``st_codes.summary.json``. ``kaldiio.load_scp`` reads the
codes as exact integers; ``stok.core.storage.load_codes`` returns them as int64 ``[T, n_q]`` (and also reads
dumps of earlier stok versions); ``--text_output`` also writes ``st_codes.txt``.
Batched encoding gives the codes of one-at-a-time encoding: each item is padded and masked at its own end.
Utterances longer than ``--window_seconds`` (60 s) are encoded in overlapping windows of that length, one at a
time, so memory does not grow with an utterance's length (see ``stok.models.speechtokenizer.long_audio``).
"""

from __future__ import annotations

import argparse

import torch

from stok.bin.entry import entry_point
from stok.core.errors import UserError
from stok.dump.engine import run_dump
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.models.speechtokenizer.model_args import DTYPES, STModelSettings, check_dtype

NAME = "st_codes"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    STModelSettings.add_arguments(p, "SpeechTokenizer model")
    g = p.add_argument_group("codes")
    g.add_argument("--n_q", type=int, default=0, help="codebooks to keep, RVQ-1 first (0: all the model has)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="encoder precision; bf16/fp16 need a GPU and may change a few codes against fp32")
    g.add_argument("--window_seconds", type=float, default=60.0,
                   help="utterances longer than this are encoded in overlapping windows of this length, one at a "
                        "time, so that an hour takes the memory of a minute (whole, the encoder needs ~17 MB per "
                        "second of audio at the released size); shorter ones are encoded whole, exactly. "
                        "0: every utterance whole")
    g.add_argument("--window_margin_seconds", type=float, default=5.0,
                   help="context a window keeps on each side of the frames it contributes (the bidirectional "
                        "LSTM's view past the cut)")
    add_dump_arguments(p)
    return p


@entry_point
def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    model_settings = STModelSettings.from_args(args)
    if args.n_q < 0:
        raise UserError(f"--n_q {args.n_q}: give a number >= 0 (0: all codebooks)")
    if args.window_seconds < 0 or args.window_margin_seconds < 0:
        raise UserError("--window_seconds and --window_margin_seconds must be >= 0 (--window_seconds 0: whole "
                        "utterances)")
    if args.window_seconds and not 2 * args.window_margin_seconds < args.window_seconds:
        raise UserError(f"--window_margin_seconds {args.window_margin_seconds:g} leaves nothing of a "
                        f"{args.window_seconds:g} s window: give a margin under half the window")
    settings = DumpSettings.from_args(args)

    def build(device: torch.device):
        from stok.models.speechtokenizer.dump_model import STDumpModel

        dtype = check_dtype(args.dtype, device)
        model = model_settings.load(device)
        if args.n_q > model.cfg.n_q:
            raise UserError(f"--n_q {args.n_q} but the model has {model.cfg.n_q} codebooks; give 1..{model.cfg.n_q} "
                            "(0: all)")
        frame_rate = model.cfg.sample_rate / model.cfg.hop
        window = int(round(args.window_seconds * frame_rate))
        margin = int(round(args.window_margin_seconds * frame_rate))
        if window and not 2 * margin < window:
            raise UserError(f"--window_seconds {args.window_seconds:g} is {window} frames of this model, too few "
                            f"for --window_margin_seconds {args.window_margin_seconds:g} on each side")
        return STDumpModel(model, args.n_q, dtype, weights_files=model_settings.files(), window=window,
                           margin=margin)

    return run_dump(settings, build, name=NAME)


if __name__ == "__main__":
    main()

"""``stok-decode`` / ``python -m stok.bin.decode``: SpeechTokenizer codes (a stage 4 scp) back to audio.

    python -m stok.bin.decode --model_dir exp/st/export --codes_scp dump/st_codes/dev/st_codes.scp \\
        --output_dir exp/st/decode/dev [--first_layer 1] [--n_q 1]

Writes ``<output_dir>/wav/<utt>.wav`` (16-bit PCM at the model's rate, ``frames x hop`` samples) and
``<output_dir>/wav.scp`` listing them, so the result is a data dir that can be listened to, evaluated or
tokenized again. Layers: column i of a codes record is RVQ layer i + 1. ``--first_layer k`` decodes from
layer k + 1 on, i.e. the residual stack of layers k+1..: ``sum_i codebook_i[code_i]`` over those layers
only (``--first_layer 0 --n_q 1`` is RVQ-1 alone, the content layer; ``--first_layer 1`` leaves it out).
Codes are decoded in length-sorted batches, each item with its own length; files already written are
skipped on a rerun (``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from stok.dump.bucketing import make_batches
from stok.dump.distributed import resolve_device
from stok.dump.storage import load_codes
from stok.fileio import atomic_open
from stok.models.speechtokenizer.model_args import add_model_args, check_model_args, load_model

log = logging.getLogger("stok.decode")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--codes_scp", required=True, help="st_codes.scp from stok-dump-codes ([T, n_q] records)")
    p.add_argument("--output_dir", required=True, help="where wav/<utt>.wav and wav.scp go")
    p.add_argument("--first_layer", type=int, default=0, help="0-based RVQ layer to decode from (0: all layers)")
    p.add_argument("--n_q", type=int, default=0, help="layers to use from --first_layer on (0: all that are there)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch_seconds", type=float, default=60.0, help="max padded audio seconds per decode batch")
    p.add_argument("--limit", type=int, default=0, help="decode only the first N utterances")
    p.add_argument("--overwrite", action="store_true", help="decode again utterances whose wav exists")
    return p


def _write_wav(path: str, wav: np.ndarray, sample_rate: int) -> None:
    with atomic_open(path) as f:
        sf.write(f, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    check_model_args(args)
    if not os.path.isfile(args.codes_scp):
        raise SystemExit(f"error: --codes_scp {args.codes_scp} not found (stage 4 writes dump/st_codes/<split>/st_codes.scp)")
    if args.first_layer < 0 or args.n_q < 0 or args.limit < 0:
        raise SystemExit("error: --first_layer, --n_q and --limit must be >= 0")
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    model = load_model(args, device)
    cfg = model.cfg
    last = cfg.n_q if not args.n_q else args.first_layer + args.n_q
    if last > cfg.n_q or args.first_layer >= cfg.n_q:
        raise SystemExit(f"error: layers {args.first_layer}..{last - 1} asked for, the model has {cfg.n_q} (0..{cfg.n_q - 1})")

    wav_dir = os.path.join(args.output_dir, "wav")
    os.makedirs(wav_dir, exist_ok=True)
    items = []
    for key, codes in load_codes(args.codes_scp):
        if codes.ndim != 2:
            raise SystemExit(f"error: {args.codes_scp}:{key} holds 1-D tokens, not SpeechTokenizer codes [T, n_q]")
        if codes.shape[1] < last:
            raise SystemExit(f"error: {args.codes_scp}:{key} has {codes.shape[1]} codebooks; layers up to {last - 1} "
                             "asked for (lower --n_q or dump more codebooks)")
        items.append((key, codes[:, args.first_layer:last]))
        if args.limit and len(items) == args.limit:
            break
    todo = [(k, c) for k, c in items if args.overwrite or not os.path.exists(os.path.join(wav_dir, k + ".wav"))]
    frames_budget = int(args.batch_seconds * cfg.sample_rate / cfg.hop)
    batches = make_batches([len(c) for _, c in todo], frames_budget, 0, bucketing=True)
    start, seconds = time.time(), 0.0
    with torch.inference_mode(), tqdm(total=len(todo), desc="decode", unit="utt") as bar:
        for idx in batches:
            group = [todo[i] for i in idx]
            lengths = torch.tensor([len(c) for _, c in group], device=device)
            padded = torch.zeros(last - args.first_layer, len(group), int(lengths.max()), dtype=torch.long, device=device)
            for b, (_, c) in enumerate(group):
                padded[:, b, : len(c)] = torch.from_numpy(c.T).to(device)
            wav = model.decode(padded, first_layer=args.first_layer, lengths=lengths).float().cpu().numpy()
            for b, (key, c) in enumerate(group):
                n = len(c) * cfg.hop
                _write_wav(os.path.join(wav_dir, key + ".wav"), wav[b, 0, :n], cfg.sample_rate)
                seconds += n / cfg.sample_rate
            bar.update(len(group))
    with open(os.path.join(args.output_dir, "wav.scp"), "w", encoding="utf-8") as f:
        for key, _ in sorted(items):
            f.write(f"{key} {os.path.abspath(os.path.join(wav_dir, key + '.wav'))}\n")
    summary = {"utterances": len(items), "decoded_now": len(todo), "audio_seconds_now": seconds,
               "wall_seconds": time.time() - start, "layers": [args.first_layer, last - 1],
               "codes_scp": os.path.abspath(args.codes_scp)}
    log.info("decoded %d utterances (%.1f s of audio) from layers %d..%d into %s in %.1f s", len(todo), seconds,
             args.first_layer, last - 1, args.output_dir, summary["wall_seconds"])
    return summary


if __name__ == "__main__":
    main()

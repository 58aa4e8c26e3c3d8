"""``stok-eval`` / ``python -m stok.bin.eval``: how well a SpeechTokenizer reconstructs a corpus, and how it uses its codes.

    python -m stok.bin.eval --model_dir exp/st/export --data_dir data/dev --output_dir exp/st/eval/dev [--sweep]

For every utterance: encode (``--n_q`` layers), decode, and compare with the input: multi-resolution mel
distance (the trainer's dev metric, averaged over its four resolutions), SI-SNR (dB) and STOI (when
``pystoi`` is installed). Over the set: per RVQ layer codes used and perplexity. ``--sweep`` also decodes
with layers 1..k for every k (quality against bitrate). Writes ``report.json`` (means and per-utterance
values; unreadable audio listed under ``failed``), ``code_usage.png`` and ``mel_distance.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Dict, List

import numpy as np
import torch
from tqdm import tqdm

from stok.bin.entry import entry_point
from stok.core.bucketing import make_batches
from stok.core.distributed import resolve_device
from stok.core.errors import UserError
from stok.core.fileio import check_output_dir
from stok.dump.inputs import AudioInput
from stok.eval.metrics import CodeUsage, MelDistance, si_snr, stoi
from stok.eval.plots import plot_code_usage, plot_mel_distance
from stok.models.speechtokenizer.dump_model import STDumpModel
from stok.models.speechtokenizer.model_args import STModelSettings

log = logging.getLogger("stok.eval")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    STModelSettings.add_arguments(p, "SpeechTokenizer model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data_dir", help="Kaldi data dir (wav.scp, optional segments and utt2dur)")
    src.add_argument("--wav_scp", help="a bare wav.scp")
    p.add_argument("--segments", help="segments file with --wav_scp")
    p.add_argument("--output_dir", required=True, help="where report.json and the PNG plots go")
    p.add_argument("--n_q", type=int, default=0, help="RVQ layers to encode and decode with (0: all)")
    p.add_argument("--sweep", action="store_true", help="also decode with layers 1..k for every k < n_q")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch_seconds", type=float, default=60.0, help="max padded audio seconds per batch")
    p.add_argument("--num_workers", type=int, default=2, help="audio-reading worker processes (0: in-process)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N utterances (by key)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    return p


def _mean(values: List[float]) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@entry_point
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    model_settings = STModelSettings.from_args(args)
    for name in ("data_dir", "wav_scp", "segments"):
        path = getattr(args, name)
        path = os.path.join(path, "wav.scp") if name == "data_dir" and path else path
        if path and not os.path.isfile(path):
            raise UserError(f"--{name} {getattr(args, name)}: {path} not found")
    if args.limit < 0 or args.num_workers < 0 or not args.batch_seconds > 0:
        raise UserError("--limit and --num_workers must be >= 0 and --batch_seconds > 0")
    check_output_dir(args.output_dir)
    device = resolve_device(args.device, 0)
    model = model_settings.load(device)
    cfg = model.cfg
    if not 0 <= args.n_q <= cfg.n_q:
        raise UserError(f"--n_q {args.n_q} is out of range: the model has {cfg.n_q} codebooks (0: all of them)")
    n_q = args.n_q or cfg.n_q
    dump_model = STDumpModel(model, n_q)
    failures: Dict[str, str] = {}
    inp = AudioInput(args.data_dir, args.wav_scp, args.segments, args.limit)
    costs = inp.costs(dump_model, list(range(len(inp.items))), failures, True)
    todo = sorted(costs)
    batches = make_batches([costs[i] for i in todo], int(args.batch_seconds * cfg.sample_rate), 0, bucketing=True)
    loader = inp.loader(dump_model, todo, batches, args.num_workers, pin_memory=False)
    mel = MelDistance(cfg.sample_rate, device)
    usage = CodeUsage(n_q, cfg.codebook_size)
    ks = list(range(1, n_q)) if args.sweep else []
    per_utt: List[dict] = []
    start = time.time()
    with torch.inference_mode(), tqdm(total=len(todo), desc="eval", unit="utt") as bar:
        for batch in loader:
            failures.update(dict(batch.failures))
            if batch.keys:
                wav, lengths = batch.padded.to(device), batch.lengths.to(device)
                codes = model.encode(wav[:, None], lengths, n_q=n_q)
                frames = model.frames(lengths)
                recon = {n_q: model.decode(codes, lengths=frames)}
                for k in ks:
                    recon[k] = model.decode(codes[:k], lengths=frames)
                for b, key in enumerate(batch.keys):
                    n = int(lengths[b])
                    ref = wav[b, :n]
                    usage.add(codes[:, b, : int(frames[b])].T.cpu().numpy())
                    row = {"utt": key, "seconds": n / cfg.sample_rate}
                    for k, rec in recon.items():
                        est = rec[b, 0, :n].float()
                        suffix = "" if k == n_q else f"@{k}"
                        row["mel_distance" + suffix] = mel(ref, est)
                        if k == n_q:
                            r, e = ref.cpu().numpy(), est.cpu().numpy()
                            row["si_snr"] = si_snr(r, e)
                            row["stoi"] = stoi(r, e, cfg.sample_rate)
                    per_utt.append(row)
            bar.update(len(batch.keys) + len(batch.failures))

    per_utt.sort(key=lambda r: r["utt"])
    sweep = {k: _mean([r[f"mel_distance@{k}"] for r in per_utt]) for k in ks}
    if per_utt and ks:
        sweep[n_q] = _mean([r["mel_distance"] for r in per_utt])
    layers = usage.summary()
    report = {
        "model": os.path.abspath(args.model_dir or args.ckpt), "n_q": n_q, "codebook_size": cfg.codebook_size,
        "utterances": len(per_utt), "failed": failures,
        "audio_seconds": float(sum(r["seconds"] for r in per_utt)), "wall_seconds": time.time() - start,
        "mean": {m: _mean([r[m] for r in per_utt]) for m in ("mel_distance", "si_snr", "stoi")},
        "mel_distance_by_layers": {str(k): v for k, v in sweep.items()},
        "codebook_usage": layers, "per_utterance": per_utt,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    plots = [os.path.join(args.output_dir, name) for name in ("code_usage.png", "mel_distance.png")]
    if per_utt:
        plot_code_usage(layers, usage.hist, cfg.codebook_size, plots[0])
        plot_mel_distance(per_utt, sweep, plots[1])
    else:  # no plot of this run: an earlier run's must not pass for it
        for p in plots:
            if os.path.exists(p):
                os.remove(p)
    for key, reason in failures.items():
        log.warning("%s failed: %s", key, reason)
    m = report["mean"]
    stoi_txt = f", STOI {m['stoi']:.3f}" if m["stoi"] is not None else " (STOI: pip install pystoi)"
    log.info("%d utterances, %d failed: mel distance %.3f, SI-SNR %.2f dB%s; codes used per layer %s; report in %s",
             len(per_utt), len(failures), m["mel_distance"] or float("nan"), m["si_snr"] or float("nan"), stoi_txt,
             [u["codes_used"] for u in layers], os.path.join(args.output_dir, "report.json"))
    if per_utt and len(sweep) > 1:  # quality against bitrate: each added RVQ layer should lower the distance
        first, last = sweep[min(sweep)], sweep[max(sweep)]
        curve = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(sweep.items()))
        log.info("mel distance decoding RVQ layers 1..k: %s (all %d layers %.1f%% below layer 1 alone)",
                 curve, max(sweep), 100.0 * (first - last) / first)
    return report


if __name__ == "__main__":
    main()

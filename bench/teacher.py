"""HuBERT teacher extraction on CPU: one utterance at a time vs our exact batched extraction.

A HuBERT-base-size model (12 x 768, GroupNorm front end; random weights: speed and exactness do not depend on
them) on one synthetic mixed-length set, in one run:
  (a) baseline: one utterance at a time (what fairseq's dump_hubert_feature.py does), same extractor;
  (b) ours: utterances sorted by length and batched by a padded-seconds budget (as the dump engine does),
      per-utterance conv front end + one masked transformer pass per batch;
  (c) for reference, torchaudio's plain padded batch call (fast but wrong for base: GroupNorm sees padding).
Prints audio seconds per wall second, the ratio (b)/(a), and the max abs difference of (b) and (c) from (a),
for --layer 9 and --layer avg.

    python bench/teacher.py [--num_utts 40] [--min_s 1] [--max_s 16] [--batch_seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stok.dump.bucketing import make_batches  # noqa: E402
from stok.models.hubert import LoadedHubert  # noqa: E402
from stok.models.hubert.configs import build_model, get_config  # noqa: E402
from stok.models.hubert.extract import HubertExtractor  # noqa: E402


def make_set(n: int, lo: float, hi: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy((0.1 * rng.standard_normal(int(rng.uniform(lo, hi) * 16000))).astype(np.float32))
            for _ in range(n)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_utts", type=int, default=40)
    p.add_argument("--min_s", type=float, default=1.0)
    p.add_argument("--max_s", type=float, default=16.0)
    p.add_argument("--batch_seconds", type=float, default=60.0, help="padded audio seconds per batch")
    p.add_argument("--frontend", default="auto", choices=("auto", "per_item", "batched"))
    p.add_argument("--layers", default="9,avg", help="comma-separated --layer values to measure")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--repeats", type=int, default=2, help="alternate (a) and (b) this many times; best time counts")
    p.add_argument("--quick", action="store_true", help="12 utterances of 1-8 s, layer avg only")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.num_utts, args.max_s, args.layers, args.repeats = 12, 8.0, "avg", 1
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = get_config("base")
    model = build_model(cfg)
    with torch.no_grad():  # norms away from identity, so that a GroupNorm error would show
        for name, prm in model.named_parameters():
            if "norm" in name:
                prm.add_(0.1 * torch.randn_like(prm))
    waves = make_set(args.num_utts, args.min_s, args.max_s)
    audio_s = sum(w.numel() for w in waves) / 16000
    lengths = [w.numel() for w in waves]
    batches = make_batches(lengths, int(args.batch_seconds * 16000), 0)
    padded_s = sum(len(b) * max(lengths[i] for i in b) for b in batches) / 16000
    print(f"set: {len(waves)} utterances, {audio_s:.0f} s of audio ({args.min_s}-{args.max_s} s), "
          f"{len(batches)} batches, padding {100 * (1 - audio_s / padded_s):.1f}%, {torch.get_num_threads()} threads, "
          f"HuBERT base size ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, random weights)")
    results = {}
    for layer in args.layers.split(","):
        ex = HubertExtractor(LoadedHubert(model, cfg, False, "bench", "memory"), layer=layer, frontend=args.frontend)
        ex.extract([waves[0][:16000]])  # warm-up
        bat = [None] * len(waves)

        def batched():
            for b in batches:
                for i, f in zip(b, ex.extract([waves[i] for i in b])):
                    bat[i] = f

        t_one = t_bat = float("inf")
        for _ in range(max(1, args.repeats)):  # alternate, so that load from elsewhere hits both alike
            one, t = timed(lambda: [ex.extract([w])[0] for w in waves])
            t_one = min(t_one, t)
            _, t = timed(batched)
            t_bat = min(t_bat, t)
        diff = max((a - b).abs().max().item() for a, b in zip(one, bat))
        # torchaudio's own padded batch call (the naive way), same batches; only for a numbered layer
        naive_diff, t_naive = None, None
        if layer != "avg":
            def naive():
                out = [None] * len(waves)
                with torch.no_grad():
                    for b in batches:
                        pad = torch.nn.utils.rnn.pad_sequence([waves[i] for i in b], batch_first=True)
                        feats, lens = model.extract_features(pad, torch.tensor([lengths[i] for i in b]),
                                                             num_layers=int(layer))
                        for j, i in enumerate(b):
                            out[i] = feats[-1][j, : int(lens[j])]
                return out

            nv, t_naive = timed(naive)
            naive_diff = max((a - b).abs().max().item() for a, b in zip(one, nv))
        r = {"one_at_a_time_s": t_one, "batched_s": t_bat, "rtf_one": audio_s / t_one, "rtf_batched": audio_s / t_bat,
             "throughput_ratio": t_one / t_bat, "max_abs_diff": diff,
             "max_abs_value": max(f.abs().max().item() for f in one),
             "naive_torchaudio_s": t_naive, "naive_max_abs_diff": naive_diff}
        results[layer] = r
        print(f"--layer {layer}: one at a time {t_one:.1f} s ({r['rtf_one']:.1f}x real time), "
              f"batched {t_bat:.1f} s ({r['rtf_batched']:.1f}x real time): ratio {r['throughput_ratio']:.2f}x; "
              f"max |batched - one at a time| = {diff:.2e} (features up to {r['max_abs_value']:.1f})")
        if t_naive is not None:
            print(f"   torchaudio's padded batch call: {t_naive:.1f} s, max diff from one at a time {naive_diff:.2e} "
                  f"(GroupNorm statistics include the padding)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"audio_seconds": audio_s, "num_utts": len(waves), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

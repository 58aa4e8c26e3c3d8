"""Time one SpeechTokenizer training step (generator + discriminators, forward + backward) on CPU.

    python bench/st_train.py [--quick] [--threads N] [--steps N] [--json out.json]

Two configurations, each in its own process (so peak memory is its own):
- ``tiny``: ``recipes/demo/conf/train.yaml`` (the demo's model, discriminators and batch);
- ``released``: ``recipes/librispeech/conf/train.yaml`` (released model size, 6 x 3 s per process, full
  discriminators); with ``--quick`` 2 x 1 s crops.
Each runs the real :meth:`stok.train.trainer.Trainer.train_step` (all losses, both optimiser updates) on a
synthetic batch, after one warm-up step, and reports the mean seconds per step, the generator forward alone,
parameter counts, and peak resident memory (``ru_maxrss``) before and after the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"tiny": "recipes/demo/conf/train.yaml", "released": "recipes/librispeech/conf/train.yaml"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(name: str, quick: bool, steps: int, threads: int) -> dict:
    sys.path.insert(0, REPO)
    import numpy as np
    import soundfile as sf
    import torch

    torch.set_num_threads(threads)
    import kaldiio

    from stok.train.config import load_config
    from stok.train.data import Batch
    from stok.train.trainer import Paths, Trainer

    overrides = ["data.num_workers=0", "sched.guard_buffers=true"]
    if quick and name == "released":
        overrides += ["data.batch_size=2", "data.segment_seconds=1.0"]
    cfg = load_config(os.path.join(REPO, CONFIGS[name]), overrides)
    if cfg.teacher.source == "online":
        cfg.teacher.source = "features"
    B, seg, sr = cfg.data.batch_size, int(cfg.data.segment_seconds * cfg.data.sample_rate), cfg.data.sample_rate
    dim = cfg.model_config().semantic_dimension
    with tempfile.TemporaryDirectory() as tmp:  # a one-utterance data dir: the Trainer wants one
        wav = os.path.join(tmp, "u.flac")
        sf.write(wav, np.zeros(sr, np.float32), sr)
        os.makedirs(os.path.join(tmp, "data"))
        with open(os.path.join(tmp, "data", "wav.scp"), "w") as f:
            f.write(f"u {wav}\n")
        with kaldiio.WriteHelper(f"ark,scp:{tmp}/f.ark,{tmp}/f.scp") as w:
            w("u", np.zeros((50, dim), np.float32))
        t = Trainer(cfg, Paths(os.path.join(tmp, "exp"), os.path.join(tmp, "data"), teacher_scp=f"{tmp}/f.scp"),
                    show_progress=False)
        g = torch.Generator().manual_seed(0)
        n_frames = -(-seg // cfg.data.hop)
        batch = Batch(0.1 * torch.randn(B, 1, seg, generator=g), torch.full((B,), seg, dtype=torch.long),
                      torch.randn(B, n_frames, dim, generator=g), ["u"] * B)
        n_gen = sum(p.numel() for p in t.gen.parameters())
        n_disc = sum(p.numel() for p in t.disc.parameters())
        rss_built = _rss_mb()
        t.train_step(batch)  # warm-up (also initialises the codebooks)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            vals = t.train_step(batch)
            times.append(time.perf_counter() - t0)
            assert vals is not None
        model = t.gen.model
        with torch.no_grad():
            t0 = time.perf_counter()
            model(batch.wav, lengths=batch.lengths)
            fwd = time.perf_counter() - t0
        t.close()
    return {"config": name, "batch": B, "segment_s": seg / sr, "threads": threads, "steps": steps,
            "step_s_mean": sum(times) / len(times), "step_s_min": min(times), "gen_forward_s": fwd,
            "audio_s_per_step": B * seg / sr, "generator_params_M": n_gen / 1e6, "disc_params_M": n_disc / 1e6,
            "rss_after_build_MB": rss_built, "peak_rss_MB": _rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="released size with 2 x 1 s crops instead of 6 x 3 s")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 5 tiny, 2 released)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--configs", default="tiny,released")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        steps = args.steps or (5 if args._worker == "tiny" else 2)
        print(json.dumps(worker(args._worker, args.quick, steps, args.threads)))
        return
    results = []
    for name in args.configs.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", name, "--threads", str(args.threads)]
        if args.quick:
            cmd.append("--quick")
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr[-4000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'config':10s} {'batch':>9s} {'thr':>3s} {'s/step':>8s} {'G fwd s':>8s} {'audio s/s':>9s} "
          f"{'G M':>6s} {'D M':>6s} {'peak MB':>8s}")
    for r in results:
        print(f"{r['config']:10s} {r['batch']:>3d} x {r['segment_s']:.1f}s {r['threads']:>3d} {r['step_s_mean']:8.3f} "
              f"{r['gen_forward_s']:8.3f} {r['audio_s_per_step'] / r['step_s_mean']:9.3f} "
              f"{r['generator_params_M']:6.2f} {r['disc_params_M']:6.2f} {r['peak_rss_MB']:8.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

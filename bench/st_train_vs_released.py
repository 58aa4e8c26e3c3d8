"""stok's SpeechTokenizer trainer side by side with the released trainer (``speechtokenizer`` 1.0.1), on CPU.

    python bench/st_train_vs_released.py [--steps 60] [--every 20] [--seeds 1234,1235,1236] [--threads 2]
                                         [--png bench_st_train.png] [--json out.json]

Needs the demo's stages 0-1 (``bash run.sh --stop_stage 1``): the demo corpus and its MFCC teacher features.
Each (trainer, seed) runs in its own process (peak memory is its own); the processes run one after another.

The same for both trainers: the model (``model`` of ``recipes/demo/conf/train.yaml``) and its initial weights
(stok's initialisation, loaded into the released class: the two state dicts have the same layout), the
discriminators' architecture (MPD, MSD, MS-STFT at the config's ``disc.width`` / ``mstft_filters``; the
parameter counts are printed), the batches (the same tensors: ``data.batch_size`` crops of
``data.segment_seconds`` from the demo training set with their teacher frames, drawn by stok's sampler from the
seed), the loss weights (``loss``), Adam with ``optim.lr`` and ``optim.betas``, a cosine schedule over the N steps
with neither warm-up nor gradient clipping (the released trainer has neither), and the seed.

The released trainer cannot run as shipped here (``SpeechTokenizerTrainer`` wants an ``accelerate`` launch,
tab-separated lists of audio and ``.npy`` files, and counts epochs, not steps). What is adapted:

- its step is written out below in a minimal loop, in the order of ``SpeechTokenizerTrainer.train``: generator
  forward; discriminator loss on ``(x, x_hat.detach())``, backward, step; generator loss on ``(x, x_hat)`` with the
  package's own functions (``speechtokenizer.trainer.loss``: ``mel_loss``, ``recon_loss``, ``feature_loss``,
  ``adversarial_loss``, ``discriminator_loss``, ``d_axis_distill_loss``), backward, step; then both
  ``CosineAnnealingLR`` schedulers step. One process, so ``accelerator.backward(loss)`` is ``loss.backward()``;
  ``get_optimizer`` with ``wd=0`` is Adam; the models and discriminators are the package's classes;
- below ``disc.width`` 1, the package's MPD and MSD are built with their ``Conv1d``/``Conv2d`` constructors wrapped
  to scale channel counts the way stok's ``disc.width`` does (the package has no width option);
- batches come from stok's crop sampler instead of the package's ``audioDataset`` (same rule: a random crop and
  the teacher frames from ``floor(start / 320)``), so both trainers see identical tensors.

stok's side is its real ``Trainer.train_step`` (with its NaN guards and buffer snapshots) on the same batches.
Both models are evaluated by the same code here, every K steps: the trainer's dev metric (log-mel L1 at the
first mel resolution, mean over the dev utterances, each cut to ``data.dev_seconds``) and the D-axis distillation
loss against the dev teacher features. Seconds per step: wall time of one whole step (generator and
discriminators, forward and backward, optimiser steps), mean over the steps after the first (the first runs
the codebooks' k-means). Peak memory: the process's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "recipes", "demo")
TRAINERS = ("stok", "released")


def _paths(teacher: str) -> Dict[str, str]:
    return {"data_dir": os.path.join(DEMO, "data", "train-clean-demo"),
            "teacher_scp": os.path.join(DEMO, "dump", teacher, "train-clean-demo", "feats.scp"),
            "dev_dir": os.path.join(DEMO, "data", "dev-clean-demo"),
            "dev_teacher_scp": os.path.join(DEMO, "dump", teacher, "dev-clean-demo", "feats.scp")}


def _config(config: str, steps: int, seed: int):
    from stok.train.config import load_config

    return load_config(config, [f"sched.seed={seed}", f"sched.max_steps={steps}", "data.num_workers=0",
                                "optim.grad_clip=null", "optim.warmup_steps=0", "optim.scheduler=cosine",
                                "optim.min_lr_ratio=0", "optim.optimizer=adam", "optim.weight_decay=0",
                                "disc.start_step=0"])


def _batches(cfg, paths: Dict[str, str], n: int):
    """The first ``n`` training batches stok's sampler draws for ``cfg.sched.seed`` (identical in every process)."""
    from stok.train.data import CropDataset, ShardedBatchSampler, make_train_loader, read_utterances

    sr, hop, seed = cfg.data.sample_rate, cfg.data.hop, cfg.sched.seed
    utts = read_utterances(paths["data_dir"], paths["teacher_scp"], cfg.data.min_seconds, "train")
    ds = CropDataset(utts, paths["teacher_scp"], int(round(cfg.data.segment_seconds * sr)), sr, hop, seed, None)
    sampler = ShardedBatchSampler(len(utts), cfg.data.batch_size, 1, 0, seed)
    out = []
    for batch in make_train_loader(ds, sampler, 0, hop, seed=seed):
        out.append(batch)
        if len(out) == n:
            return out
    return out


def _dev_items(cfg, paths: Dict[str, str]):
    from stok.train.data import DevDataset, read_utterances

    utts = read_utterances(paths["dev_dir"], paths["dev_teacher_scp"], 0.0, "dev")
    ds = DevDataset(utts, paths["dev_teacher_scp"], int(round(cfg.data.dev_seconds * cfg.data.sample_rate)),
                    cfg.data.sample_rate, cfg.data.hop, None)
    items = []
    for i in range(len(ds)):
        it = ds[i]
        items.append((it["wav"][: int(it["length"])], it["teacher"]))
    return items


def _evaluate(run_model, dev_items, mel) -> Dict[str, float]:
    """Dev mel (resolution 0 log-mel L1, mean per utterance) and D-axis distillation of ``run_model(x) ->
    (recon [1, 1, T'], semantic [1, F, D])`` over the dev utterances, one at a time (no padding)."""
    import torch

    from stok.train.losses import d_axis_distill

    mels, dists = [], []
    with torch.no_grad():
        for wav, teacher in dev_items:
            x = torch.as_tensor(wav, dtype=torch.float32).reshape(1, 1, -1)
            recon, semantic = run_model(x)
            T = x.shape[-1]
            recon = recon[..., :T]
            if recon.shape[-1] < T:
                recon = torch.nn.functional.pad(recon, (0, T - recon.shape[-1]))
            l1, _ = mel.distance(0, x[:, 0], recon[:, 0])
            mels.append(float(l1))
            dists.append(float(d_axis_distill(semantic, torch.as_tensor(teacher, dtype=torch.float32)[None])))
    return {"dev_mel": sum(mels) / len(mels), "dev_distill": sum(dists) / len(dists)}


@contextlib.contextmanager
def _scaled_convs(module, width: float):
    """Build the package's MPD/MSD at ``width``: its Conv1d (MSD, channels in 16s) and Conv2d (MPD, in 4s)
    constructors scale every channel count but the single input/output channel, as stok's ``disc.width``."""
    from torch import nn

    from stok.train.discriminators import _scaled

    def wrap(cls, multiple):
        def make(cin, cout, *args, **kwargs):
            sc = (lambda c: c if c == 1 else _scaled(c, width, multiple))
            return cls(sc(cin), sc(cout), *args, **kwargs)
        return make

    saved = module.Conv1d, module.Conv2d
    if width != 1.0:
        module.Conv1d, module.Conv2d = wrap(nn.Conv1d, 16), wrap(nn.Conv2d, 4)
    try:
        yield
    finally:
        module.Conv1d, module.Conv2d = saved


def _initial_generator(cfg):
    import torch

    from stok.models.speechtokenizer import SpeechTokenizer

    torch.manual_seed(cfg.sched.seed)
    return SpeechTokenizer(cfg.model_config()).state_dict()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_stok(cfg, paths, batches, dev_items, steps: int, every: int) -> dict:
    import torch

    from stok.train.losses import MelLoss
    from stok.train.trainer import Paths, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, Paths(os.path.join(tmp, "exp"), paths["data_dir"], teacher_scp=paths["teacher_scp"]),
                    show_progress=False)
        t.gen.model.load_state_dict(_initial_generator(cfg))
        params = {"generator": sum(p.numel() for p in t.gen.parameters()),
                  "discriminators": sum(p.numel() for p in t.disc.parameters())}
        mel = MelLoss(cfg.loss, cfg.data.sample_rate)
        model = t.gen.model

        def run_model(x):
            model.eval()
            out = model(x)
            model.train()
            return out.recon, out.semantic

        torch.manual_seed(cfg.sched.seed)
        curve = [{"step": 0, **_evaluate(run_model, dev_items, mel)}]
        times, last = [], {}
        for i, batch in enumerate(batches[:steps]):
            t0 = time.perf_counter()
            vals = t.train_step(batch)
            times.append(time.perf_counter() - t0)
            t.step += 1
            last = vals or last
            if (i + 1) % every == 0 or i + 1 == steps:
                curve.append({"step": i + 1, **_evaluate(run_model, dev_items, mel)})
        t.close()
    return {"times": times, "curve": curve, "params": params, "last_train_mel": last.get("loss/mel_error")}


def run_released(cfg, paths, batches, dev_items, steps: int, every: int) -> dict:
    import itertools
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from speechtokenizer import discriminators as D
    from speechtokenizer.model import SpeechTokenizer as ReleasedST
    from speechtokenizer.trainer import loss as RL

    from stok.train.losses import MelLoss

    lc, dc, sr = cfg.loss, cfg.disc, cfg.data.sample_rate
    torch.manual_seed(cfg.sched.seed)
    gen = ReleasedST(dict(cfg.model))
    gen.load_state_dict(_initial_generator(cfg))
    torch.manual_seed(cfg.sched.seed)
    discs = {}
    with _scaled_convs(D, dc.width):
        if dc.mpd:
            if list(dc.mpd_periods) != [2, 3, 5, 7, 11]:
                raise SystemExit("the released MPD has periods 2, 3, 5, 7, 11 only")
            discs["mpd"] = D.MultiPeriodDiscriminator()
        if dc.msd:
            if dc.msd_scales != 3:
                raise SystemExit("the released MSD has 3 scales only")
            discs["msd"] = D.MultiScaleDiscriminator()
    if dc.mstft:
        hops = list(dc.mstft_hops) if dc.mstft_hops else [n // 4 for n in dc.mstft_n_ffts]
        discs["mstft"] = D.MultiScaleSTFTDiscriminator(filters=dc.mstft_filters, n_ffts=list(dc.mstft_n_ffts),
                                                       hop_lengths=hops, win_lengths=list(dc.mstft_n_ffts))
    params = {"generator": sum(p.numel() for p in gen.parameters()),
              "discriminators": sum(p.numel() for d in discs.values() for p in d.parameters())}
    o = cfg.optim
    optim_g = torch.optim.Adam(gen.parameters(), lr=o.lr, betas=tuple(o.betas), eps=1e-8)
    optim_d = torch.optim.Adam(itertools.chain(*[d.parameters() for d in discs.values()]), lr=o.lr,
                               betas=tuple(o.betas), eps=1e-8)
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(optim_g, T_max=steps)
    sched_d = torch.optim.lr_scheduler.CosineAnnealingLR(optim_d, T_max=steps)
    mel_kwargs = [{"n_fft": lc.mel_n_fft >> i, "num_mels": lc.n_mels, "sample_rate": sr, "hop_size": lc.mel_hop >> i,
                   "win_size": lc.mel_win >> i, "fmin": lc.fmin, "fmax": lc.fmax} for i in range(len(lc.mel_lambdas))]
    mel = MelLoss(lc, sr)

    def run_model(x):
        # the package's forward runs the codebooks' k-means on its input when they are not initialised yet
        # (even in eval mode): before the first step, evaluate a copy, so the dev audio never initialises them
        model = gen
        if not bool(gen.quantizer.vq.layers[0]._codebook.inited):
            model = ReleasedST(dict(cfg.model))  # (its old-style weight norm cannot be deep-copied)
            model.load_state_dict(gen.state_dict())
        model.eval()
        recon, _, feature = model(x)
        model.train()
        return recon, feature

    gen.train()
    for d in discs.values():
        d.train()
    torch.manual_seed(cfg.sched.seed)
    curve = [{"step": 0, **_evaluate(run_model, dev_items, mel)}]
    times, last_mel = [], None
    for i, batch in enumerate(batches[:steps]):
        t0 = time.perf_counter()
        x, semantic_feature = batch.wav, batch.teacher
        x_hat, loss_q, feature = gen(x)
        optim_d.zero_grad()
        outs = [d(x, x_hat.detach()) for d in discs.values()]
        loss_disc_all = sum(RL.discriminator_loss(*o_[:2]) for o_ in outs)
        loss_disc_all.backward()
        optim_d.step()
        optim_g.zero_grad()
        outs = [d(x, x_hat) for d in discs.values()]
        loss_recon = RL.recon_loss(x, x_hat)
        loss_mel = sum(lam * RL.mel_loss(x, x_hat, **kw) for lam, kw in zip(lc.mel_lambdas, mel_kwargs))
        loss_feature = sum(RL.feature_loss(*o_[2:]) for o_ in outs)  # the package's x2 is feat_lambda
        loss_adversarial = sum(RL.adversarial_loss(o_[1]) for o_ in outs)
        loss_distill = RL.d_axis_distill_loss(feature, semantic_feature)
        loss_g = (loss_feature * (lc.feat_lambda / 2.0) + lc.adv_lambda * loss_adversarial + loss_mel
                  + loss_q * lc.commit_lambda + loss_recon * lc.recon_lambda + lc.distill_lambda * loss_distill)
        loss_g.backward()
        optim_g.step()
        sched_d.step()
        sched_g.step()
        times.append(time.perf_counter() - t0)
        last_mel = float(RL.mel_loss(x, x_hat.detach(), **mel_kwargs[0]))
        if (i + 1) % every == 0 or i + 1 == steps:
            curve.append({"step": i + 1, **_evaluate(run_model, dev_items, mel)})
    return {"times": times, "curve": curve, "params": params, "last_train_mel": last_mel}


def worker(trainer: str, seed: int, steps: int, every: int, threads: int, config: str, teacher: str) -> dict:
    sys.path.insert(0, REPO)
    import torch

    torch.set_num_threads(threads)
    cfg = _config(config, steps, seed)
    paths = _paths(teacher)
    for p in paths.values():
        if not os.path.exists(p):
            raise SystemExit(f"{p} not found: run the demo's stages 0-1 first (bash run.sh --stop_stage 1)")
    batches = _batches(cfg, paths, steps)
    dev_items = _dev_items(cfg, paths)
    rss_data = _rss_mb()
    run = run_stok if trainer == "stok" else run_released
    res = run(cfg, paths, batches, dev_items, steps, every)
    timed = res["times"][1:] or res["times"]
    res.update({"trainer": trainer, "seed": seed, "steps": steps, "threads": threads,
                "s_per_step": sum(timed) / len(timed), "s_first_step": res["times"][0],
                "train_s": sum(res["times"]), "rss_data_MB": rss_data, "peak_rss_MB": _rss_mb(),
                "batch": f"{cfg.data.batch_size} x {cfg.data.segment_seconds:g} s"})
    return res


def _plot(results: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = {"stok": "tab:blue", "released": "tab:red"}
    for r in results:
        steps = [c["step"] for c in r["curve"]]
        mels = [c["dev_mel"] for c in r["curve"]]
        label = f"{r['trainer']} seed {r['seed']}"
        axes[0].plot(steps, mels, marker="o", color=colours[r["trainer"]], alpha=0.7, label=label)
        axes[1].plot(steps, [c["dev_distill"] for c in r["curve"]], marker="o", color=colours[r["trainer"]],
                     alpha=0.7, label=label)
        secs = [s * r["s_per_step"] for s in steps]
        axes[2].plot(secs, mels, marker="o", color=colours[r["trainer"]], alpha=0.7, label=label)
    axes[0].set(xlabel="step", ylabel="dev mel distance (log-mel L1)", title="dev mel distance")
    axes[1].set(xlabel="step", ylabel="dev D-axis distillation loss", title="dev distillation")
    axes[2].set(xlabel="training seconds (mean s/step x steps)", ylabel="dev mel distance",
                title="dev mel distance against time")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _spread(vals: List[float]) -> str:
    m = sum(vals) / len(vals)
    return f"{m:.4f} [{min(vals):.4f}, {max(vals):.4f}]"


def report(results: List[dict]) -> str:
    lines = []
    r0 = results[0]
    lines.append(f"batch {r0['batch']}, {r0['steps']} steps, {r0['threads']} threads; parameters: "
                 + "; ".join(f"{r['trainer']} G {r['params']['generator'] / 1e6:.3f} M, "
                             f"D {r['params']['discriminators'] / 1e6:.4f} M"
                             for r in results[:2] if r["seed"] == r0["seed"]))
    steps = [c["step"] for c in r0["curve"]]
    head = f"{'trainer':9s} {'seed':>5s} {'s/step':>7s} {'first s':>7s} {'peak MB':>8s} " + " ".join(
        f"{'mel@' + str(s):>9s}" for s in steps) + f" {'distill@' + str(steps[-1]):>11s}"
    lines.append(head)
    for r in results:
        lines.append(f"{r['trainer']:9s} {r['seed']:>5d} {r['s_per_step']:7.3f} {r['s_first_step']:7.2f} "
                     f"{r['peak_rss_MB']:8.0f} " + " ".join(f"{c['dev_mel']:9.4f}" for c in r["curve"])
                     + f" {r['curve'][-1]['dev_distill']:11.4f}")
    by = {k: [r for r in results if r["trainer"] == k] for k in TRAINERS}
    if all(by.values()):
        sps = {k: sum(r["s_per_step"] for r in v) / len(v) for k, v in by.items()}
        lines.append(f"s/step: stok {sps['stok']:.3f}, released {sps['released']:.3f}: "
                     f"stok is {sps['released'] / sps['stok']:.2f}x faster per step")
        for k, v in by.items():
            lines.append(f"{k:9s} dev mel after {r0['steps']} steps: mean [min, max] over seeds "
                         f"{_spread([r['curve'][-1]['dev_mel'] for r in v])}; dev distill "
                         f"{_spread([r['curve'][-1]['dev_distill'] for r in v])}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="training steps of each run")
    p.add_argument("--every", type=int, default=20, help="evaluate on the dev set every this many steps")
    p.add_argument("--seeds", default="1234,1235,1236", help="comma-separated seeds (one run of each trainer each)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--config", default=os.path.join(DEMO, "conf", "train.yaml"))
    p.add_argument("--teacher", default="mfcc", help="stage 1 teacher dir under recipes/demo/dump")
    p.add_argument("--png", default="bench_st_train_vs_released.png", help="curves of both trainers")
    p.add_argument("--json", help="write every run's numbers here")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        res = worker(args._worker, args._seed, args.steps, args.every, args.threads, args.config, args.teacher)
        print(json.dumps(res))
        return
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in TRAINERS:
            cmd = [sys.executable, os.path.abspath(__file__), "--_worker", name, "--_seed", str(seed),
                   "--steps", str(args.steps), "--every", str(args.every), "--threads", str(args.threads),
                   "--config", args.config, "--teacher", args.teacher]
            t0 = time.time()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                sys.exit(f"{name} (seed {seed}) failed:\n{out.stderr[-4000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{name} seed {seed}: {results[-1]['s_per_step']:.3f} s/step, dev mel "
                  f"{results[-1]['curve'][0]['dev_mel']:.4f} -> {results[-1]['curve'][-1]['dev_mel']:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    print(report(results))
    if args.png:
        _plot(results, args.png)
        print(f"curves: {args.png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

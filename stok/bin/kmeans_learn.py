"""``stok-kmeans learn``: fit k-means on a sample of teacher frames (stage 2); ``stok.bin.kmeans`` dispatches here.

The sample comes from ``stok.models.kmeans.sample_source``: in memory, or on disk and streamed, whichever keeps
the whole fit within ``--memory_gb``; the fit from ``stok.models.kmeans.fit``; the model file is
``stok.models.kmeans.model``'s ``.npz``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from stok.bin.kmeans_dump import add_feats_args
from stok.core.distributed import resolve_device
from stok.core.errors import UserError
from stok.core.failed import write_failed
from stok.core.fileio import check_output_dir

log = logging.getLogger("stok.kmeans")

MFCC_CLUSTERS, HUBERT_CLUSTERS = 100, 500


def learn_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stok-kmeans learn", description="Fit k-means on a sample of teacher frames.")
    add_feats_args(p)
    p.add_argument("--output", required=True, help="model file to write (.npz: centroids + metadata, no pickle)")
    p.add_argument("--n_clusters", type=int, default=0,
                   help=f"clusters; 0 (default): {MFCC_CLUSTERS} for MFCC features, {HUBERT_CLUSTERS} otherwise. "
                        "MFCC is recognised by the teacher named in the feature dump's summary "
                        "(<scp stem>.summary.json next to the scp) or, without one, by dimension 39")
    p.add_argument("--percent", type=float, default=1.0,
                   help="fraction of the frames to learn on, in (0, 1] (0.1 = 10%%; fairseq's 'percent')")
    p.add_argument("--max_frames", type=int, default=0,
                   help="at most this many frames (0: no limit); with --percent the smaller wins")
    p.add_argument("--sample_by", choices=("frame", "utterance"), default="frame",
                   help="frame: uniform frames over all utterances (reads every utterance with a sampled frame); "
                        "utterance: whole random utterances until the frame target (fairseq's way, reads only those)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the k-means++ draws")
    m = p.add_argument_group("memory and the on-disk sample")
    m.add_argument("--memory_gb", type=float, default=0,
                   help="resident memory (GiB) the whole process may reach; 0 (default): 8, or less where the "
                        "machine has less (what is held at start + 80%% of MemAvailable). The sample stays in "
                        "memory when the fit fits (4 x dim + 12 bytes a frame + a fixed working set), else it is "
                        "written to disk and streamed (12 bytes a frame + the working set)")
    m.add_argument("--sample_in", choices=("auto", "memory", "disk"), default="auto",
                   help="where the sample lives: auto (default: by --memory_gb), memory, or disk")
    m.add_argument("--sample_dir", default="",
                   help="directory of the on-disk sample (default: <output without .npz>.sample): frames.npy "
                        "(float16: 2 x dim bytes a frame) and sample.json (what made it). A rerun with the same "
                        "sampling settings on unchanged features reuses a finished sample; other settings "
                        "sample again and replace it")
    m.add_argument("--sample_dtype", choices=("float16", "float32"), default="float16",
                   help="precision of the on-disk sample: float16 (default) halves its disk and reads; "
                        "float32 gives exactly the centroids of the in-memory fit")
    m.add_argument("--keep_sample", action="store_true",
                   help="keep the on-disk sample once the model is written, for later runs (default: it is removed "
                        "then; a finished sample survives a fit that fails or is killed, for the rerun). Implies "
                        "an on-disk sample")
    g = p.add_argument_group("k-means")
    g.add_argument("--seed_frames", type=int, default=0,
                   help="frames the greedy k-means++ seeding runs on (0: max(30000, 40 x n_clusters))")
    g.add_argument("--n_local_trials", type=int, default=0, help="k-means++ candidates per step (0: 2 + ln k)")
    g.add_argument("--warmup_frames", type=int, default=-1,
                   help="frames of the warm-up Lloyd passes (-1: max(20000, 100 x n_clusters); 0: no warm-up)")
    g.add_argument("--warmup_iters", type=int, default=30, help="max warm-up passes")
    g.add_argument("--max_iter", type=int, default=50, help="max passes over all sampled frames")
    g.add_argument("--tol", type=float, default=1e-4,
                   help="stop a phase when a pass lowers the inertia by less than tol x inertia")
    g.add_argument("--no_prune", action="store_true",
                   help="recompute every distance in every pass (plain Lloyd; the bounds-based skipping gives "
                        "the same result faster)")
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument("--seed_threads", type=int, default=1,
                   help="CPU threads during the seeding (0: same as --threads); its many small steps run "
                        "faster on one thread on busy machines")
    p.add_argument("--strict", action="store_true",
                   help="exit non-zero if any feature entry failed (default: list them in <output>.failed.list)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output learned with other settings (a rerun with the same settings "
                        "replaces it anyway)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or STOK_DEBUG=1)")
    return p


def feature_teacher(scp: str) -> dict:
    """The teacher description the stage-1 dump engine wrote next to the scp (``<stem>.summary.json``)."""
    stem = os.path.splitext(os.path.basename(scp))[0]
    path = os.path.join(os.path.dirname(os.path.abspath(scp)), f"{stem}.summary.json")
    try:
        with open(path) as f:
            model = json.load(f).get("model")
        return model if isinstance(model, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_mfcc(teacher: dict) -> bool:
    names = [str(teacher.get(k, "")) for k in ("model", "teacher", "name", "type")]
    return any("mfcc" in n.lower() for n in names)


#: learn options that decide the model; a rerun into an existing --output must give the same (or --overwrite)
LEARN_OPTIONS = ("n_clusters", "percent", "max_frames", "sample_by", "seed", "seed_frames", "n_local_trials",
                 "warmup_frames", "warmup_iters", "max_iter", "tol", "no_prune")


def _check_learn_args(args) -> None:
    for name in ("max_frames", "seed_frames", "n_local_trials", "threads", "seed_threads", "n_clusters",
                 "warmup_iters"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 < args.percent <= 1:
        raise UserError(f"--percent is the fraction of the frames to learn on, in (0, 1] (0.1 = 10%), "
                        f"got {args.percent}")
    if args.warmup_frames < -1:
        raise UserError(f"--warmup_frames must be -1 (auto), 0 (no warm-up) or more, got {args.warmup_frames}")
    if args.memory_gb < 0:
        raise UserError(f"--memory_gb must be >= 0 (0: automatic), got {args.memory_gb}")
    if args.keep_sample and args.sample_in == "memory":
        raise UserError("--keep_sample keeps the on-disk sample, but --sample_in memory keeps none: "
                        "drop one of them")
    if args.max_iter < 1 or args.tol < 0:
        raise UserError(f"--max_iter must be >= 1 and --tol >= 0, got {args.max_iter} and {args.tol}")
    if os.path.isdir(args.output):
        raise UserError(f"--output {args.output} is a directory; give the model file, e.g. exp/kmeans/km100.npz")
    check_output_dir(os.path.dirname(os.path.abspath(args.output)), f"--output {args.output}: its directory")


def _learn_options(args, scp: str) -> dict:
    return {"feats_scp": os.path.abspath(scp), **{k: getattr(args, k) for k in LEARN_OPTIONS}}


def _check_existing_model(args, options: dict) -> None:
    """Refuse (nothing written) to replace a model learned with other options, or a file that is no model."""
    from stok.models.kmeans.model import KMeansModel, KMeansModelError

    if args.overwrite or not os.path.exists(args.output):
        return
    fix = "choose another --output, or add --overwrite to replace it"
    try:
        old = KMeansModel.load(args.output)
    except KMeansModelError as e:
        raise UserError(f"--output {args.output} exists and is not a k-means model ({str(e).split('. ')[0]}); "
                        f"{fix}") from None
    before = old.meta.get("options")
    if not isinstance(before, dict):  # written by an earlier stok: what its metadata says
        sample = old.meta.get("sample") or {}
        before = {"feats_scp": old.meta.get("feats_scp"), **{k: sample[k] for k in ("percent", "max_frames",
                                                                                   "sample_by", "seed") if k in sample}}
    diff = [f"{k} {before[k]!r} -> {options[k]!r}" for k in options
            if k != "n_clusters" and k in before and before[k] != options[k]]
    if options["n_clusters"] and options["n_clusters"] != old.n_clusters:
        diff.append(f"n_clusters {old.n_clusters} -> {options['n_clusters']}")
    elif not options["n_clusters"] and before.get("n_clusters"):
        diff.append(f"n_clusters {before['n_clusters']} -> 0 (auto)")
    if diff:
        raise UserError(f"--output {args.output} holds a k-means model learned with other settings ({'; '.join(diff)})"
                        f"; {fix}")
    log.info("%s exists, learned with the same settings: learning it again (same seed, same features)", args.output)


def _sample_dir(args) -> str:
    return args.sample_dir or os.path.splitext(args.output)[0] + ".sample"


def learn(argv) -> dict:
    from stok.models.kmeans.fit import default_seed_frames, default_warmup_frames, fit_kmeans
    from stok.models.kmeans.memory import GiB, BudgetError, default_budget, gb, peak_rss, rss
    from stok.models.kmeans.model import KMeansModel
    from stok.models.kmeans.sample import FeatsError, read_feats_scp, resolve_feats_scp
    from stok.models.kmeans.sample_file import remove_sample
    from stok.models.kmeans.sample_source import SampleRequest, get_sample

    args = learn_parser().parse_args(argv)
    _check_learn_args(args)
    device = str(resolve_device(args.device))
    try:
        scp = resolve_feats_scp(args.feats_scp, args.feats_dir)
        entries = read_feats_scp(scp)  # a missing, empty or malformed list fails here, before any work
    except FeatsError as e:
        raise UserError(str(e)) from None
    options = _learn_options(args, scp)
    _check_existing_model(args, options)
    sample_dir = _sample_dir(args)
    if args.sample_in != "memory":
        check_output_dir(sample_dir, f"--sample_dir {sample_dir}")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = feature_teacher(scp)

    def n_clusters(dim: int) -> int:
        if args.n_clusters:
            return args.n_clusters
        mfcc = _is_mfcc(teacher) if teacher else dim == 39
        k = MFCC_CLUSTERS if mfcc else HUBERT_CLUSTERS
        log.info("--n_clusters %d (%s)", k, f"teacher {teacher.get('model')}" if teacher else f"dimension {dim}")
        return k

    def subsample(k: int) -> int:
        w = default_warmup_frames(k) if args.warmup_frames < 0 else args.warmup_frames
        return max(args.seed_frames or default_seed_frames(k), w if args.warmup_iters else 0)

    base = rss()
    budget = int(args.memory_gb * GiB) if args.memory_gb else default_budget(base)
    where = "disk" if args.keep_sample else args.sample_in
    try:
        t0 = time.time()
        got = get_sample(SampleRequest(scp, entries, args.percent, args.max_frames, args.sample_by, args.seed,
                                       where, sample_dir, args.sample_dtype, budget, subsample, n_clusters,
                                       torch.device(device)))
    except (FeatsError, BudgetError) as e:
        raise UserError(str(e)) from None
    t_sample = time.time() - t0
    sample, k = got.sample, got.k
    log.info("%s %d frames of %d (dim %d) from %d of %d utterances in %.1f s",
             "reused" if got.reused else "sampled", sample.n, sample.total_frames, sample.dim,
             sample.sampled_utterances, sample.total_utterances, t_sample)
    failed_path = os.path.splitext(args.output)[0] + ".failed.list"
    if sample.failures:
        write_failed(failed_path, sample.failures)
        log.warning("%d feature entries failed: see %s", len(sample.failures), failed_path)
        if args.strict:
            raise UserError(f"{len(sample.failures)} feature entries failed (--strict); see {failed_path}")
    try:
        res = fit_kmeans(sample.frames, k, seed=args.seed, seed_frames=args.seed_frames or None,
                         n_local_trials=args.n_local_trials or None,
                         warmup_frames=None if args.warmup_frames < 0 else args.warmup_frames,
                         warmup_iters=args.warmup_iters, max_iter=args.max_iter, tol=args.tol, device=device,
                         prune=not args.no_prune, seed_threads=args.seed_threads, block_rows=got.plan.block_rows)
    except ValueError as e:
        raise UserError(str(e)) from None
    import stok

    memory = {"budget_gib": got.plan.budget / GiB, "peak_rss_gib": peak_rss() / GiB,
              "estimated_peak_gib": (got.plan.in_memory if got.storage == "memory" else got.plan.on_disk) / GiB}
    meta = {"feats_scp": os.path.abspath(scp), "teacher": teacher or None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "stok_version": stok.__version__, "options": options,
            "sample": {"percent": args.percent, "max_frames": args.max_frames, "sample_by": args.sample_by,
                       "seed": args.seed, "seconds": t_sample, "storage": got.storage, "reused": got.reused,
                       **sample.info()},
            "fit": {**res.settings, "inertia": res.inertia, "n_iter_warmup": res.n_iter_warmup, "n_iter": res.n_iter,
                    "converged": res.converged, "seconds": res.seconds, "history": res.history, "memory": memory}}
    model = KMeansModel(res.centroids, meta)
    model.save(args.output)
    if not sample.failures and os.path.exists(failed_path):
        os.remove(failed_path)  # an earlier run's list: this model had no failures
    if got.directory and not args.keep_sample:
        remove_sample(got.directory)
        log.info("removed the on-disk sample %s (--keep_sample keeps it for later runs)", got.directory)
    summary = {"output": os.path.abspath(args.output), "n_clusters": k, "dim": sample.dim,
               "frames": sample.n, "inertia": res.inertia, "n_iter_warmup": res.n_iter_warmup,
               "n_iter": res.n_iter, "converged": res.converged, "clusters_used": int((res.counts > 0).sum()),
               "seconds": {"sample": t_sample, **res.seconds}, "failed": len(sample.failures),
               "sample_storage": got.storage, "sample_reused": got.reused, "memory": memory,
               "fingerprint": model.fingerprint()}
    print(f"k-means: {k} clusters on {sample.n} frames (dim {sample.dim}): mean inertia {res.inertia:.4f}, "
          f"{res.n_iter_warmup} warm-up + {res.n_iter} passes{'' if res.converged else ' (max_iter reached)'}, "
          f"{res.seconds['total']:.1f} s fit + {t_sample:.1f} s sampling (sample {got.storage}"
          f"{', reused' if got.reused else ''}; peak memory {gb(peak_rss())}) -> {args.output}")
    return summary

"""``stok-train`` / ``python -m stok.bin.train``: train SpeechTokenizer (stage 3), then export it.

    python -m stok.bin.train --config conf/train.yaml --data_dir data/train --teacher_scp dump/mfcc/train/feats.scp \\
        --dev_dir data/dev --dev_teacher_scp dump/mfcc/dev/feats.scp --exp_dir exp/st [--resume] [--max_steps N]
    torchrun --nproc_per_node 8 -m stok.bin.train ...            # one process per GPU (NCCL), or CPU processes (gloo)
    torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT ... -m stok.bin.train ...

The teacher is the stage 1 feature scp (``teacher.source: features``), the stage 2 k-means label scp
(``teacher.source: labels`` with ``loss.distill_type: kmeans``), or computed in the step (``teacher.source: online``,
no scp). Without ``--dev_dir``, ``data.dev_holdout`` utterances of the training set are held out.
Outputs in ``--exp_dir``: ``checkpoints/`` (full state, last N + best by dev mel), ``tensorboard/``,
``train_log.jsonl`` (every step's losses), ``dev_log.jsonl``, ``bad_audio.list``, ``train_config.yaml``, and at the
end ``export/`` (``config.json`` + ``SpeechTokenizer.pt``, the released layout).
``--resume`` continues from the newest checkpoint (same losses, step for step, as an uninterrupted run); it refuses a
config that differs from the checkpoint's (naming each changed key; the run's length and bookkeeping may change), and
a run into an ``--exp_dir`` that already holds one is refused without ``--resume``. Every check (options, config,
data, teacher, the experiment dir) runs before anything is written.

Clusters: SIGTERM or SIGUSR1 (to any rank) stops every rank after the same step; a full checkpoint is saved,
``<exp_dir>/stopped.json`` written, and the process exits with status 75 (``EX_TEMPFAIL``; under ``torchrun``,
which reports 1 for any failed worker, look for ``stopped.json``): requeue the job with ``--resume`` and it
continues step for step. Several nodes: ``torchrun --nnodes N --node_rank R --nproc_per_node P --rdzv_backend c10d
--rdzv_endpoint HOST:PORT -m stok.bin.train ...`` on each node, ``--exp_dir`` on a filesystem every node shares.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stok.bin.entry import entry_point
from stok.core.errors import UserError
from stok.train.config import load_config
from stok.train.signals import REQUEUE_EXIT_STATUS, StopSignals, ignore_stop_signals


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training YAML (see stok.train.config); omitted: the released defaults")
    p.add_argument("--data_dir", required=True, help="training Kaldi data dir (wav.scp, optional segments/utt2dur)")
    p.add_argument("--teacher_scp", help="teacher features (stage 1) or k-means labels (stage 2) of --data_dir")
    p.add_argument("--dev_dir", help="dev Kaldi data dir (default: hold out data.dev_holdout training utterances)")
    p.add_argument("--dev_teacher_scp", help="teacher scp of --dev_dir")
    p.add_argument("--exp_dir", required=True, help="experiment dir (checkpoints, logs, export)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --exp_dir/checkpoints")
    p.add_argument("--max_steps", type=int, default=None, help="total steps (overrides sched.max_steps / epochs)")
    p.add_argument("--stop_after", type=int, default=None,
                   help="stop after this many steps of this run, saving a checkpoint (time-sliced jobs; no export)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: the local GPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: cores / local processes)")
    p.add_argument("--num_workers", type=int, default=None, help="audio-reading workers (overrides data.num_workers)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--no_export", action="store_true", help="do not export at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    return p


def check_args(args) -> None:
    for name, low in (("max_steps", 1), ("stop_after", 1), ("threads", 0), ("num_workers", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}")


@entry_point
def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    check_args(args)
    overrides = list(args.set)
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    cfg = load_config(args.config, overrides)

    from stok.core import distributed
    from stok.train.trainer import Paths, Trainer

    info = distributed.setup(args.device, args.threads)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {info.rank}] %(levelname)s %(message)s", stream=sys.stderr)
    paths = Paths(args.exp_dir, args.data_dir, args.dev_dir, args.teacher_scp, args.dev_teacher_scp)
    with StopSignals() as stop:  # from here on SIGTERM/SIGUSR1 stop the run cleanly after a step
        try:  # every check runs here, before anything is written to --exp_dir
            trainer = Trainer(cfg, paths, info,
                              max_steps=args.max_steps, resume=args.resume, show_progress=not args.quiet)
        except BaseException:
            distributed.cleanup(info)
            raise
        result = _train(args, info, trainer, stop)
    if result["stopped"]:
        ignore_stop_signals()  # saved and cleaned up: a launcher signalling the ranks again changes nothing
        raise SystemExit(REQUEUE_EXIT_STATUS)
    return result


def _train(args, info, trainer, stop) -> dict:
    from stok.core import distributed

    try:
        result = trainer.train(stop_after=args.stop_after, stop=stop)
        if result["stopped"]:
            if info.is_main:
                print(f"stopped by {result['stopped']} after step {trainer.step} of {trainer.total_steps}, checkpoint "
                      f"saved; run the same command with --resume to continue (exit status {REQUEUE_EXIT_STATUS})",
                      flush=True)
            distributed.barrier(info)
            return result
        finished = trainer.step >= trainer.total_steps
        if info.is_main:
            hist = trainer.dev_history
            if hist:
                first, last = hist[0], hist[-1]
                print(f"dev mel error: first {first['dev/mel_error']:.4f} (step {first['step']}), "
                      f"last {last['dev/mel_error']:.4f} (step {last['step']}), best {trainer.best_dev_mel:.4f}",
                      flush=True)
            if trainer.nan_skips:
                print(f"skipped steps (non-finite loss or gradients): {trainer.nan_skips}", flush=True)
            if finished and not args.no_export:
                out = trainer.export(os.path.join(args.exp_dir, "export"))
                print(f"exported {out}/config.json and {out}/SpeechTokenizer.pt", flush=True)
                result["export"] = out
        distributed.barrier(info)
        return result
    finally:
        trainer.close()
        distributed.cleanup(info)


if __name__ == "__main__":
    main()

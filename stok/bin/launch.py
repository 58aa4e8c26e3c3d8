"""``python -m stok.bin.launch``: run one step of a recipe here or as Slurm jobs (run.sh calls it for every step).

    python -m stok.bin.launch job   [launcher options] --stage 0 --name data -- bash local/data.sh
    python -m stok.bin.launch dump  [launcher options] --stage 1 --name feats.train -- stok.bin.dump_features ...
    python -m stok.bin.launch train [launcher options] --stage 3 --name train -- stok.bin.train ...
    python -m stok.bin.launch node  --nproc_per_node 8 -- stok.bin.train ...      # inside a Slurm job, per node

``--launcher local`` (default) runs the step here as run.sh always did: a job as given; a dump with ``--ngpu`` GPU
or ``--nj`` CPU processes (``torchrun --standalone`` for more than one, ``--local_nj`` to fix the number);
training with ``--train_nj`` processes. ``--launcher slurm`` submits it with the resources of the ``--slurm_*``
options (a recipe's ``conf/cmd.sh``) and ``--stage_overrides`` (its ``slurm_stage<N>``), waits, and exits non-zero
with the end of the job's log when a job fails: a dump as ``--nj`` shard jobs (``--shard I/N``; an array job)
and one ``--merge_only`` job; training as one job on ``--slurm_nodes`` nodes, each running ``launch node``
(torchrun with c10d rendezvous from the allocation), requeued and resumed when warned of its time limit. Logs and
the sbatch scripts go to ``--log_dir`` (default ``exp/log/stage<N>`` of the current dir, the recipe's).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from stok.bin.entry import entry_point
from stok.core.errors import UserError, debug_enabled
from stok.launch import local
from stok.launch.runner import JobFailed
from stok.launch.settings import LAUNCHERS, SlurmSettings

KINDS = ("job", "dump", "train", "node")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stok.bin.launch", description=__doc__,
                                usage="%(prog)s {job,dump,train,node} [options] -- COMMAND|MODULE [ARGS ...]",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, help="job: one command; dump: a stok dump tool's module (shards + merge "
                                               "on Slurm); train: stok.bin.train; node: one node of a Slurm job")
    g = p.add_argument_group("step")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local", help="local (this machine) or slurm")
    g.add_argument("--stage", type=int, default=0, help="run.sh stage of the step (job names, logs, overrides)")
    g.add_argument("--name", default="", help="the step's name in job names and log files, e.g. feats.train")
    g.add_argument("--log_dir", default="", help="job logs and sbatch scripts (default: exp/log/stage<N>)")
    g.add_argument("--nj", type=int, default=1, help="dump: CPU processes here, or shard jobs on Slurm")
    g.add_argument("--ngpu", type=int, default=0, help="GPUs per node (0: CPU); dumps run one process per GPU here")
    g.add_argument("--train_nj", type=int, default=1, help="train: processes per node (one per GPU)")
    g.add_argument("--local_nj", type=int, default=0, help="dump: processes here whatever --nj/--ngpu say (0: auto)")
    g.add_argument("--gpu", action="store_true", help="job: the step uses GPUs when --ngpu > 0 (Slurm: gpus=auto)")
    g.add_argument("--stage_overrides", default="",
                   help="this stage's Slurm overrides, KEY=VALUE ... (a recipe's slurm_stage<N>)")
    g.add_argument("--nproc_per_node", type=int, default=1, help="node: ranks on this node")
    g.add_argument("--rdzv_port", type=int, default=0, help="node: rendezvous port (0: from the job id)")
    SlurmSettings.add_arguments(p, "Slurm resources (a recipe's conf/cmd.sh)")
    return p


def parse(argv: List[str]):
    """Options before ``--``, the command after it."""
    if "--" not in argv:
        if any(a in ("-h", "--help") for a in argv):
            get_parser().parse_args(argv)
        raise UserError("give the step's command after --, e.g. launch job --stage 0 -- bash local/data.sh")
    cut = argv.index("--")
    args, cmd = get_parser().parse_args(argv[:cut]), argv[cut + 1:]
    if not cmd:
        raise UserError(f"launch {args.kind}: give the command after --")
    for name in ("nj", "train_nj", "nproc_per_node"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: give a number >= 1")
    if args.ngpu < 0 or args.local_nj < 0:
        raise UserError("--ngpu and --local_nj must be >= 0")
    return args, cmd


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except JobFailed as e:  # several lines: what failed, then the end of its log
        if "--debug" in (argv or sys.argv) or debug_enabled():
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


@entry_point
def _main(argv: Optional[List[str]] = None) -> int:
    args, cmd = parse(list(sys.argv[1:] if argv is None else argv))
    if args.kind == "node":
        from stok.launch.node import run_node

        return run_node(args.nproc_per_node, cmd[0], cmd[1:], args.rdzv_port or None)
    name = args.name or os.path.basename(cmd[0]).replace("stok.bin.", "")
    if args.launcher == "local":
        if args.kind == "dump":
            procs = args.local_nj or (args.ngpu if args.ngpu > 0 else args.nj)
            local.run(local.module_command(cmd[0], cmd[1:], procs))
        if args.kind == "train":
            local.run(local.module_command(cmd[0], cmd[1:], args.train_nj))
        local.run(cmd)

    from stok.launch import slurm
    from stok.launch.runner import SlurmRunner

    slurm.require("sbatch")
    settings = SlurmSettings.from_args(args).for_stage(args.stage_overrides, f"--slurm_stage{args.stage}")
    runner = SlurmRunner(settings, args.stage, args.log_dir or os.path.join("exp", "log", f"stage{args.stage}"))
    python = [sys.executable, "-m"]
    if args.kind == "dump":
        runner.dump(name, python + cmd, args.nj, settings.gpus_per_job(args.ngpu, True))
    elif args.kind == "train":
        node = python + ["stok.bin.launch", "node", "--nproc_per_node", str(args.train_nj), "--", *cmd]
        runner.train(name, node, settings.nodes, settings.gpus_per_job(args.ngpu, True, args.train_nj))
    else:
        runner.step(name, cmd, settings.gpus_per_job(args.ngpu, args.gpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())

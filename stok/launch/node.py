"""One node of a multi-node job: ``torchrun`` from the Slurm allocation, with SIGUSR1 passed to the ranks.

``python -m stok.bin.launch node --nproc_per_node P -- MODULE ARGS`` runs on every node of a job (``srun
--ntasks-per-node=1``). :func:`torchrun_args` builds torchrun's command line from the allocation:
``--nnodes $SLURM_NNODES --node_rank $SLURM_NODEID``, c10d rendezvous at the first host of
``$SLURM_JOB_NODELIST`` on a port derived from the job id (``--rdzv_port`` to choose one), and a rendezvous id of
job id and restart count, so a requeued job never meets the previous start's store. Outside Slurm the same
variables can be given by hand (two launchers on one host make a two-node run).

:func:`run_node` runs torchrun in this process: torchrun has no handler for SIGUSR1, whose default action would
kill it and orphan its ranks, so this process catches SIGUSR1 and passes it on to the ranks (its children; they run
in sessions of their own): the trainer checkpoints at the end of its step and exits, and torchrun ends when they
have. Under Slurm the ranks also receive the signal directly from slurmstepd (it signals every process of a step),
so a rank's handler must treat a repeated SIGUSR1 as one request.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import List, Mapping, Optional, Sequence

from stok.core.errors import UserError
from stok.launch.slurm import hostnames

PORT_BASE, PORT_SPAN = 20000, 20000


def _int(env: Mapping[str, str], names: Sequence[str], default: int) -> int:
    for name in names:
        value = env.get(name, "")
        if value:
            if not value.isdigit():
                raise UserError(f"${name} is {value!r}, not a whole number")
            return int(value)
    return default


def torchrun_args(env: Mapping[str, str], nproc_per_node: int, module: str, args: Sequence[str],
                  port: Optional[int] = None) -> List[str]:
    """torchrun's arguments for this node of the allocation described by ``env`` (the SLURM_* variables)."""
    nnodes = _int(env, ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"), 1)
    node_rank = _int(env, ("SLURM_NODEID",), 0)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if not nodelist:
        raise UserError("no $SLURM_JOB_NODELIST: run this inside a Slurm job (srun), or set SLURM_JOB_NODELIST, "
                        "SLURM_NNODES and SLURM_NODEID by hand")
    hosts = hostnames(nodelist)
    if len(hosts) < nnodes:
        raise UserError(f"$SLURM_JOB_NODELIST {nodelist} names {len(hosts)} host(s), fewer than $SLURM_NNODES "
                        f"{nnodes}")
    job = _int(env, ("SLURM_JOB_ID",), 0)
    restart = _int(env, ("SLURM_RESTART_COUNT",), 0)
    port = port or PORT_BASE + job % PORT_SPAN
    return ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--nproc_per_node", str(nproc_per_node),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{hosts[0]}:{port}", "--rdzv_id", f"stok-{job}-{restart}",
            "--max_restarts", "0", "-m", module, *args]


def children(pid: int) -> List[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(name))
    return out


def _forward(signum, frame) -> None:
    ranks = children(os.getpid())
    print(f"== stok: {signal.Signals(signum).name} passed to the ranks {ranks}", file=sys.stderr, flush=True)
    for pid in ranks:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_node(nproc_per_node: int, module: str, args: Sequence[str], port: Optional[int] = None) -> int:
    """torchrun in this process for this node (see the module docstring); returns its exit status."""
    argv = torchrun_args(os.environ, nproc_per_node, module, args, port)
    print(f"== stok: node {os.environ.get('SLURM_NODEID', '0')} ({os.uname().nodename}): torchrun "
          f"{' '.join(argv)}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGUSR1, _forward)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(argv)
    except ChildFailedError:  # torchrun has printed which rank failed and how
        return 1
    return 0

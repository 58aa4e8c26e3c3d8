"""Stopping a run cleanly on SIGTERM or SIGUSR1 (a cluster's time limit, preemption, ``scancel --signal``).

While :class:`StopSignals` is active, SIGTERM and SIGUSR1 only set a flag. The training loop asks
:meth:`StopSignals.agreed` once per step: the flag is all-reduced (the largest signal number wins), so a signal
seen by one rank stops every rank after the same step. The loop then saves a full checkpoint and
``stok-train`` exits with :data:`REQUEUE_EXIT_STATUS` (75, ``EX_TEMPFAIL``: "try again"), after rank 0 wrote
``<exp_dir>/stopped.json`` (step, signal, checkpoint); ``--resume`` continues step for step and removes it.

For launchers: a plain process exits 75; a ``torchrun`` launcher reports any non-zero worker status as 1, so
check ``stopped.json`` there. ``torchrun`` forwards SIGTERM to its ranks and waits ``--shutdown_timeout``
seconds (default 30) before SIGKILL; it forwards SIGUSR1 only with ``--signals_to_handle
SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1`` (otherwise SIGUSR1 ends the launcher itself). Slurm: ``#SBATCH
--signal=B:USR1@120`` plus a trap that forwards it, or ``--signal=USR1@120`` to every process of the step;
``RequeueExit=75`` in slurm.conf requeues a batch job that exits 75. DataLoader workers ignore both signals, so
a signal sent to every process of a job does not kill them under the loop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Dict, Optional, Sequence

from stok.core.distributed import DistInfo
from stok.core.fileio import atomic_write_text
from stok.train import ranks

log = logging.getLogger("stok.train")

#: ``stok-train``'s exit status after a signal stopped it with its state saved (sysexits' EX_TEMPFAIL)
REQUEUE_EXIT_STATUS = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER = "stopped.json"


class StopSignals:
    """Context manager: SIGTERM/SIGUSR1 set a flag instead of ending the process (main thread only)."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received = 0  # the signal number seen by this process (0: none)
        self._previous: Dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if not self.received:
            log.warning("received %s: stopping after this step (a checkpoint is saved)", signal.Signals(signum).name)
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def agreed(self, info: DistInfo) -> Optional[str]:
        """Every rank calls this at the same point of each step: the name of the signal any rank received
        (all ranks get the same answer), or None."""
        signum = ranks.max_int(info, self.received)
        return signal.Signals(signum).name if signum else None


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the loop decides when to stop; a job-wide signal must not kill a worker."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def write_marker(exp_dir: str, step: int, signal_name: str, checkpoint: Optional[str]) -> str:
    path = os.path.join(exp_dir, MARKER)
    info = {"step": step, "signal": signal_name, "checkpoint": checkpoint, "exit_status": REQUEUE_EXIT_STATUS,
            "resume": "run the same command with --resume"}
    atomic_write_text(json.dumps(info, indent=1) + "\n", path)
    return path


def clear_marker(exp_dir: str) -> None:
    path = os.path.join(exp_dir, MARKER)
    if os.path.isfile(path):
        os.remove(path)

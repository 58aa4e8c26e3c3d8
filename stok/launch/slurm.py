"""The Slurm commands the launcher uses, and what their answers mean: sbatch, squeue, scancel, scontrol.

:func:`submit` sends a batch script (``sbatch --parsable``) and returns the job id; :func:`task_states` reads the
state of every task of a job (array) with one ``squeue`` call (jobs that ended stay visible for ``MinJobAge``,
five minutes by default; no accounting database is needed); :func:`active_jobs` finds jobs of an earlier run by
name and comment. A state is *active* while the job may still run, and a job that ended without finishing is
*interrupted* (cancelled, preempted, out of time, lost with its node: resumable work is resubmitted) or *failed*.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from stok.core.errors import UserError

#: states of a job that has not ended (it may still start, run, or be requeued)
ACTIVE = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
#: ended without finishing its work for a reason outside it: resumable work is resubmitted
INTERRUPTED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
#: reasons of a FAILED job that never ran its command: resubmitted like an interruption
LAUNCH_FAILED = {"JobLaunchFailure", "NodeDown", "NodeFail", "Prolog"}
#: pending reasons that will not resolve on their own
HELD = {"JobHeldAdmin", "JobHeldUser", "launch failed requeued held", "PartitionDown", "PartitionInactive",
        "ReqNodeNotAvail", "InvalidQOS", "InvalidAccount", "PartitionConfig", "BadConstraints"}


class SlurmError(UserError):
    """A Slurm command failed or Slurm is not reachable; the message says which command and what it said."""


@dataclass
class TaskState:
    task: int          #: array task id (0 for a job that is not an array)
    job_id: str        #: the task's own job id (``%A``: what SLURM_JOB_ID is inside it)
    state: str         #: e.g. PENDING, RUNNING, COMPLETED, CANCELLED (``CANCELLED by 0`` is cut to CANCELLED)
    reason: str        #: why it is pending, or None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def require(command: str = "sbatch") -> str:
    path = shutil.which(command)
    if path is None:
        raise SlurmError(f"--launcher slurm: {command} not found on PATH; run on a Slurm login node (or use "
                         "--launcher local)")
    return path


def _run(args: Sequence[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    require(args[0])
    try:
        res = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what}: '{' '.join(args)}' did not answer within 120 s; is slurmctld up?") from None
    if check and res.returncode != 0:
        said = " ".join((res.stderr or res.stdout).split()) or f"exit status {res.returncode}"
        raise SlurmError(f"{what}: '{' '.join(args)}' failed: {said}")
    return res


def submit(script: str, options: Sequence[str] = (), what: str = "sbatch") -> str:
    """Submit ``script`` (with more sbatch ``options`` on the command line); returns the job id."""
    res = _run(["sbatch", "--parsable", *options, script], what)
    job_id = res.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"{what}: sbatch answered {res.stdout.strip()!r}, not a job id")
    return job_id


def task_states(job_id: str) -> Optional[Dict[int, TaskState]]:
    """Every known task of job (array) ``job_id`` -> its state; None when Slurm no longer knows the job
    (purged after ``MinJobAge``). Pending array tasks are listed one by one (``squeue -r``)."""
    res = _run(["squeue", "-h", "-r", "--states=all", "-j", job_id, "-o", "%K|%A|%T|%r"], "squeue", check=False)
    if res.returncode != 0:
        if "Invalid job id" in res.stderr:
            return None
        said = " ".join(res.stderr.split())
        raise SlurmError(f"squeue -j {job_id} failed: {said or 'exit status %d' % res.returncode}")
    out: Dict[int, TaskState] = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        task, own, state, reason = parts
        out[int(task) if task.isdigit() else 0] = TaskState(int(task) if task.isdigit() else 0, own,
                                                            state.split()[0], reason)
    return out


def cancel(ids: Sequence[str], signal: Optional[str] = None) -> None:
    """``scancel`` the given job or task ids (``12``, ``12_3``); best effort."""
    if ids:
        args = ["scancel"] + ([f"--signal={signal}"] if signal else []) + list(ids)
        _run(args, "scancel", check=False)


def active_jobs(name: str, comment: str) -> List[str]:
    """Ids of this user's queued or running jobs called ``name`` whose comment is ``comment``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    args = ["squeue", "-h", "-n", name, "-o", "%i|%T|%k"] + (["-u", user] if user else [])
    res = _run(args, "squeue", check=False)
    ids = []
    for line in res.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3 and parts[1] in ACTIVE and parts[2] == comment:
            ids.append(parts[0])
    return ids


def hostnames(nodelist: str) -> List[str]:
    """The hosts of a Slurm node list (``gpu[01-03,07],login1``), by ``scontrol show hostnames`` when present,
    else by :func:`expand_nodelist`."""
    if shutil.which("scontrol"):
        res = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.split()
    return expand_nodelist(nodelist)


def expand_nodelist(nodelist: str) -> List[str]:
    """``a[01-03,7]b,c`` -> ``a01b a02b a03b a7b c`` (one bracket group per name, Slurm's common form)."""
    names, depth, cur = [], 0, ""
    for ch in nodelist:  # split at commas outside brackets
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            names.append(cur)
            cur = ""
        else:
            cur += ch
    names.append(cur)
    out: List[str] = []
    for name in filter(None, (n.strip() for n in names)):
        if "[" not in name:
            out.append(name)
            continue
        head, rest = name.split("[", 1)
        ranges, tail = rest.split("]", 1)
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{head}{str(i).zfill(len(lo))}{tail}")
    return out

"""The sbatch scripts the launcher writes (kept beside the job logs, so a user can read or resubmit them).

Every script runs from the recipe dir (``--chdir``), appends to its log (``--open-mode=append``: a requeued or
resubmitted job adds to the same log), may be requeued (``--requeue``), prints where and when it starts, and at
its end writes its command's exit status to ``<log stem>.exit``: the launcher reads it, so a job that was killed
(no status written) is told apart from one whose command failed.

- :func:`step_script`: one command; for a dump's shards an array job, ``--shard $SLURM_ARRAY_TASK_ID/N``.
- :func:`train_script`: stage 3: ``srun`` starts ``python -m stok.bin.launch node`` once per node, which runs
  ``torchrun --nnodes N`` there (:mod:`stok.launch.node`). ``--signal=B:USR1@S`` warns the batch shell ``S``
  seconds before the time limit; it forwards SIGUSR1 to the step (srun hands it to every process of the step: the
  trainer checkpoints at the end of its step and exits), then requeues the job (``scontrol requeue``), whose next
  start runs the same ``stok-train --resume`` command.
"""

from __future__ import annotations

import shlex
from typing import List, Optional, Sequence

_BANNER = ('echo "== stok: $(date \'+%Y-%m-%d %H:%M:%S\') Slurm job ${SLURM_JOB_ID}'
           '${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID} task ${SLURM_ARRAY_TASK_ID})}'
           ' start ${SLURM_RESTART_COUNT:-0} on $(hostname)"')


def shell_path(path: str) -> str:
    """``path`` quoted for the shell, its ``%a`` (the array task, as in sbatch's ``--output``) expanded."""
    return '"${SLURM_ARRAY_TASK_ID}"'.join(shlex.quote(part) for part in path.split("%a"))


def _header(what: str, sbatch: Sequence[str]) -> List[str]:
    lines = ["#!/bin/bash", f"# {what}", "# Written by stok.launch (run.sh --launcher slurm), which submits it and waits."]
    return lines + [f"#SBATCH {opt}" for opt in sbatch]


def _common(name: str, comment: str, chdir: str, log: str) -> List[str]:
    return [f"--job-name={name}", f"--comment={comment}", f"--chdir={chdir}", f"--output={log}",
            "--open-mode=append", "--requeue"]


def _write_status(status: str) -> List[str]:
    return [f'status_file={status}',
            'echo "$rc" > "$status_file.tmp$$" && mv -f "$status_file.tmp$$" "$status_file"',
            'echo "== stok: $(date \'+%Y-%m-%d %H:%M:%S\') exit status $rc"',
            'exit "$rc"']


def step_script(*, what: str, name: str, comment: str, chdir: str, log: str, status: str, command: Sequence[str],
                resources: Sequence[str], shards: Optional[int] = None) -> str:
    """One command as one job, or with ``shards`` as an array job whose task I runs ``command --shard I/N``.
    ``log`` and ``status`` may hold ``%a`` (the array task): in the script it becomes ``$SLURM_ARRAY_TASK_ID``."""
    sbatch = _common(name, comment, chdir, log) + ["--ntasks=1", *resources]
    cmd = " ".join(shlex.quote(c) for c in command)
    if shards is not None:
        cmd += f' --shard "${{SLURM_ARRAY_TASK_ID}}/{shards}"'
    body = [_BANNER, cmd, "rc=$?", *_write_status(shell_path(status))]
    return "\n".join(_header(what, sbatch) + ["", *body]) + "\n"


def train_script(*, what: str, name: str, comment: str, chdir: str, log: str, status: str, node_command: Sequence[str],
                 nodes: int, cpus: int, resources: Sequence[str], signal_seconds: int) -> str:
    """Stage 3's job: ``node_command`` once per node under srun; SIGUSR1 before the time limit -> checkpoint and
    requeue (see the module docstring)."""
    sbatch = _common(name, comment, chdir, log) + [f"--nodes={nodes}", "--ntasks-per-node=1", *resources]
    if signal_seconds:
        sbatch.append(f"--signal=B:USR1@{signal_seconds}")
    srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}"]
    body = [
        "signalled=0",
        "on_usr1() {  # the time limit is near (or someone sent SIGUSR1): checkpoint, then requeue",
        "  signalled=1",
        '  echo "== stok: $(date \'+%Y-%m-%d %H:%M:%S\') SIGUSR1: the trainer checkpoints and stops; the job is requeued"',
        '  [ -n "${step:-}" ] && kill -USR1 "$step" 2>/dev/null',
        "}",
        "trap on_usr1 USR1",
        _BANNER,
        " ".join(shlex.quote(c) for c in srun + list(node_command)) + " &",
        "step=$!",
        "while :; do  # a trapped signal interrupts wait; wait again until the step has ended",
        '  wait "$step"; rc=$?',
        '  if [ "$rc" -gt 128 ] && kill -0 "$step" 2>/dev/null; then continue; fi',
        '  if [ "$rc" -gt 128 ]; then wait "$step"; r=$?; [ "$r" -ne 127 ] && rc=$r; fi',
        "  break",
        "done",
        'if [ "$signalled" = 1 ]; then',
        '  echo "== stok: $(date \'+%Y-%m-%d %H:%M:%S\') step ended ($rc); requeueing job $SLURM_JOB_ID: its next start '
        'resumes from the last checkpoint"',
        '  scontrol requeue "$SLURM_JOB_ID" && exit 0',
        '  echo "== stok: scontrol requeue $SLURM_JOB_ID failed: rerun run.sh to resume"',
        "  rc=75",
        "fi",
        *_write_status(shlex.quote(status)),
    ]
    return "\n".join(_header(what, sbatch) + ["", *body]) + "\n"

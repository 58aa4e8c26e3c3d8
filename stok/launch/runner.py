"""Submit a step's Slurm jobs, wait for them, resubmit what was interrupted, report what failed.

One :class:`SlurmRunner` serves one run.sh step (``python -m stok.bin.launch``):

- :meth:`SlurmRunner.step`: one command as one job;
- :meth:`SlurmRunner.dump`: a dump as ``nj`` shard jobs (one array job; no process group: each shard writes and
  resumes its own ark/scp) and, once every shard finished, one ``--merge_only`` job;
- :meth:`SlurmRunner.train`: stage 3 as one job over ``nodes`` nodes (:func:`stok.launch.scripts.train_script`).

Waiting polls ``squeue`` (``STOK_SLURM_POLL_SECONDS``, default 5). A job whose command exited non-zero has
*failed*: the runner cancels what else the step still runs and raises :class:`JobFailed` with the last lines of
the job's log. A job that ended without its exit status (cancelled while other jobs of the step went on,
preempted, out of time, lost with its node, or killed by a signal) was *interrupted*: it is resubmitted alone, up to
``--slurm_retries`` times, and resumes where it stopped (dumps skip what their shard wrote; training resumes from
its last checkpoint). Cancelling everything a step still runs at once (``scancel`` of the whole job) stops it.
Stopping run.sh (Ctrl-C, SIGTERM, SIGHUP) cancels the step's jobs. Jobs of an earlier run of the same step that
are still queued or running are refused before anything is submitted.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from stok.launch import slurm
from stok.launch.scripts import step_script, train_script
from stok.launch.settings import SlurmSettings

GRACE_SECONDS = 15.0  # an ended job's status file may show up late on a network filesystem


class JobFailed(Exception):
    """A job's command failed (or the job was stopped for good); the message (several lines) quotes the end of
    its log. ``stok.bin.launch`` prints it as the tool's ``error:`` report."""


def poll_seconds() -> float:
    return float(os.environ.get("STOK_SLURM_POLL_SECONDS", 5))


def say(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} (launch) {msg}", flush=True)


def log_tail(path: str, lines: int = 12) -> List[str]:
    """The last ``lines`` lines of a job log (progress-bar redraws dropped), and its last ``error:`` line if it
    comes earlier."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 200_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return [f"(no log at {path})"]
    rows = [r.rstrip() for line in text.split("\n") for r in line.split("\r")[-1:] if r.strip()]
    tail = rows[-lines:]
    errors = [r for r in rows if r.lstrip().startswith("error:")]
    if errors and errors[-1] not in tail:
        tail = [errors[-1], "..."] + tail
    return tail


@dataclass
class Submission:
    """The jobs of one script: task -> the job id holding it now (the array job id; resubmits change it)."""

    what: str                      #: e.g. "feats.train shard" (messages)
    script: str
    log: str                       #: log path, ``%a`` = task
    status: str                    #: exit-status path, ``%a`` = task
    tasks: List[int]
    array: bool
    jobs: Dict[int, str] = field(default_factory=dict)
    retries: Dict[int, int] = field(default_factory=dict)

    def path(self, template: str, task: int) -> str:
        return template.replace("%a", str(task))

    def label(self, task: int) -> str:
        job = self.jobs.get(task, "?")
        shown = f"{job}_{task}" if self.array else job
        part = f" {task} of {len(self.tasks)}" if self.array else ""
        return f"{self.what}{part} (Slurm job {shown})"


class SlurmRunner:
    def __init__(self, settings: SlurmSettings, stage: int, log_dir: str, chdir: Optional[str] = None):
        self.settings, self.stage = settings, stage
        self.chdir = os.path.abspath(chdir or os.getcwd())
        self.log_dir = os.path.abspath(log_dir)
        self.active: List[Submission] = []
        self.poll = poll_seconds()

    # ------------------------------------------------------------------ public steps
    def step(self, name: str, command: Sequence[str], gpus: str) -> None:
        """``command`` as one job; returns when it finished, raises :class:`JobFailed` when it failed."""
        sub = self._prepare(name, name, command, gpus, shards=None)
        self._run(sub)

    def dump(self, name: str, command: Sequence[str], nj: int, gpus: str) -> None:
        """A dump tool's ``command`` as ``nj`` shard jobs (``--shard I/nj``), then its ``--merge_only`` job."""
        shards = self._prepare(name, f"{name} shard", command, gpus, shards=nj)
        self._run(shards)
        merge = self._prepare(f"{name}.merge", f"{name} merge", list(command) + ["--merge_only"], gpus, shards=None)
        self._run(merge)

    def train(self, name: str, node_command: Sequence[str], nodes: int, gpus: str) -> None:
        """Stage 3: ``node_command`` on each of ``nodes`` nodes; requeued and resumed across time limits."""
        self._check_no_earlier(name)
        os.makedirs(self.log_dir, exist_ok=True)
        log, status, script = self._files(name, array=False)
        text = train_script(what=f"stage {self.stage}: {name} on {nodes} node(s)", name=self._job_name(name),
                            comment=self._comment(name), chdir=self.chdir, log=log, status=status,
                            node_command=node_command, nodes=nodes, cpus=self.settings.cpus,
                            resources=self.settings.sbatch_resources(gpus),
                            signal_seconds=self.settings.signal_seconds)
        self._write(script, text)
        self._run(Submission(name, script, log, status, [0], array=False))

    # ------------------------------------------------------------------ preparing
    def _job_name(self, name: str) -> str:
        return f"stok.s{self.stage}.{name}"

    def _comment(self, name: str) -> str:
        return f"stok:{self.chdir}:{name}"

    def _files(self, name: str, array: bool):
        stem = os.path.join(self.log_dir, name)
        task = ".%a" if array else ""
        return f"{stem}{task}.log", f"{stem}{task}.exit", f"{stem}.sbatch"

    @staticmethod
    def _write(path: str, text: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    def _check_no_earlier(self, name: str) -> None:
        earlier = slurm.active_jobs(self._job_name(name), self._comment(name))
        if earlier:
            raise JobFailed(f"stage {self.stage}: {name}: Slurm job(s) {', '.join(earlier)} of an earlier run are "
                            f"still queued or running in {self.chdir}; wait for them to end or cancel them "
                            f"(scancel {' '.join(sorted({e.split('_')[0] for e in earlier}))}), then rerun")

    def _prepare(self, name: str, what: str, command: Sequence[str], gpus: str, shards: Optional[int]) -> Submission:
        self._check_no_earlier(name)
        os.makedirs(self.log_dir, exist_ok=True)
        log, status, script = self._files(name, array=shards is not None)
        text = step_script(what=f"stage {self.stage}: {what}", name=self._job_name(name),
                           comment=self._comment(name), chdir=self.chdir, log=log, status=status, command=command,
                           resources=self.settings.sbatch_resources(gpus), shards=shards)
        self._write(script, text)
        tasks = list(range(shards)) if shards is not None else [0]
        return Submission(what, script, log, status, tasks, array=shards is not None)

    # ------------------------------------------------------------------ submitting and waiting
    def _submit(self, sub: Submission, tasks: List[int]) -> None:
        for t in tasks:
            try:
                os.remove(sub.path(sub.status, t))
            except FileNotFoundError:
                pass
        options = [f"--array={','.join(map(str, tasks))}"] if sub.array else []
        job = slurm.submit(sub.script, options, what=f"stage {self.stage}: submitting {sub.what}")
        for t in tasks:
            sub.jobs[t] = job
        shown = sub.path(sub.log, tasks[0]) if len(tasks) == 1 else sub.log.replace("%a", "<shard>")
        which = _tasks_text(tasks, len(sub.tasks)) if sub.array else ""
        say(f"stage {self.stage}: submitted {sub.what}{which} as Slurm job {job} "
            f"(log {os.path.relpath(shown, self.chdir)})")

    def _read_status(self, sub: Submission, task: int) -> Optional[int]:
        try:
            with open(sub.path(sub.status, task)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _run(self, sub: Submission) -> None:
        self.active = [sub]
        previous = _install_stop_handlers(self._stop)
        try:
            self._submit(sub, list(sub.tasks))
            self._wait(sub)
        finally:
            _restore_handlers(previous)
            self.active = []

    def _wait(self, sub: Submission) -> None:
        todo = set(sub.tasks)
        ended_without_status: Dict[int, float] = {}
        warned_held: set = set()
        last_report = time.time()
        while todo:
            time.sleep(self.poll)
            states: Dict[str, Optional[Dict[int, slurm.TaskState]]] = {}
            for job in {sub.jobs[t] for t in todo}:
                states[job] = slurm.task_states(job)
            now_active, finished, interrupted = set(), [], {}
            for t in sorted(todo):
                known = states[sub.jobs[t]]
                st = known.get(t) if known is not None else None
                if st is not None and st.active:
                    now_active.add(t)
                    ended_without_status.pop(t, None)
                    if st.state == "PENDING" and st.reason in slurm.HELD and t not in warned_held:
                        warned_held.add(t)
                        say(f"stage {self.stage}: {sub.label(t)} is pending ({st.reason}); it will not start until "
                            "that is resolved (scontrol release / a working partition)")
                    continue
                rc = self._read_status(sub, t)
                state = st.state if st is not None else "ENDED"
                if st is not None and st.reason not in ("None", ""):
                    state += f" ({st.reason})"
                if rc == 0:
                    finished.append(t)
                    continue
                if rc is not None and rc < 128:
                    self._fail(sub, t, f"failed with exit status {rc}")
                if rc is None and st is not None and st.state not in slurm.INTERRUPTED and \
                        st.reason not in slurm.LAUNCH_FAILED:
                    first = ended_without_status.setdefault(t, time.time())
                    if time.time() - first < GRACE_SECONDS:
                        continue  # the status file may not be visible yet
                    self._fail(sub, t, f"ended {state} without an exit status (killed? out of memory? see its log)")
                interrupted[t] = state if rc is None else f"{state}, killed by signal {rc - 128}"
            for t in finished:
                todo.discard(t)
            if finished:
                say(f"stage {self.stage}: {', '.join(sub.label(t) for t in finished)} finished"
                    + (f"; {len(todo)} to go" if todo else ""))
            if interrupted:
                cancelled = [t for t, state in interrupted.items() if state.startswith("CANCELLED")]
                if (len(cancelled) == len(interrupted) and not (now_active & todo)
                        and (len(cancelled) > 1 or len(sub.tasks) == 1)):
                    what = f"{sub.what}s were" if sub.array else f"{sub.what} was"
                    raise JobFailed(f"stage {self.stage}: {what} cancelled (Slurm job {sub.jobs[cancelled[0]]}); "
                                    "rerun run.sh to resume")
                self._resubmit(sub, interrupted)
            if time.time() - last_report > 600 and todo:
                last_report = time.time()
                say(f"stage {self.stage}: waiting for {len(todo)} of {len(sub.tasks)} {sub.what} job(s)")

    def _resubmit(self, sub: Submission, interrupted: Dict[int, str]) -> None:
        again = []
        for t, state in sorted(interrupted.items()):
            n = sub.retries.get(t, 0) + 1
            if n > self.settings.retries:
                self._fail(sub, t, f"ended {state} without finishing, {n - 1} time(s) resubmitted already "
                                   f"(--slurm_retries {self.settings.retries})")
            sub.retries[t] = n
            say(f"stage {self.stage}: {sub.label(t)} ended {state} without finishing; resubmitting it alone "
                f"(retry {n} of {self.settings.retries}): it resumes where it stopped")
            again.append(t)
        if sub.array:
            self._submit(sub, again)
        else:
            self._submit(sub, [0])

    def _fail(self, sub: Submission, task: int, why: str) -> None:
        others = [f"{sub.jobs[t]}_{t}" if sub.array else sub.jobs[t] for t in sub.tasks if t != task]
        slurm.cancel(others)
        log = sub.path(sub.log, task)
        tail = "\n".join("  " + line for line in log_tail(log))
        raise JobFailed(f"stage {self.stage}: {sub.label(task)} {why}; its log "
                        f"{os.path.relpath(log, self.chdir)} ends:\n{tail}")

    def _stop(self, signum, frame) -> None:
        ids = []
        for sub in self.active:
            ids += [f"{j}_{t}" if sub.array else j for t, j in sub.jobs.items()]
        if ids:
            print(f"launch: {signal.Signals(signum).name}: cancelling Slurm job(s) {' '.join(ids)}", file=sys.stderr,
                  flush=True)
            slurm.cancel(ids)
        raise SystemExit(128 + signum)


def _tasks_text(tasks: List[int], n: int) -> str:
    if len(tasks) == 1:
        return f" {tasks[0]} of {n}"
    if len(tasks) == n:
        return f"s 0..{n - 1} of {n}"
    return "s " + ", ".join(map(str, tasks)) + f" of {n}"


def _install_stop_handlers(handler: Callable) -> dict:
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)

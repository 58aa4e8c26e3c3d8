"""Exclusive locks on output files that work across hosts (a shared filesystem) and survive killed holders.

A lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+), holding
the holder's host, boot id, pid, process start time and start date. While held, a daemon thread refreshes the
file's mtime every :data:`HEARTBEAT_SECONDS`. A lock is stale, and is taken over, when

- its holder ran on this host (same boot) and that process is gone (or its pid now belongs to another process), or
- its holder ran in a Slurm job (the lock records ``SLURM_JOB_ID`` and ``SLURM_RESTART_COUNT``) that has ended,
  is no longer running, or was requeued since (``scontrol show job``; also when this process is the requeued job
  itself), so a preempted or cancelled job's lock is taken over at once by its resubmission on any host, or
- its heartbeat is older than ``STOK_LOCK_STALE_SECONDS`` (default :data:`STALE_SECONDS`): a holder on another
  host that was killed, or this host rebooted.

Otherwise acquiring it raises :class:`LockHeld`, a user error naming the host and pid that hold it. Taking over
goes through a second ``O_EXCL`` file, so two processes that find the same stale lock do not both take it.
A lock may carry ``info`` (what the holder writes, e.g. a dump's shard layout and fingerprint):
:func:`live_holders` lists the live holders of a set of lock files, so a writer can refuse to work beside
another writer of the same output with other settings.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import List, Optional, Tuple

from stok.core.errors import UserError

HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 120.0


class LockHeld(UserError):
    """Another live process holds the lock; the message names its host, pid and start."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Slurm job states in which a job's processes may still run
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}


def slurm_identity() -> dict:
    """This process's Slurm job and restart count (empty outside Slurm)."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return {}
    return {"slurm_job": job, "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}


def slurm_job_gone(job: str, restart: int) -> Optional[str]:
    """Why Slurm job ``job`` (at restart ``restart``) no longer runs that start, or None while it may (or when
    Slurm cannot be asked)."""
    if not job or shutil.which("scontrol") is None:
        return None
    try:
        res = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return f"Slurm job {job} has ended" if "Invalid job id" in res.stderr else None
    fields = dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)
    state = fields.get("JobState", "")
    if int(fields.get("Restarts", "0") or 0) > restart:
        return f"Slurm job {job} was requeued since"
    if state and state not in SLURM_RUNNING:
        return f"Slurm job {job} is {state}"
    return None


def stale_seconds() -> float:
    return float(os.environ.get("STOK_LOCK_STALE_SECONDS", STALE_SECONDS))


class FileLock:
    """``with FileLock(path, what):`` holds the lock (see the module docstring); ``what`` names the guarded
    output in the refusal message."""

    def __init__(self, path: str, what: str, info: Optional[dict] = None):
        self.path, self.what = path, what
        self.me = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                   "start_time": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                   **slurm_identity(), **({"info": info} if info else {})}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.held = False

    # ------------------------------------------------------------------ holder state
    def _read(self) -> Optional[dict]:
        for _ in range(20):  # a lock being written right now: read again
            try:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            try:
                return json.loads(text)
            except ValueError:
                time.sleep(0.05)
        return {}

    def _why_stale(self, holder: dict) -> Optional[str]:
        """Why the holder's lock is stale, or None while it looks alive."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return "gone"
        if not holder:
            return "unreadable lock file" if age > stale_seconds() else None
        if holder.get("host") == self.me["host"] and holder.get("boot_id") == self.me["boot_id"]:
            pid = int(holder.get("pid", -1))
            if pid == os.getpid():
                return None if self.held else "held by this process before"
            if not _alive(pid) or _start_time(pid) != holder.get("start_time"):
                return f"process {pid} on {holder['host']} is gone"
            return None
        job, restart = holder.get("slurm_job"), int(holder.get("slurm_restart", 0) or 0)
        if job and job == self.me.get("slurm_job") and restart < self.me.get("slurm_restart", 0):
            return f"Slurm job {job} was requeued: this is its restart {self.me['slurm_restart']}"
        gone = slurm_job_gone(job, restart) if job else None
        if gone:
            return gone
        if age > stale_seconds():
            return f"no heartbeat for {age:.0f} s"
        return None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "FileLock":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile
                why = self._why_stale(holder)
                if why is None:
                    self._refuse(holder)
                self._take_over(holder, why)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.me, f)
            self.held = True
            self._thread = threading.Thread(target=self._heartbeat, name=f"lock {self.path}", daemon=True)
            self._thread.start()
            return self
        raise LockHeld(f"{self.what}: could not take the lock {self.path} (it keeps changing hands); try again")

    def _refuse(self, holder: dict) -> None:
        since = holder.get("since", "?")
        raise LockHeld(f"{self.what} is being written by another process: {describe(holder)} (since {since}, lock "
                       f"{self.path}); wait for it to finish or stop it{self._later(holder)}")

    def _later(self, holder: dict) -> str:
        if holder.get("host", "?") == self.me["host"]:
            return ""
        return f"; if that job is gone, its lock is taken over {stale_seconds():.0f} s after its last heartbeat"

    def live_holder(self) -> Optional[dict]:
        """The holder of this lock file if it is held by another live process (not stale), else None."""
        holder = self._read()
        if holder is None or holder == self.me or self._why_stale(holder) is not None:
            return None
        return holder

    def _take_over(self, holder: dict, why: str) -> None:
        breaker = self.path + ".takeover"
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # another process is taking it over; a breaker left by a killed one is old
                if time.time() - os.stat(breaker).st_mtime > 30:
                    os.remove(breaker)
            except FileNotFoundError:
                pass
            time.sleep(0.2)
            return
        os.close(fd)
        try:
            if self._read() == holder:  # still the stale holder's lock
                os.remove(self.path)
                import logging

                logging.getLogger("stok").warning("%s: took over a stale lock of host %s pid %s (%s)", self.path,
                                                  holder.get("host"), holder.get("pid"), why)
        except FileNotFoundError:
            pass
        finally:
            try:
                os.remove(breaker)
            except FileNotFoundError:
                pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._read() == self.me:
                os.remove(self.path)
        except FileNotFoundError:
            pass
        self.held = False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe(holder: dict) -> str:
    """``host H pid P`` (and ``Slurm job J``) of a lock's holder."""
    job = f" (Slurm job {holder['slurm_job']})" if holder.get("slurm_job") else ""
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')}{job}"


def live_holders(pattern: str, what: str, exclude: str = "") -> List[Tuple[str, dict]]:
    """``(path, holder)`` of every lock file matching the glob ``pattern`` (but ``exclude``) that another live
    process holds."""
    out = []
    for path in sorted(glob.glob(pattern)):
        if os.path.abspath(path) == os.path.abspath(exclude) or path.endswith(".takeover"):
            continue
        holder = FileLock(path, what).live_holder()
        if holder:
            out.append((path, holder))
    return out

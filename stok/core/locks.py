"""Exclusive locks on output files that work across hosts (a shared filesystem) and survive killed holders.

A lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+), holding
the holder's host, boot id, pid, process start time and start date. While held, a daemon thread refreshes the
file's mtime every :data:`HEARTBEAT_SECONDS`. A lock is stale, and is taken over, when

- its holder ran on this host (same boot) and that process is gone (or its pid now belongs to another process), or
- its heartbeat is older than ``STOK_LOCK_STALE_SECONDS`` (default :data:`STALE_SECONDS`): a holder on another
  host that was killed, or this host rebooted.

Otherwise acquiring it raises :class:`LockHeld`, a user error naming the host and pid that hold it. Taking over
goes through a second ``O_EXCL`` file, so two processes that find the same stale lock do not both take it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Optional

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


def stale_seconds() -> float:
    return float(os.environ.get("STOK_LOCK_STALE_SECONDS", STALE_SECONDS))


class FileLock:
    """``with FileLock(path, what):`` holds the lock (see the module docstring); ``what`` names the guarded
    output in the refusal message."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        self.me = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                   "start_time": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
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
        host = holder.get("host", "?")
        remote = host != self.me["host"]
        later = (f"; if that job is gone, its lock is taken over {stale_seconds():.0f} s after its last heartbeat"
                 if remote else "")
        raise LockHeld(f"{self.what} is being written by another process: host {host} pid {holder.get('pid', '?')} "
                       f"(since {since}, lock {self.path}); wait for it to finish or stop it{later}")

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

"""A real one-host Slurm cluster for the tests: munged, slurmctld and slurmd on localhost, started and stopped here.

:class:`OneHostSlurm` installs Debian's packages when they are missing (``apt-get install slurmctld slurmd
slurm-client munge``; ``apt-get update`` first if that fails), writes its own munge key and ``slurm.conf`` into a
temporary dir (free ports, its own state, spool, pid and log files, so it meets no other Slurm or munge on the
machine; credentials expire after 10 s instead of 120, so a requeued job may start again 10 s after it ended), starts the daemons in the foreground as its own children (no systemd; stopping them leaves no zombie and no
stale pid file), waits for the node to be idle (resuming it if it came up down), and at the end cancels the jobs
left, stops the daemons and removes the dir. Clients find it through ``SLURM_CONF`` (:attr:`OneHostSlurm.env`).

The session fixture :func:`slurm_cluster` is shared by the Slurm tests. Under ``CI=true`` nothing is skipped: a
failure to install or start fails the tests; elsewhere they are skipped only when apt-get cannot run (not root,
no apt-get). By hand: ``python -m tests.slurm_cluster`` starts one and prints its ``SLURM_CONF`` (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or started here; the message says why."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _missing() -> List[str]:
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin", "/sbin"]
    return [p for p in PROGRAMS if not any(os.access(os.path.join(d, p), os.X_OK) for d in dirs)]


def install() -> None:
    """Install the packages when a program is missing (root and apt-get needed)."""
    if not _missing():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"Slurm is not installed ({', '.join(_missing())} missing) and apt-get cannot run "
                               "here (root and apt-get needed)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0 or _missing():
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if _missing():
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


def _sbin(name: str) -> str:
    return shutil.which(name) or os.path.join("/usr/sbin", name)


class OneHostSlurm:
    """munged + slurmctld + slurmd on this host (see the module docstring)."""

    def __init__(self, cpus: Optional[int] = None):
        self.dir = ""
        self.cpus = cpus or os.cpu_count() or 1
        self.node = socket.gethostname().split(".")[0]
        self.procs: Dict[str, subprocess.Popen] = {}
        self.env: Dict[str, str] = {}

    # ------------------------------------------------------------------ set-up
    def write_config(self) -> str:
        d = self.dir
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(os.path.join(d, "munge.key"), 0o400)
        mem = max(1000, min(_mem_mb() - 2048, 16000))
        conf = f"""# one-host test cluster written by tests/slurm_cluster.py
ClusterName=stoktest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket,cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=500
ReturnToService=2
KillWait=5
MinJobAge=300
SlurmdTimeout=60
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        path = os.path.join(d, "slurm.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def _start(self, name: str, args: List[str]) -> None:
        log = open(os.path.join(self.dir, "log", f"{name}.out"), "ab")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def _check_running(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with status {p.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = ""
        for path in (os.path.join(self.dir, "log", f"{name}.out"), os.path.join(self.dir, "log", f"{name}.log")):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += "".join(f.readlines()[-lines:])
        return text

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        res = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def _wait(self, what: str, ok, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self._check_running()
            if ok():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"timed out waiting for {what}; slurmctld: {self.log_tail('slurmctld')} slurmd: "
                               f"{self.log_tail('slurmd')}")

    def node_state(self) -> str:
        res = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False)
        return res.stdout.strip()

    def start(self) -> "OneHostSlurm":
        install()
        self.dir = tempfile.mkdtemp(prefix="stok-slurm-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        conf = self.write_config()
        self.env = {**os.environ, "SLURM_CONF": conf}
        try:
            d = self.dir
            self._start("munged", [_sbin("munged"), "-F", "--force", f"--socket={d}/munge.socket",
                                   f"--key-file={d}/munge.key", f"--pid-file={d}/munged.pid",
                                   f"--log-file={d}/log/munged.log", f"--seed-file={d}/munged.seed"])
            self._wait("munged", lambda: os.path.exists(f"{d}/munge.socket"), 20)
            self._start("slurmctld", [_sbin("slurmctld"), "-D", "-f", conf])
            self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0, 30)
            self._start("slurmd", [_sbin("slurmd"), "-D", "-f", conf, "-N", self.node])
            resumed = [False]

            def idle() -> bool:
                state = self.node_state()
                if state.startswith(("down", "drain")) and not resumed[0]:
                    self.run("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
                    resumed[0] = True
                return state in ("idle", "mixed", "allocated")

            self._wait("the node to be idle", idle, 60)
        except BaseException:
            self.stop()
            raise
        return self

    # ------------------------------------------------------------------ helpers for tests
    def jobs(self) -> List[Dict[str, str]]:
        """Every job slurmctld still knows: ``id`` (a task's own id), ``array`` (its array job's id), ``task``
        (array task or N/A), ``name``, ``state``, ``reason``, ``comment``."""
        res = self.run("squeue", "-h", "-r", "--states=all", "-o", "%A|%F|%K|%j|%T|%r|%k", check=False)
        keys = ("id", "array", "task", "name", "state", "reason", "comment")
        return [dict(zip(keys, line.split("|", 6))) for line in res.stdout.splitlines() if line.strip()]

    # ------------------------------------------------------------------ tear-down
    def stop(self) -> None:
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", os.environ.get("USER", "root"), check=False)
            end = time.time() + 20
            while time.time() < end and any(j["state"] in ("RUNNING", "COMPLETING", "PENDING") for j in self.jobs()):
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        if self.dir and not os.environ.get("STOK_TEST_SLURM_KEEP"):  # =1 keeps the logs, for debugging
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running :class:`OneHostSlurm` for the session; skipped only outside CI when apt-get cannot run."""
    cluster = OneHostSlurm()
    try:
        cluster.start()
    except SlurmUnavailable as e:
        if in_ci() or "apt-get cannot run" not in str(e):
            pytest.fail(f"the one-host Slurm cluster did not start: {e}")
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID stops it cleanly too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    c = OneHostSlurm().start()
    print(f"export SLURM_CONF={c.env['SLURM_CONF']}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        c.stop()

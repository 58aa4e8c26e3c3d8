"""The launcher's settings: which launcher, and the Slurm resources a recipe writes once in ``conf/cmd.sh``.

:class:`SlurmSettings` holds what every job of a recipe gets (partition, time limit, memory, CPUs, GPUs, more sbatch
options) and stage 3's nodes, SIGUSR1 lead time and the resubmission budget; :meth:`SlurmSettings.for_stage`
applies one stage's overrides (``slurm_stage3="nodes=2 gpus=8 time=2-00:00:00"``). Options are named as run.sh
and ``stok.bin.launch`` spell them (``--slurm_time``), so a mistake reads the same wherever it was made.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from typing import List, Optional

from stok.core.settings import Settings, SettingsError, setting

LAUNCHERS = ("local", "slurm")

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_GPUS = re.compile(r"^(?:auto|\d+|[A-Za-z0-9_.-]+:\d+)$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.,-]*$")
#: keys of a stage override (``slurm_stage<N>``) and the settings they replace
OVERRIDE_KEYS = ("partition", "time", "mem", "cpus", "gpus", "nodes", "opts")


def time_seconds(value: str) -> Optional[int]:
    """Seconds of a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``); None for no limit
    (empty, ``infinite``, ``unlimited``). Raises ValueError when it is not one of these forms."""
    v = value.strip()
    if not v or v.lower() in ("infinite", "unlimited"):
        return None
    m = _TIME.match(v)
    if not m:
        raise ValueError(v)
    days, a, b, c = m.groups()
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if c is not None:  # HH:MM:SS
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:  # MM:SS
        return int(a) * 60 + int(b)
    return int(a) * 60  # MM


@dataclass
class SlurmSettings(Settings):
    """Resources of a recipe's Slurm jobs (one job = one dump shard, one merge, one step; stage 3: one job of
    ``nodes`` nodes)."""

    partition: str = setting("", flag="slurm_partition", help="partition of the jobs ('': the cluster's default)")
    time: str = setting("", flag="slurm_time",
                        help="time limit per job: MM, HH:MM:SS or D-HH:MM:SS ('': the partition's default)")
    mem: str = setting("", flag="slurm_mem", help="memory per job (per node in stage 3), e.g. 16G ('': the default)")
    cpus: int = setting(4, minimum=1, flag="slurm_cpus", help="CPUs per job (per node in stage 3)")
    gpus: str = setting(
        "auto", flag="slurm_gpus",
        help="GPUs per job (per node in stage 3): N, TYPE:N, or auto = with --ngpu > 0 one per dump shard or GPU "
             "step and --train_nj per training node, else none")
    nodes: int = setting(1, minimum=1, flag="slurm_nodes",
                         help="stage 3: nodes of the training job (torchrun --nnodes, c10d rendezvous)")
    opts: str = setting("", flag="slurm_opts",
                        help="more sbatch options for every job, e.g. '--account=proj --qos=normal'")
    retries: int = setting(3, minimum=0, flag="slurm_retries",
                           help="times a job that was cancelled alone, preempted, out of time or lost with its node "
                                "is resubmitted (it resumes where it stopped)")
    signal_seconds: int = setting(
        300, minimum=0, flag="slurm_signal_seconds",
        help="stage 3: SIGUSR1 this long before the time limit (--signal=B:USR1@S): checkpoint, requeue, resume "
             "(0: no signal)")

    def validate(self) -> None:
        if not _PARTITION.match(self.partition):
            raise SettingsError(f"{self.setting_name('partition')} {self.partition!r}: give a partition name "
                                "(or a comma-separated list)")
        try:
            limit = time_seconds(self.time)
        except ValueError:
            raise SettingsError(f"{self.setting_name('time')} {self.time}: give a Slurm time limit: MM, HH:MM:SS "
                                "or D-HH:MM:SS (e.g. 4:00:00 or 2-00:00:00)") from None
        if self.mem and not _MEM.match(self.mem):
            raise SettingsError(f"{self.setting_name('mem')} {self.mem}: give a size such as 16G or 4000M")
        if not _GPUS.match(self.gpus):
            raise SettingsError(f"{self.setting_name('gpus')} {self.gpus}: give auto, a number or TYPE:N "
                                "(e.g. a100:4)")
        try:
            shlex.split(self.opts)
        except ValueError as e:
            raise SettingsError(f"{self.setting_name('opts')} {self.opts!r}: {e}") from None
        if limit is not None and self.signal_seconds and self.signal_seconds >= limit:
            raise SettingsError(f"{self.setting_name('signal_seconds')} {self.signal_seconds} is not below the time "
                                f"limit ({self.setting_name('time')} {self.time} = {limit} s): the job would be "
                                "warned before it starts; lower it")

    def for_stage(self, overrides: str, where: str) -> "SlurmSettings":
        """These settings with one stage's ``key=value`` overrides (``where``: how the user wrote them, for
        messages, e.g. ``--slurm_stage3``)."""
        try:
            words = shlex.split(overrides)
        except ValueError as e:
            raise SettingsError(f"{where} {overrides!r}: {e}") from None
        values = {}
        for word in words:
            key, eq, value = word.partition("=")
            if not eq or key not in OVERRIDE_KEYS:
                raise SettingsError(f"{where} {overrides!r}: {word!r} is not KEY=VALUE with KEY one of "
                                    f"{', '.join(OVERRIDE_KEYS)} (e.g. \"gpus=1 time=2-00:00:00\")")
            values[key] = value
        for key in ("cpus", "nodes"):
            if key in values and not values[key].isdigit():
                raise SettingsError(f"{where}: {key}={values[key]} is not a whole number")
        typed = {k: int(v) if k in ("cpus", "nodes") else v for k, v in values.items()}
        out = dataclasses.replace(self, **typed)
        if overrides.strip():
            try:
                out.check()
            except SettingsError as e:
                raise SettingsError(f"{where} {overrides!r}: {e}") from None
        return out

    def gpus_per_job(self, ngpu: int, uses_gpu: bool, per_node: int = 1) -> str:
        """The ``gpu`` gres of a job: '' for none, else ``N`` or ``TYPE:N``; ``auto`` follows ``--ngpu``."""
        if self.gpus == "auto":
            return str(per_node) if ngpu > 0 and uses_gpu else ""
        return "" if self.gpus in ("0",) else self.gpus

    def sbatch_resources(self, gpus: str) -> List[str]:
        """The sbatch options of these resources (the user's ``opts`` come last: they win)."""
        out = [f"--cpus-per-task={self.cpus}"]
        if self.partition:
            out.append(f"--partition={self.partition}")
        if self.time:
            out.append(f"--time={self.time}")
        if self.mem:
            out.append(f"--mem={self.mem}")
        if gpus:
            out.append(f"--gres=gpu:{gpus}")
        return out + shlex.split(self.opts)

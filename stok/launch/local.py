"""The ``local`` launcher: a step runs on this machine exactly as run.sh has always run it.

A plain step runs as given; a dump or training step runs as ``python -m MODULE ...`` in one process, or as
``torchrun --standalone --nproc_per_node N -m MODULE ...`` for several (dump ranks on CPU or GPUs, DDP training).
The command replaces the launcher's process (:func:`os.execvp`): same exit status, same signals, same output.
"""

from __future__ import annotations

import os
from typing import List, NoReturn, Sequence


def module_command(module: str, args: Sequence[str], procs: int) -> List[str]:
    if procs > 1:
        return ["torchrun", "--standalone", "--nproc_per_node", str(procs), "-m", module, *args]
    return ["python", "-m", module, *args]


def run(command: Sequence[str]) -> NoReturn:
    os.execvp(command[0], list(command))

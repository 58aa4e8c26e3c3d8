"""Peak memory of a tool run as a child process, and long speech-like inputs written without holding them whole."""

from __future__ import annotations

import os
import subprocess
from typing import List

import numpy as np
import soundfile as sf

from tests.conftest import PYTHON, REPO, speechlike

# The wrapper runs the tool as its only child and reports that child's peak RSS (ru_maxrss, kB on Linux)
_WRAPPER = ("import resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(rc)\n")


def peak_rss(argv: List[str], cwd: str = REPO) -> int:
    """Peak resident set size in bytes of ``python -m <argv>`` (with ``--num_workers 0`` a dump is one process)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([PYTHON, "-c", _WRAPPER, PYTHON, "-m", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("PEAK_RSS_KB")][-1]
    return int(line.split()[1]) * 1024


def write_long(path: str, seconds: float, rate: int = 16000, channels: int = 1) -> str:
    """Speech-like 16-bit audio written a minute at a time."""
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as f:
        done, block = 0.0, 0
        while done < seconds:
            step = min(60.0, seconds - done)
            x = speechlike(step, rate, seed=block)
            f.write(np.stack([x * 0.9 ** c for c in range(channels)], 1))
            done, block = done + step, block + 1
    return path


def one_file_dir(root: str, seconds: float, rate: int = 16000, channels: int = 1) -> str:
    """A Kaldi data dir holding one utterance of ``seconds`` (with utt2dur)."""
    os.makedirs(root, exist_ok=True)
    wav = write_long(os.path.join(root, "long.wav"), seconds, rate, channels)
    with open(os.path.join(root, "wav.scp"), "w") as f:
        f.write(f"long {wav}\n")
    with open(os.path.join(root, "utt2dur"), "w") as f:
        f.write(f"long {seconds:.4f}\n")
    return root

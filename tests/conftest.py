"""Shared test helpers: small real audio corpora written to disk by the tests themselves."""

from __future__ import annotations

import os
import platform
import shutil
import sys

import stok  # noqa: F401  first, as the tools import it: before torch (stok.mkl_on_amd)

import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced-looking signal: harmonics of a wandering pitch under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * rate))
    t = np.arange(n) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    return (0.1 * voice * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


def write_corpus(root: str, durations, rate: int = 16000, fmt: str = "flac", prefix: str = "utt") -> str:
    """Write one file per duration and a sorted wav.scp; returns the wav.scp path."""
    os.makedirs(root, exist_ok=True)
    lines = []
    for i, d in enumerate(durations):
        path = os.path.join(root, f"{prefix}{i:03d}.{fmt}")
        sf.write(path, speechlike(d, rate, seed=i), rate)
        lines.append(f"{prefix}{i:03d} {path}")
    scp = os.path.join(root, "wav.scp")
    with open(scp, "w") as f:
        f.write("\n".join(sorted(lines)) + "\n")
    return scp


def write_data_dir(root, durations, rate: int = 16000):
    """A Kaldi data dir ``root/data`` holding a wav.scp of speech-like files under ``root/audio``;
    returns (data dir, {utterance id: waveform as stok reads it})."""
    from stok.data.audio import load_audio

    data = os.path.join(str(root), "data")
    os.makedirs(data, exist_ok=True)
    os.replace(write_corpus(os.path.join(str(root), "audio"), durations, rate), os.path.join(data, "wav.scp"))
    with open(os.path.join(data, "wav.scp")) as f:
        wavs = {k: load_audio(p, rate) for k, p in (line.split() for line in f)}
    return data, wavs


@pytest.fixture
def mixed_corpus(tmp_path):
    rng = np.random.default_rng(1)
    durations = rng.uniform(0.3, 4.0, size=24)
    return write_corpus(str(tmp_path / "audio"), durations)


def require_peer(module: str):
    """Import a public peer package used as a test oracle (s3tokenizer, speechtokenizer, onnxruntime,
    kaldi_native_io). They are test extras (``pip install -e .[test]``): under ``CI=true`` a missing peer
    fails the test, elsewhere it is skipped with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        msg = f"the test oracle {module!r} is not installed ({e}); run: pip install -e '.[test]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _cpuinfo(field):
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return ""


def mkl_shim_expected() -> bool:
    """Whether a process that imports stok first gets stok.mkl_on_amd's shim, read from /proc/cpuinfo here (not
    from the module under test): Linux x86-64, an AMD CPU with AVX-512 F/CD/BW/DQ/VL, a C compiler."""
    if sys.platform != "linux" or platform.machine() != "x86_64" or os.environ.get("STOK_MKL_ON_AMD") == "0":
        return False
    flags = set(_cpuinfo("flags").split())
    has_cc = any(shutil.which(c) for c in (os.environ.get("CC") or "cc", "cc", "gcc", "clang"))
    return (_cpuinfo("vendor_id") == "AuthenticAMD" and {"avx512f", "avx512cd", "avx512bw", "avx512dq",
                                                         "avx512vl"} <= flags and has_cc)

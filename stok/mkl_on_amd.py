"""MKL's AVX-512 kernels on AMD CPUs that have AVX-512: a one-function shim loaded before torch.

torch runs its fp32 matrix products (``torch.bmm``: the attention scores and outputs of stok's S3 and HuBERT
encoders; ``F.linear``/``addmm`` outside stok's oneDNN kernels: the reference kernels, torchaudio) in Intel MKL,
linked into ``libtorch_cpu``. MKL picks its kernels by CPU *vendor*: on an AMD CPU it mostly runs its AVX2 kernels
even where the CPU has AVX-512 (Zen 4, Zen 5). Measured on 2 Zen-5 cores (AMD EPYC, family 26): ``torch.bmm`` of
20 heads of [200, 64] x [64, 200] on one thread 110 GFLOP/s, 237 with MKL's AVX-512 kernels; ``torch.addmm`` of
[981, 1280] x [1280, 5120] on two threads 222, 465 with them (stok's oneDNN products: 465-490 either way).

MKL asks one exported function, ``mkl_serv_intel_cpu_true``, whether the CPU is Intel's. :func:`enable` builds a
shared library whose only content is that function returning 1 (one line of C, compiled once with the system C
compiler into ``$STOK_CACHE`` or ``~/.cache/stok``) and loads it into the process's global symbol scope *before
torch is imported*; the dynamic linker then resolves MKL's call to it, and MKL picks its kernels by the
instruction sets the CPU reports (cpuid), as on an Intel CPU with the same sets. Results change only by float32
summation order, as with another thread count.

It applies only when all of these hold, else :func:`status` says which did not: Linux on x86-64; an AMD CPU whose
flags include every AVX-512 subset MKL's AVX-512 kernels use (F, CD, BW, DQ, VL); torch not imported yet (stok's
package import calls :func:`enable`, so the ``stok-*`` tools and ``python -m stok...`` get it; a script that
imports torch first does not); a C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``); and ``STOK_MKL_ON_AMD`` not
set to ``0``. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

from stok.core.fileio import cache_dir
from stok.models.cpu_isa import cpu_vendor, proc_flags

#: the AVX-512 subsets MKL's AVX-512 (Skylake-server) kernels use
AVX512_SUBSETS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
ENV = "STOK_MKL_ON_AMD"

_status: Optional[str] = None
_handle = None


def status() -> str:
    """``on`` when the shim is loaded, else ``off: <reason>`` (``enable`` not called yet: ``off: not tried``)."""
    return _status or "off: not tried"


def _reason_not_to() -> Optional[str]:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return f"{ENV}={os.environ[ENV]}"
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not Linux x86-64 ({sys.platform} {platform.machine()})"
    vendor = cpu_vendor()
    if vendor != "AuthenticAMD":
        return f"CPU vendor {vendor or 'unknown'} (MKL already picks by instruction set there)"
    missing = AVX512_SUBSETS - proc_flags()
    if missing:
        return f"this AMD CPU lacks {', '.join(sorted(missing))} (MKL's AVX2 kernels are the right ones)"
    if "torch" in sys.modules:
        return "torch was imported before stok (MKL has already chosen its kernels)"
    return None


def _compiler() -> Optional[List[str]]:
    """The C compiler's command line: ``$CC`` (which may carry a wrapper or flags, e.g. ``ccache gcc``), else the
    first of cc, gcc, clang on PATH."""
    for command in (shlex.split(os.environ.get("CC", "")), ["cc"], ["gcc"], ["clang"]):
        if command and shutil.which(command[0]):
            return command
    return None


def _build() -> str:
    """The shim's path, compiled on first use (atomically: concurrent processes may race to build it)."""
    target = cache_dir("mkl_on_amd", f"mkl_intel_cpu_{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}.so")
    if os.path.exists(target):
        return target
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler ($CC, cc, gcc or clang) to build it")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
        src, out = os.path.join(tmp, "shim.c"), os.path.join(tmp, "shim.so")
        with open(src, "w") as f:
            f.write(SOURCE)
        done = subprocess.run([*cc, "-shared", "-fPIC", "-O2", "-o", out, src], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {done.stderr.strip()[-300:]}")
        os.replace(out, target)
    return target


def enable() -> str:
    """Load the shim if everything in the module docstring holds; returns :func:`status`. Never raises."""
    global _status, _handle
    if _status is not None:
        return _status
    reason = _reason_not_to()
    if reason is None:
        try:
            import ctypes

            _handle = ctypes.CDLL(_build(), mode=ctypes.RTLD_GLOBAL)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            reason = f"shim not built or loaded: {e}"
    _status = "on" if reason is None else f"off: {reason}"
    return _status

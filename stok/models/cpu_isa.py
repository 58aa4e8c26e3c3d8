"""What the CPU offers for matrix products: the instruction sets that decide which kernels run fastest.

``cpu_isa()`` reads the CPU's feature flags once (``/proc/cpuinfo`` on Linux; elsewhere only what torch reports)
and returns a :class:`CpuIsa`: AVX2, AVX-512 (F+BW+VL+DQ), AVX-512 BF16 (bfloat16 dot products), AMX (BF16 /
INT8 tile units), VNNI (int8 dot products, AVX-512 or AVX form). ``label`` is the short name the benches print
beside every figure, e.g. ``AVX-512 +BF16 +VNNI``.

Kernels choose by it: bfloat16 matrix products are only fast where the CPU has native bfloat16 dot products
(AVX-512 BF16 or AMX); elsewhere oneDNN emulates them, slower than fp32, so ``--dtype bf16`` on CPU needs
:attr:`CpuIsa.bf16`. ``STOK_CPU_ISA`` (comma-separated flag names, e.g. ``avx2,fma``) overrides the detection,
for tests of the dispatch on any machine.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import FrozenSet


@dataclass(frozen=True)
class CpuIsa:
    flags: FrozenSet[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= self.flags

    @property
    def avx512_bf16(self) -> bool:
        return self.avx512 and "avx512_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags and ("amx_bf16" in self.flags or "amx_int8" in self.flags)

    @property
    def vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    @property
    def bf16(self) -> bool:
        """Native bfloat16 dot products: bfloat16 matrix products beat fp32 here."""
        return self.avx512_bf16 or ("amx_bf16" in self.flags and "amx_tile" in self.flags)

    @property
    def label(self) -> str:
        if self.avx512:
            base = "AVX-512"
        elif self.avx2:
            base = "AVX2"
        elif platform.machine().lower() in ("arm64", "aarch64"):
            base = "ARM64"
        else:
            base = platform.machine() or "unknown"
        extras = [name for name, on in (("BF16", self.avx512_bf16), ("AMX", self.amx), ("VNNI", self.vnni)) if on]
        return " ".join([base] + [f"+{e}" for e in extras])


def _cpuinfo_field(*names: str) -> str:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``names`` ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def proc_flags() -> FrozenSet[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    return frozenset(_cpuinfo_field("flags", "Features").split())


def cpu_vendor() -> str:
    """``AuthenticAMD``, ``GenuineIntel``, ... (Linux; "" elsewhere)."""
    return _cpuinfo_field("vendor_id")


def _torch_flags() -> FrozenSet[str]:
    import torch

    cap = torch.backends.cpu.get_cpu_capability().lower()  # "avx512", "avx2", "default" ...
    if cap.startswith("avx512"):
        return frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
    if cap.startswith("avx2"):
        return frozenset({"avx2"})
    return frozenset()


@functools.lru_cache(maxsize=None)
def _detect(override: str) -> CpuIsa:
    if override:
        return CpuIsa(frozenset(f.strip().lower() for f in override.split(",") if f.strip()))
    return CpuIsa(proc_flags() or _torch_flags())


def cpu_isa() -> CpuIsa:
    """This CPU's :class:`CpuIsa` (``STOK_CPU_ISA`` overrides; see module docstring)."""
    return _detect(os.environ.get("STOK_CPU_ISA", ""))

"""stok.mkl_on_amd: the shim that lets MKL use its AVX-512 kernels on AMD CPUs, in fresh Python processes.

What a process gets depends on the CPU; each case computes what it should get from /proc/cpuinfo itself (not
from the module) and checks the process: the status, whether the dynamic linker resolves MKL's vendor check to
the shim, and that torch's batched products stay correct (against float64) either way.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from stok import mkl_on_amd

from tests.conftest import PYTHON, REPO, mkl_shim_expected

PROBE = r"""
import json, sys
if sys.argv[1] == "torch-first":
    import torch
import stok
import ctypes, torch
from stok import mkl_on_amd
torch.manual_seed(0)
q, k = torch.randn(20, 200, 64), torch.randn(20, 64, 200)
err = (torch.bmm(q, k).double() - torch.bmm(q.double(), k.double())).abs().max().item()
shim = [line.split()[-1] for line in open("/proc/self/maps") if "mkl_on_amd" in line]
# which definition of MKL's vendor check the dynamic linker hands out (None when no library defines it)
try:
    found = ctypes.cast(ctypes.CDLL(None).mkl_serv_intel_cpu_true, ctypes.c_void_p).value
except AttributeError:
    found = None
ours = (ctypes.cast(mkl_on_amd._handle.mkl_serv_intel_cpu_true, ctypes.c_void_p).value
        if mkl_on_amd._handle is not None else None)
print(json.dumps({"status": mkl_on_amd.status(), "err": err, "shim_mapped": bool(shim),
                  "resolves_to_shim": found is not None and found == ours}))
"""


def _probe(tmp_path, order: str, **env):
    full = {k: v for k, v in os.environ.items() if k != "STOK_MKL_ON_AMD"}
    full.update(STOK_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO, **env)
    done = subprocess.run([PYTHON, "-c", PROBE, order], env=full, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc (Linux)")
def test_stok_first_loads_the_shim_where_the_cpu_has_what_it_needs(tmp_path):
    out = _probe(tmp_path, "stok-first")
    assert out["err"] < 1e-3  # MKL's products, whichever kernels ran
    if mkl_shim_expected():
        assert out["status"] == "on"
        assert out["shim_mapped"] and out["resolves_to_shim"]
        assert len(list((tmp_path / "cache" / "mkl_on_amd").glob("*.so"))) == 1
        again = _probe(tmp_path, "stok-first")  # the cached shim is reused
        assert again["status"] == "on" and again["resolves_to_shim"]
    else:
        assert out["status"].startswith("off: ") and not out["shim_mapped"] and not out["resolves_to_shim"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc (Linux)")
def test_torch_first_or_switched_off_leaves_mkl_alone(tmp_path):
    late = _probe(tmp_path, "torch-first")
    off = _probe(tmp_path, "stok-first", STOK_MKL_ON_AMD="0")
    assert off["status"] == "off: STOK_MKL_ON_AMD=0"
    for out in (late, off):
        assert not out["shim_mapped"] and not out["resolves_to_shim"] and out["err"] < 1e-3
    if mkl_shim_expected():
        assert late["status"] == "off: torch was imported before stok (MKL has already chosen its kernels)"


def test_reasons_name_what_is_missing(monkeypatch):
    monkeypatch.delenv("STOK_MKL_ON_AMD", raising=False)
    monkeypatch.setattr(mkl_on_amd.sys, "platform", "linux")
    monkeypatch.setattr(mkl_on_amd.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(mkl_on_amd, "cpu_vendor", lambda: "GenuineIntel")
    assert "GenuineIntel" in mkl_on_amd._reason_not_to()
    monkeypatch.setattr(mkl_on_amd, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(mkl_on_amd, "proc_flags", lambda: frozenset({"avx2", "fma"}))  # a Zen 3
    reason = mkl_on_amd._reason_not_to()
    assert "lacks avx512bw, avx512cd, avx512dq, avx512f, avx512vl" in reason
    monkeypatch.setattr(mkl_on_amd, "proc_flags", lambda: mkl_on_amd.AVX512_SUBSETS | {"avx2"})
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", "torch"))
    assert "torch was imported" in mkl_on_amd._reason_not_to()
    monkeypatch.delitem(sys.modules, "torch")
    assert mkl_on_amd._reason_not_to() is None  # everything holds: enable() would build and load the shim
    monkeypatch.setenv("STOK_MKL_ON_AMD", "off")
    assert mkl_on_amd._reason_not_to() == "STOK_MKL_ON_AMD=off"


def test_the_built_shim_answers_intel_and_a_missing_compiler_is_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("STOK_CACHE", str(tmp_path))
    if mkl_on_amd._compiler() is not None:
        lib = ctypes.CDLL(mkl_on_amd._build(), mode=ctypes.RTLD_LOCAL)
        assert lib.mkl_serv_intel_cpu_true() == 1
        assert mkl_on_amd._build().startswith(str(tmp_path / "mkl_on_amd"))
    monkeypatch.setenv("STOK_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(mkl_on_amd, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        mkl_on_amd._build()


def test_cc_with_a_wrapper_is_one_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("STOK_CACHE", str(tmp_path))
    wrapper = tmp_path / "wrap"
    wrapper.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nexec "$@"\n')
    wrapper.chmod(0o755)
    compiler = mkl_on_amd._compiler()
    if compiler is None:
        pytest.skip("no C compiler on this machine")  # the shim's 'no compiler' reason is tested above
    monkeypatch.setenv("CC", f"{wrapper} {compiler[0]}")
    assert mkl_on_amd._compiler() == [str(wrapper), compiler[0]]
    lib = ctypes.CDLL(mkl_on_amd._build(), mode=ctypes.RTLD_LOCAL)
    assert lib.mkl_serv_intel_cpu_true() == 1
    assert (tmp_path / "args").read_text().split()[:2] == [compiler[0], "-shared"]

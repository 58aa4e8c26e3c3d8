"""Helpers for the k-means tests: clustered feature scps written with kaldiio, brute-force references."""

from __future__ import annotations

import os
from typing import Dict, Tuple

import kaldiio
import numpy as np


def clustered(n: int, dim: int, k: int, seed: int = 0, spread: float = 8.0, noise: float = 1.0):
    """(frames float32 [n, dim], true labels, true centres): well separated Gaussian clusters."""
    rng = np.random.default_rng(seed)
    centres = (spread * rng.standard_normal((k, dim))).astype(np.float32)
    labels = rng.integers(0, k, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x.astype(np.float32), labels, centres


def write_feats(root: str, mats: Dict[str, np.ndarray], name: str = "feats", compression_method=None) -> str:
    """A Kaldi float-matrix ark/scp (as stage 1 writes it); returns the scp path."""
    os.makedirs(root, exist_ok=True)
    scp = os.path.join(root, f"{name}.scp")
    with kaldiio.WriteHelper(f"ark,scp:{os.path.join(root, name + '.ark')},{scp}",
                             compression_method=compression_method) as w:
        for key in sorted(mats):
            w(key, mats[key])
    return scp


def split_utts(x: np.ndarray, seed: int = 0, lo: int = 20, hi: int = 120, prefix: str = "utt") -> Dict[str, np.ndarray]:
    """Cut frames into utterances of random lengths."""
    rng = np.random.default_rng(seed)
    out, pos, i = {}, 0, 0
    while pos < len(x):
        t = int(rng.integers(lo, hi))
        out[f"{prefix}{i:04d}"] = x[pos:pos + t]
        pos += t
        i += 1
    return out


def clustered_scp(root: str, n: int = 6000, dim: int = 16, k: int = 10, seed: int = 0,
                  **kw) -> Tuple[str, np.ndarray, np.ndarray]:
    x, labels, centres = clustered(n, dim, k, seed, **kw)
    return write_feats(root, split_utts(x, seed)), x, centres


def brute_force_labels(x: np.ndarray, c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centroid in float64 by explicit differences: (labels, sorted distances [N, 2])."""
    d = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1), np.sort(d, 1)[:, :2]


def lloyd_reference(x: np.ndarray, init: np.ndarray, iters: int) -> Tuple[np.ndarray, np.ndarray]:
    """Plain float64 Lloyd from ``init`` for ``iters`` passes: (centroids, labels of the last pass)."""
    c = init.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    for _ in range(iters):
        lab, _ = brute_force_labels(x64, c)
        for j in range(len(c)):
            sel = lab == j
            if sel.any():
                c[j] = x64[sel].mean(0)
    return c, lab


def inertia64(x: np.ndarray, c: np.ndarray) -> float:
    _, d = brute_force_labels(x, c)
    return float(d[:, 0].mean())


def write_large_feats(root: str, n: int, dim: int, k: int, seed: int = 0, utt_frames: int = 2000,
                      spread: float = 4.0) -> Tuple[str, np.ndarray]:
    """A float32 feature ark/scp of ``n`` frames around ``k`` centres, written utterance by utterance (the test
    process never holds more than one utterance); returns (scp, centres)."""
    rng = np.random.default_rng(seed)
    centres = (spread * rng.standard_normal((k, dim))).astype(np.float32)
    os.makedirs(root, exist_ok=True)
    scp = os.path.join(root, "feats.scp")
    with kaldiio.WriteHelper(f"ark,scp:{os.path.join(root, 'feats.ark')},{scp}") as w:
        for i, s in enumerate(range(0, n, utt_frames)):
            t = min(utt_frames, n - s)
            x = rng.standard_normal((t, dim), dtype=np.float32)
            x += centres[rng.integers(0, k, t)]
            w(f"utt{i:06d}", x)
    return scp, centres


# A child's peak RSS (ru_maxrss from wait4) includes what its parent held when it was forked (the kernel counts
# the parent's pages until exec), so a large test process would inflate it: a small launcher starts the command
# and reports the command's own peak.
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "open(sys.argv[1], 'w').write(str(usage.ru_maxrss * 1024))\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_with_peak_rss(cmd, report: str, **kw):
    """Run ``cmd`` (subprocess.run keywords in ``kw``); returns (CompletedProcess, its peak RSS in bytes)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _LAUNCHER, report, *cmd], **kw)
    with open(report) as f:
        return r, int(f.read())

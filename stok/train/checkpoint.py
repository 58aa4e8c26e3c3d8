"""Training checkpoints: full state, written atomically, keep the last N and the best by dev mel.

A checkpoint (``<exp_dir>/checkpoints/ckpt_<step>.pt``) holds everything a resumed run needs to continue
exactly where the saved one was: generator (with any k-means head), discriminators, both optimisers and
schedulers, AMP grad scalers, weight EMA, step, epoch and position in the epoch, the dev mel history,
the NaN-skip counter, and the RNG states (python, numpy, torch, CUDA) of **every** rank.
All values are tensors and plain Python types, so it loads with ``torch.load(weights_only=True)``.

Writing: ``torch.save`` to a temporary file in the same directory, ``fsync``, ``os.replace`` onto the final name,
then the index (``index.json``: one entry per checkpoint: step, file, dev mel) is rewritten the same way.
A run killed at any moment leaves either the previous state or the new one, never a torn file; leftover
temporary files are ignored and cleaned up.

Retention: the ``keep_last`` newest checkpoints and the ``keep_best`` ones with the lowest dev mel are kept;
others are deleted after each save.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from stok.core.fileio import atomic_torch_save, atomic_write_text

log = logging.getLogger("stok.train")

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def get_rng_state() -> Dict[str, Any]:
    """This process's RNG states as tensors and plain types (``weights_only``-loadable)."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, torch.tensor(state, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    version, st, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in st.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d: not restored",
                        len(cuda), torch.cuda.device_count())


class CheckpointManager:
    """Saves, indexes, prunes and finds checkpoints in one directory."""

    def __init__(self, directory: str, keep_last: int = 6, keep_best: int = 1):
        self.dir = directory
        self.keep_last = max(1, keep_last)
        self.keep_best = max(0, keep_best)
        os.makedirs(directory, exist_ok=True)
        for tmp in glob.glob(os.path.join(directory, "*.tmp*")):  # left by a killed writer
            try:
                os.remove(tmp)
            except OSError:
                pass

    @property
    def index_path(self) -> str:
        return os.path.join(self.dir, "index.json")

    def entries(self) -> List[Dict[str, Any]]:
        """Checkpoints present on disk, oldest first, with their dev mel when known."""
        known: Dict[int, Dict[str, Any]] = {}
        if os.path.exists(self.index_path):
            try:
                with open(self.index_path) as f:
                    for e in json.load(f):
                        known[int(e["step"])] = e
            except (OSError, ValueError, KeyError):
                log.warning("unreadable %s: listing the checkpoint files instead", self.index_path)
        out = []
        for name in os.listdir(self.dir):
            m = _CKPT_RE.match(name)
            if m:
                step = int(m.group(1))
                out.append({"step": step, "file": name, "dev_mel": known.get(step, {}).get("dev_mel")})
        return sorted(out, key=lambda e: e["step"])

    def path(self, step: int) -> str:
        return os.path.join(self.dir, f"ckpt_{step:08d}.pt")

    def save(self, state: Dict[str, Any], step: int, dev_mel: Optional[float] = None) -> str:
        path = self.path(step)
        atomic_torch_save(state, path)
        entries = [e for e in self.entries() if e["step"] != step]
        entries.append({"step": step, "file": os.path.basename(path), "dev_mel": dev_mel})
        entries.sort(key=lambda e: e["step"])
        keep = self._keep(entries)
        for e in entries:
            if e["step"] not in keep:
                try:
                    os.remove(os.path.join(self.dir, e["file"]))
                except OSError:
                    pass
        entries = [e for e in entries if e["step"] in keep]
        atomic_write_text(json.dumps(entries, indent=1) + "\n", self.index_path)
        return path

    def _keep(self, entries: List[Dict[str, Any]]) -> set:
        keep = {e["step"] for e in entries[-self.keep_last:]}
        scored = sorted((e for e in entries if e.get("dev_mel") is not None), key=lambda e: (e["dev_mel"], -e["step"]))
        keep |= {e["step"] for e in scored[: self.keep_best]}
        return keep

    def latest(self) -> Optional[str]:
        entries = self.entries()
        return os.path.join(self.dir, entries[-1]["file"]) if entries else None

    def best(self) -> Optional[Dict[str, Any]]:
        scored = [e for e in self.entries() if e.get("dev_mel") is not None]
        if not scored:
            return None
        e = min(scored, key=lambda e: (e["dev_mel"], -e["step"]))
        return {**e, "path": os.path.join(self.dir, e["file"])}


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)

"""The run's state and its checkpoints: counters, the full state dict, save and resume.

:class:`TrainState` holds what a run counts (step, data position, best dev mel, dev history, skipped steps, audio
seen). :class:`Checkpointer` turns the run's parts (generator, discriminators, optimisers, EMA, state, the RNG of
every rank) into the checkpoint dict of :mod:`stok.train.checkpoint` and back, so a resumed run continues step
for step. Every rank takes part in a save (the RNG states are gathered); rank 0 writes. On resume every rank
must see the same newest checkpoint (``--exp_dir`` on a filesystem every node shares).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from stok.core.distributed import DistInfo
from stok.core.errors import UserError
from stok.train import ranks
from stok.train.checkpoint import CheckpointManager, get_rng_state, load_checkpoint, set_rng_state
from stok.train.ema import WeightEMA
from stok.train.optim import Optimisers

log = logging.getLogger("stok.train")

FORMAT = "stok-speechtokenizer-train-1"


@dataclass
class TrainState:
    step: int = 0
    position: Tuple[int, int] = (0, 0)  # (epoch, next batch index in the epoch)
    best_dev_mel: float = float("inf")
    dev_history: List[Dict[str, float]] = field(default_factory=list)
    nan_skips: int = 0  # steps skipped for a non-finite loss or gradient
    amp_overflows: int = 0  # fp16 steps skipped for a scaled-gradient overflow (routine, not counted as bad data)
    audio_seconds: float = 0.0  # training audio seen, all ranks

    def advance(self, epoch: int, index: int, last_in_epoch: bool, seconds: float) -> None:
        """One step done on the batch at ``(epoch, index)``; ``seconds`` of audio (all ranks)."""
        self.step += 1
        self.position = (epoch + 1, 0) if last_in_epoch else (epoch, index + 1)
        self.audio_seconds += seconds

    def add_dev(self, result: Dict[str, float]) -> float:
        """Record a validation result at the current step; its dev mel error."""
        mel = result["dev/mel_error"]
        self.dev_history.append({"step": self.step, **result})
        self.best_dev_mel = min(self.best_dev_mel, mel)
        return mel


class Checkpointer:
    """Full-state checkpoints of one run in ``<exp_dir>/checkpoints`` (keep-last-N and best-by-dev-mel)."""

    def __init__(self, exp_dir: str, keep_last: int, keep_best: int, info: DistInfo, config: Dict[str, Any],
                 gen: nn.Module, disc: nn.Module, optim: Optimisers, ema: Optional[WeightEMA], state: TrainState):
        self.manager = CheckpointManager(os.path.join(exp_dir, "checkpoints"), keep_last, keep_best)
        self.info, self.config = info, config
        self.gen, self.disc, self.optim, self.ema, self.state = gen, disc, optim, ema, state

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint dict; every rank must call it (the RNG states of all ranks are gathered)."""
        s = self.state
        return {
            "format": FORMAT,
            "step": s.step, "epoch": s.position[0], "batch_in_epoch": s.position[1],
            "generator": ranks.unwrap(self.gen).state_dict(),
            "discriminators": ranks.unwrap(self.disc).state_dict(),
            **self.optim.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": ranks.gather(self.info, get_rng_state()), "world": self.info.world,
            "best_dev_mel": s.best_dev_mel, "dev_history": s.dev_history,
            "nan_skips": s.nan_skips, "audio_seconds": s.audio_seconds,
            "config": self.config,
        }

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        gen = ranks.unwrap(self.gen)
        gen.load_state_dict(st["generator"])
        ranks.unwrap(self.disc).load_state_dict(st["discriminators"])
        self.optim.load_state_dict(st)
        if self.ema is not None:
            self.ema.load_state_dict(st.get("ema"), gen.model)
        s = self.state
        s.step = int(st["step"])
        s.position = (int(st["epoch"]), int(st["batch_in_epoch"]))
        s.best_dev_mel = float(st["best_dev_mel"])
        s.dev_history = list(st.get("dev_history", []))
        s.nan_skips = int(st["nan_skips"])
        s.audio_seconds = float(st.get("audio_seconds", 0.0))
        rngs = st["rng"]
        if len(rngs) == self.info.world:
            set_rng_state(rngs[self.info.rank])
        else:
            log.warning("checkpoint was written by %d processes, this run has %d: RNG states not restored",
                        len(rngs), self.info.world)

    def resume(self) -> bool:
        """Load the newest checkpoint (False when there is none: a fresh start)."""
        path = self.manager.latest()
        seen = ranks.gather(self.info, os.path.basename(path) if path else None)
        if len(set(seen)) > 1:
            raise UserError(f"--resume: the ranks see different newest checkpoints in {self.manager.dir} "
                            f"({', '.join(f'rank {r}: {p}' for r, p in enumerate(seen))}); put --exp_dir on a "
                            "filesystem every node shares")
        if path is None:
            if self.info.is_main:
                log.info("--resume: no checkpoint in %s, starting from scratch", self.manager.dir)
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.info.device))
        if self.info.is_main:
            log.info("resumed from %s: step %d, epoch %d, batch %d", path, self.state.step, *self.state.position)
        return True

    def save(self, dev_mel: Optional[float] = None) -> Optional[str]:
        """Save the current state (every rank calls this; rank 0 writes); the file on rank 0."""
        state = self.state_dict()
        path = None
        if self.info.is_main:
            path = self.manager.save(state, self.state.step, dev_mel)
        ranks.barrier(self.info)
        return path

"""The trainer's optimisation: both optimisers, their learning-rate schedules, autocast and the AMP grad scalers.

Generator and discriminators each get Adam (released) or AdamW with ``optim.lr`` (``optim.disc_lr``), and a
``LambdaLR`` schedule: linear warm-up over ``warmup_steps``, then cosine down to ``min_lr_ratio`` x lr over the
run's total steps (or constant). Both schedules step once per training step, skipped steps included, so the
learning rate follows the step counter. Autocast (bf16/fp16) is for GPUs only; fp16 uses grad scalers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from typing import Any, Dict, Iterable

import torch

from stok.train.config import OptimConfig

log = logging.getLogger("stok.train")


def lr_lambda(step: int, total: int, warmup: int, kind: str, floor: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LRLambda:
    """Picklable schedule function (LambdaLR keeps only its state, but keep it clean)."""

    def __init__(self, total, warmup, kind, floor):
        self.args = (total, warmup, kind, floor)

    def __call__(self, step):
        return lr_lambda(step, *self.args)


class Optimisers:
    """``opt_g``/``opt_d``, ``sched_g``/``sched_d``, ``scaler_g``/``scaler_d`` and the autocast dtype."""

    def __init__(self, cfg: OptimConfig, gen_params: Iterable[torch.nn.Parameter],
                 disc_params: Iterable[torch.nn.Parameter], total_steps: int, device: torch.device):
        self.cfg = cfg
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt_g = opt_cls(gen_params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.opt_d = opt_cls(disc_params, lr=cfg.disc_lr or cfg.lr, betas=tuple(cfg.betas),
                             weight_decay=cfg.weight_decay)
        sched_fn = _LRLambda(total_steps, cfg.warmup_steps, cfg.scheduler, cfg.min_lr_ratio)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, sched_fn)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, sched_fn)
        self.device = device
        self.amp_dtype = None
        if cfg.amp != "none":
            if device.type != "cuda":
                log.warning("optim.amp=%s is for GPUs; training in fp32 on %s", cfg.amp, device)
            else:
                self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        use_scaler = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def clip(self, params: Iterable[torch.nn.Parameter], scaler: torch.amp.GradScaler, opt) -> torch.Tensor:
        """Unscale the gradients and clip them to ``grad_clip`` (no limit when unset); the global grad norm."""
        scaler.unscale_(opt)
        max_norm = self.cfg.grad_clip or float("inf")
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)

    def last_lrs(self):
        return self.sched_g.get_last_lr()[0], self.sched_d.get_last_lr()[0]

    def step_schedules(self) -> None:
        self.sched_g.step()
        with warnings.catch_warnings():  # before disc.start_step the discriminators' optimiser has not stepped
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.sched_d.step()

    _PARTS = ("optim_g", "optim_d", "sched_g", "sched_d", "scaler_g", "scaler_d")

    def _objects(self):
        return (self.opt_g, self.opt_d, self.sched_g, self.sched_d, self.scaler_g, self.scaler_d)

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint entries ``optim_g``, ``optim_d``, ``sched_g``, ``sched_d``, ``scaler_g``, ``scaler_d``."""
        return {name: obj.state_dict() for name, obj in zip(self._PARTS, self._objects())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name, obj in zip(self._PARTS, self._objects()):
            obj.load_state_dict(state[name])

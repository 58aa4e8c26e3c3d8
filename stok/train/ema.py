"""Weight EMA of the generator (``optim.ema_decay``): a frozen copy whose parameters follow the trained ones.

After every generator update: ``ema = decay * ema + (1 - decay) * live`` for the parameters; buffers (codebooks,
their EMA statistics) are copied as they are. Validation and export use the EMA weights when it is on.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import nn


class WeightEMA:
    def __init__(self, live: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(live).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        ema_p = list(self.model.parameters())
        live_p = [p.detach() for p in live.parameters()]
        torch._foreach_lerp_(ema_p, live_p, 1.0 - self.decay)
        for eb, lb in zip(self.model.buffers(), live.buffers()):
            eb.copy_(lb)

    def state_dict(self) -> Dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: Optional[Dict[str, Any]], live: nn.Module) -> None:
        """The saved EMA weights; a checkpoint written without EMA starts it from the ``live`` weights."""
        self.model.load_state_dict(state if state is not None else live.state_dict())

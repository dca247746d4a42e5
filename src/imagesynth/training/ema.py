"""Exponential moving average of weights, with warmup."""

from __future__ import annotations

import copy

import torch


class EMA:
    """EMA of a module's parameters; decay warms up as min(decay, (1 + n) / (10 + n)).

    The warmup (as in diffusers' EMAModel with `use_ema_warmup=False`) keeps early averages
    from being dominated by the random initialisation in short CPU runs.
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(
            ema_p, [s.to(e.dtype) for s, e in zip(src_p, ema_p, strict=True)], 1 - d
        )
        for eb, b in zip(self.module.buffers(), module.buffers(), strict=True):
            eb.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates

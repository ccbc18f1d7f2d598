"""Exponential moving averages of model weights, several decays at once (Table 8: EMA decays)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``{decay: averaged copy}`` of a model; ``update()`` after each optimizer step.

    ``p_ema <- d p_ema + (1 - d) p``, with an optional warm-up over ``warmup_steps`` steps,
    ``d_t = min(d, 0.5 (d / 0.5)^(t / warmup_steps))`` — Drift-RAE's Table 8 schedule
    (``warmup_steps=1000``, d = 0.9995); off (0) by default, as in the drifting paper.
    Buffers are copied.
    """

    def __init__(self, model: nn.Module, decays=(0.999,), *, warmup_steps: int = 0):
        if not decays or any(not 0.0 <= d < 1.0 for d in decays):
            raise ValueError(f"decays must be numbers in [0, 1), got {decays}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.decays = tuple(float(d) for d in decays)
        self.warmup_steps = int(warmup_steps)
        self.step = 0
        self.models = {d: copy.deepcopy(model).eval().requires_grad_(False) for d in self.decays}

    def decay_at(self, d: float) -> float:
        if self.warmup_steps == 0 or d <= 0.5:
            return d
        return min(d, 0.5 * (d / 0.5) ** (self.step / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        for d, m in self.models.items():
            dt = self.decay_at(d)
            ema_params = list(m.parameters())
            torch._foreach_lerp_(ema_params, params, 1.0 - dt)
            for b_ema, b in zip(m.buffers(), model.buffers()):
                b_ema.copy_(b)
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "models": {str(d): m.state_dict() for d, m in self.models.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for d, m in self.models.items():
            m.load_state_dict(state["models"][str(d)])

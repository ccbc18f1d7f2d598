"""The straight noise-data path shared by flow matching (:mod:`drifting.recipes.flow`) and MeanFlow
(:mod:`drifting.recipes.meanflow`); t = 0 is data, t = 1 noise."""

from __future__ import annotations

import torch


def flow_path(y: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drift-RAE Eq. 1 and the regression target of Eq. 4: ``y_t = (1 - t) y + t eps`` and
    ``v* = d y_t / dt = eps - y``. y, eps ``[B, C, H, W]``; t ``[B]``. Returns both ``[B, C, H, W]``."""
    tt = t.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))  # [B, 1, 1, 1]
    return (1 - tt) * y + tt * eps, eps - y

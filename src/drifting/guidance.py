"""Classifier-free guidance for drifting models (paper §3.5 and A.7).

Guidance is a training-time behaviour: for a class c, ``N_unc`` real samples of random classes
join the negatives with kernel weight ``w``, so the negatives follow

    q~(.|c) = ((N_neg - 1) q_theta(.|c) + N_unc w p_data(.|0)) / ((N_neg - 1) + N_unc w)      (A.7)

and matching ``q~ = p_data(.|c)`` makes ``q_theta = alpha p(.|c) - (alpha - 1) p(.|0)`` (Eq. 16) with

    alpha = ((N_neg - 1) + N_unc w) / (N_neg - 1),   i.e.   w = (alpha - 1)(N_neg - 1) / N_unc.

``N_neg - 1`` counts the generated negatives a sample sees once its own pair is masked.
The generator is conditioned on alpha, drawn per class from ``p(alpha) ~ alpha^-k`` on
``[alpha_min, alpha_max]`` (Table 8), so alpha can be chosen freely at inference (1 NFE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidanceConfig:
    """How alpha is drawn during training and how many unconditional negatives are used."""

    alpha_min: float = 1.0
    alpha_max: float = 4.0
    k: float = 3.0  # p(alpha) ~ alpha^-k
    no_cfg_prob: float = 0.0  # probability of alpha = 1 (Table 8, L/2: 0.5)
    n_uncond: int = 16  # N_unc unconditional real samples per class

    def validate(self) -> None:
        if not (1.0 <= self.alpha_min <= self.alpha_max and math.isfinite(self.alpha_max)):
            raise ValueError("need 1 <= alpha_min <= alpha_max < inf; "
                             f"got {self.alpha_min}, {self.alpha_max}")
        if not math.isfinite(self.k):
            raise ValueError(f"k must be a finite number, got {self.k}")
        if not 0.0 <= self.no_cfg_prob <= 1.0:
            raise ValueError(f"no_cfg_prob must be in [0, 1], got {self.no_cfg_prob}")
        if self.n_uncond < 0:
            raise ValueError(f"n_uncond must be >= 0, got {self.n_uncond}")


# Table 8's CFG settings (train-time alpha distribution and N_unc).
GUIDANCE_PRESETS = {
    "ablation": GuidanceConfig(k=3.0, n_uncond=16),
    "B/2": GuidanceConfig(k=5.0, n_uncond=32),
    "L/2": GuidanceConfig(k=3.0, no_cfg_prob=0.5, n_uncond=32),
    "B/16": GuidanceConfig(k=5.0, n_uncond=32),
    "L/16": GuidanceConfig(k=5.0, n_uncond=32),
    "none": GuidanceConfig(alpha_max=1.0, n_uncond=0),
}


def sample_alpha(n: int, config: GuidanceConfig = GuidanceConfig(), *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` CFG scales ``[n]`` from ``p(alpha) ~ alpha^-k`` on ``[alpha_min, alpha_max]`` by
    inverse CDF (log-uniform for k = 1), each replaced by 1 with probability ``no_cfg_prob``."""
    config.validate()
    a, b, k = config.alpha_min, config.alpha_max, config.k
    u = torch.rand(n, generator=generator, dtype=torch.float64)  # [n]
    if a == b:
        alpha = torch.full((n,), a, dtype=torch.float64)
    elif abs(k - 1.0) < 1e-12:
        alpha = a * (b / a) ** u  # F(alpha) = log(alpha / a) / log(b / a)
    else:
        e = 1.0 - k  # F(alpha) = (alpha^e - a^e) / (b^e - a^e)
        alpha = (a**e + u * (b**e - a**e)) ** (1.0 / e)
    if config.no_cfg_prob > 0:
        off = torch.rand(n, generator=generator, dtype=torch.float64) < config.no_cfg_prob
        alpha = torch.where(off, torch.ones_like(alpha), alpha)
    return alpha.float()


def guidance_weight(alpha: torch.Tensor | float, n_gen: int, n_uncond: int) -> torch.Tensor:
    """The kernel weight ``w = (alpha - 1)(N_neg - 1) / N_unc`` of the unconditional negatives (A.7)."""
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    if (alpha < 1).any() or not torch.isfinite(alpha).all():
        raise ValueError(f"alpha must be finite and >= 1, got {alpha}")
    if n_gen < 2:
        raise ValueError("n_gen must be >= 2 (the generated negatives besides the sample "
                         f"itself), got {n_gen}")
    if n_uncond < 1:
        raise ValueError(f"n_uncond must be >= 1 to apply CFG, got {n_uncond}")
    return (alpha - 1.0) * (n_gen - 1) / n_uncond


def alpha_from_weight(w: torch.Tensor | float, n_gen: int, n_uncond: int) -> torch.Tensor:
    """Inverse of :func:`guidance_weight`: ``alpha = ((N_neg - 1) + N_unc w) / (N_neg - 1)``."""
    w = torch.as_tensor(w, dtype=torch.float32)
    return ((n_gen - 1) + n_uncond * w) / (n_gen - 1)


def uncond_neg_weights(alpha: torch.Tensor, n_gen: int, n_uncond: int) -> torch.Tensor:
    """Per-class weights ``[Nc, N_unc]`` for the unconditional negatives, for
    ``drifting_loss(neg_weights=...)``."""
    w = guidance_weight(alpha, n_gen, n_uncond)  # [Nc]
    return w[:, None].expand(-1, n_uncond).contiguous()

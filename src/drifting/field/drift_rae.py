"""The Drift-RAE field (Zhang et al. 2026): per-token, a single softmax per sum, and Eq. 12's
input perturbation noise."""

from __future__ import annotations

import math

import torch

from .common import MASKED_LOGIT, _prepare, pairwise_distances


def laplace_norm_noise(shape, *, generator: torch.Generator | None = None, dtype=torch.float32,
                       device=None) -> torch.Tensor:
    """Drift-RAE Eq. 12's ``n``: vectors along the last axis with a uniformly random direction and a
    norm drawn from a standard Laplace distribution. A norm is >= 0 and a Laplace draw's sign only
    flips a direction that is uniform anyway, so the norm is ``|Laplace(0, 1)|``, i.e. Exp(1).
    ``shape [..., D]``; the perturbed sample is ``G + tau * n`` (tau: the field's temperature)."""
    shape = tuple(shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"shape must end with a feature dimension D >= 1, got {shape}")
    d = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # isotropic -> uniform direction
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    r = torch.empty(shape[:-1] + (1,), dtype=dtype, device=device).exponential_(1.0, generator=generator)
    return d * r  # [..., D]


def drift_rae_field(
    x: torch.Tensor,
    y_pos: torch.Tensor,
    y_neg: torch.Tensor,
    T: float,
    *,
    exponent: float = 1.0,
    distance_factor: bool = False,
    mask_self: bool = True,
    normalize_output: bool = True,
    eps: float = 1e-12,
) -> torch.Tensor:
    """The Drift-RAE field (Zhang et al. 2026, Eq. 5 / Eq. 11, Prop. 1).

    A single softmax over samples for each of the two sums (no x-axis softmax, no joint
    normalization, no cross-weighting)::

        V(x) = sum_i a+_i(x) g(|y+_i - x|) (y+_i - x) - sum_{k != self} a-_k(x) g(|y-_k - x|) (y-_k - x)
        a+_i = softmax_i(-|y+_i - x|^l / T),   a-_k = softmax_k(-|y-_k - x|^l / T)

    with ``l = exponent``. Eq. (11) is ``l = 1`` and ``g = 1``. With ``distance_factor=True``,
    ``g(r) = r^(l-2)`` as in Prop. 1 (Eq. 38), which makes ``(l / T) V`` the gradient of the
    logit of the optimal discriminator between the kernel-smoothed empirical densities (Eq. 40);
    at ``l = 2`` the factor is 1 (the Gaussian/RBF field).

    With ``normalize_output`` (Eq. 10) each row is returned as ``V / ||V||``.
    Self pairs (the first N negatives) are excluded with ``mask_self``.
    """
    xb, pb, nb, batched, T = _prepare(x, y_pos, y_neg, T)
    B, N, _ = xb.shape
    M = nb.shape[1]
    if mask_self and (M < N or M < 2):
        raise ValueError(
            f"mask_self=True needs y_neg to start with the N={N} samples of x and to hold at least one "
            f"negative besides each sample itself (M >= max(N, 2)); got M={M}"
        )
    if not (math.isfinite(float(exponent)) and exponent > 0):
        raise ValueError(f"exponent must be a positive number (the kernel exponent l), got {exponent}")
    with torch.no_grad():
        dist_pos = pairwise_distances(xb, pb)  # [B, N, P]
        dist_neg = pairwise_distances(xb, nb)  # [B, N, M]
        dtype = dist_pos.dtype
        logit_pos = -dist_pos.pow(exponent) / T
        logit_neg = -dist_neg.pow(exponent) / T
        if mask_self:
            eye = torch.eye(N, dtype=torch.bool, device=xb.device)
            logit_neg = logit_neg.clone()
            logit_neg[:, :, :N] = logit_neg[:, :, :N].masked_fill(eye, MASKED_LOGIT)
        a_pos = logit_pos.softmax(dim=-1)  # [B, N, P]
        a_neg = logit_neg.softmax(dim=-1)  # [B, N, M]
        if distance_factor and exponent != 2:
            a_pos = a_pos * dist_pos.clamp_min(eps).pow(exponent - 2)
            a_neg = a_neg * dist_neg.clamp_min(eps).pow(exponent - 2)
            if mask_self:
                a_neg[:, :, :N] = a_neg[:, :, :N].masked_fill(eye, 0.0)
        xd = xb.to(dtype)
        v_pos = a_pos @ pb.to(dtype) - a_pos.sum(-1, keepdim=True) * xd  # [B, N, D]
        v_neg = a_neg @ nb.to(dtype) - a_neg.sum(-1, keepdim=True) * xd  # [B, N, D]
        V = v_pos - v_neg
        if normalize_output:
            V = V / V.norm(dim=-1, keepdim=True).clamp_min(eps)
    return V if batched else V.squeeze(0)

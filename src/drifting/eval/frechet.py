"""The Fréchet distance between two feature sets (the formula of FID, Heusel et al. 2017)."""

from __future__ import annotations

import torch


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` between two feature sets ``[n, F]``.

    Uses symmetric eigendecompositions in float64 (``tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)``).
    """
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError("f1 and f2 must be [n, F] with the same F; "
                         f"got {tuple(f1.shape)}, {tuple(f2.shape)}")
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ValueError("f1 and f2 need at least 2 rows each")
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)

    def sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
        e, v = torch.linalg.eigh(s)
        return (v * e.clamp_min(0).sqrt()) @ v.T

    r1 = sqrtm_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross)

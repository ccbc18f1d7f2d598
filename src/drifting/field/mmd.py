"""C.2: the drifting field that MMD with a Gaussian kernel induces (the MMD peer of the ablations)."""

from __future__ import annotations

import torch

from .common import _prepare, pairwise_distances


def mmd_field(
    x: torch.Tensor,
    y_pos: torch.Tensor,
    y_neg: torch.Tensor,
    sigma: float,
    *,
    mask_self: bool = True,
) -> torch.Tensor:
    """The drifting field that MMD with a Gaussian kernel induces (paper C.2, Eq. 43-45).

    ``V(x) = E_p[k~(x, y+)(y+ - x)] - E_q[k~(x, y-)(y- - x)]`` with the *unnormalized* kernel
    ``k~(x, y) = exp(-||x - y||^2 / (2 sigma^2)) / sigma^2`` (Eq. 45), i.e. ``-1/2`` times the
    gradient of squared MMD with respect to x (Eq. 36). Expectations are empirical means;
    with ``mask_self`` the self pair is left out of the mean over negatives (the first N
    negatives are x), the usual unbiased estimate.
    """
    xb, pb, nb, batched, sigma = _prepare(x, y_pos, y_neg, sigma, "sigma")
    N, M = xb.shape[1], nb.shape[1]
    if mask_self and M < N:
        raise ValueError(f"mask_self=True needs y_neg to start with the N={N} samples of x; M={M}")
    with torch.no_grad():
        dtype = torch.promote_types(xb.dtype, torch.float32)
        y = torch.cat([pb, nb], dim=1).to(dtype)  # [B, P+M, D]
        V = mmd_from_distances(y, pairwise_distances(xb, y), pb.shape[1], sigma, mask_self=mask_self,
                               x=xb.to(dtype))
    return V if batched else V.squeeze(0)


def mmd_from_distances(
    y: torch.Tensor,
    dist: torch.Tensor,
    P: int,
    sigma: float,
    *,
    mask_self: bool = True,
    neg_weights: torch.Tensor | None = None,
    x: torch.Tensor,
) -> torch.Tensor:
    """The MMD field of C.2 (Eq. 41-45) given the joint target set, like :func:`drift_from_distances`.

    ``y [B, P+M, D]``: positives then negatives (with ``mask_self`` the first N negatives are
    ``x [B, N, D]``); ``dist [B, N, P+M]``; ``neg_weights [B, 1, M]`` or None. With the Gaussian
    kernel's ``k~ = exp(-d^2 / (2 sigma^2)) / sigma^2`` and no normalization,
    ``V = mean_p k~ (y+ - x) - mean_q k~ (y- - x)``; the mean over negatives is weighted by
    ``neg_weights`` (CFG negatives, A.7) and leaves out the masked self pairs.
    """
    N = dist.shape[1]
    k = torch.exp(dist.square() * (-0.5 / sigma**2)) / sigma**2  # [B, N, P+M]
    w_neg = torch.ones_like(k[:, :1, P:])  # [B, 1, M], weight of each negative
    if neg_weights is not None:
        w_neg = w_neg * neg_weights
    w = torch.cat([k[..., :P] / P, k[..., P:] * w_neg], dim=-1)  # [B, N, P+M]
    count_neg = w_neg.sum(-1, keepdim=True).expand(-1, N, 1).clone()  # [B, N, 1]
    if mask_self:  # the pair (x_i, y_neg_i) is left out of the mean over negatives
        w[:, :, P: P + N].diagonal(dim1=-2, dim2=-1).zero_()
        count_neg -= w_neg[:, 0, :N].unsqueeze(-1)
    w[..., P:] /= -count_neg.clamp_min(1e-30)
    # sum_j w_j (y_j - x) with signed weights: one matrix product and one "- x" term
    return w @ y.to(w.dtype) - w.sum(-1, keepdim=True) * x.to(w.dtype)

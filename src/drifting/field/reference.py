"""Alg. 2 (paper A.1): the drifting field V of Eq. (11), its literal transcription, and the reference
implementation from directly evaluated distances. :func:`compute_V` is the public entry point; it
runs the fast implementation (:mod:`drifting.field.fast`) unless asked for the reference."""

from __future__ import annotations

import torch

from .common import (
    MASKED_LOGIT,
    _prepare,
    all_finite,
    broadcast_neg_weights,
    check_inputs_finite,
    pairwise_distances,
)
from .fast import Distances, drift_fields
from .options import KERNEL_OPTION_NAMES, FieldOptions, field_options


def drift_from_distances(
    y: torch.Tensor,
    dist: torch.Tensor,
    P: int,
    T: float,
    *,
    options: FieldOptions | None = None,
    mask_self: bool = True,
    neg_weights: torch.Tensor | None = None,
    x: torch.Tensor | None = None,
    **overrides,
) -> torch.Tensor:
    """Alg. 2 given the joint target set and its precomputed distances (batched, validated).

    ``y [B, P+M, D]`` holds the P positives followed by the M negatives (with ``mask_self`` the
    first N negatives are x itself); ``dist [B, N, P+M]`` the distances from x to them;
    ``neg_weights [B, 1, M]`` or None. Returns ``V [B, N, D]`` in the dtype of ``dist``. The kernel
    options (normalize, attraction, repulsion) come from ``options`` or keywords, as in :func:`compute_V`.
    ``x [B, N, D]`` is needed only when ``attraction != repulsion`` (the "- x" terms of
    Eq. (8) then no longer cancel).

    Arithmetic is rearranged for speed, not changed: the geometric mean of the two softmaxes
    is ``exp(logit - (lse_row + lse_col) / 2)`` (one exp instead of two softmaxes, a product
    and a square root), and the cross-weighted sums ``V+ - V-`` are one matrix product with
    signed weights, ``[A+ * s-, -A- * s+] @ [y+; y-]``. Tests hold it to a literal Alg. 2.

    The per-negative weights (CFG, A.7) multiply the affinity after the softmax normalization
    and before the cross-weighting, as in the authors' release (the paper says only that the
    unconditional negatives are "weighted by w when computing the kernel").
    """
    opts = field_options(options, overrides, "drift_from_distances", KERNEL_OPTION_NAMES)
    normalize, attraction, repulsion = opts.normalize, opts.attraction, opts.repulsion
    N = dist.shape[1]
    logit = dist * (-1.0 / T)  # [B, N, P+M], a fresh tensor that the steps below update in place
    if mask_self:  # ignore self: the pair (x_i, y_neg_i) for i < N
        logit[:, :, P: P + N].diagonal(dim1=-2, dim2=-1).fill_(MASKED_LOGIT)

    if normalize == "both":  # sqrt(softmax_y * softmax_x)
        lse_row = logit.logsumexp(dim=-1, keepdim=True).mul_(0.5)  # [B, N, 1]
        lse_col = logit.logsumexp(dim=-2, keepdim=True).mul_(0.5)  # [B, 1, P+M]
        A = logit.sub_(lse_row).sub_(lse_col).exp_()
    elif normalize == "y":
        A = logit.softmax(dim=-1)
    elif normalize == "none":  # Z = 1: the raw Laplace kernel exp(-dist / T)
        A = logit.exp_()
    elif normalize == "separate":  # Eq. (8)-(9): Z_p and Z_q each normalize their own set
        A = torch.cat([logit[..., :P].softmax(dim=-1), logit[..., P:].softmax(dim=-1)], dim=-1)
    else:  # (FieldOptions admits no other value)
        raise AssertionError(normalize)

    A_pos, A_neg = A[..., :P], A[..., P:]  # views [B, N, P], [B, N, M]
    if neg_weights is not None:
        A_neg.mul_(neg_weights)
        if normalize == "separate":  # weighted mean over negatives: renormalize Z_q with weights
            A_neg.div_(A_neg.sum(dim=-1, keepdim=True).clamp_min(1e-30))
    s_pos = A_pos.sum(dim=-1, keepdim=True)  # [B, N, 1]
    s_neg = A_neg.sum(dim=-1, keepdim=True)  # [B, N, 1]
    A_pos.mul_(s_neg * attraction)  # attraction weighted by total repulsion
    A_neg.mul_(s_pos * -repulsion)  # repulsion weighted by total attraction
    V = A @ y.to(A.dtype)  # [B, N, D] = a V+ - r V-, without the "- x" terms
    if attraction == repulsion:
        # sum(W_pos) == sum(W_neg) == s_pos * s_neg, so the "- x" terms of Eq. (8) cancel.
        return V
    # Table 1's destructive variants a*V+ - r*V-: the "- x" terms no longer cancel.
    # V+ = sum_i W_pos_i (y_i - x), V- = sum_j W_neg_j (y_j - x), with sum W = s_pos * s_neg.
    if x is None:
        raise ValueError("x is needed when attraction != repulsion")
    return V - ((attraction - repulsion) * (s_pos * s_neg)) * x.to(A.dtype)


def compute_V(
    x: torch.Tensor,
    y_pos: torch.Tensor,
    y_neg: torch.Tensor,
    T: float,
    *,
    options: FieldOptions | None = None,
    mask_self: bool = True,
    neg_weights: torch.Tensor | None = None,
    impl: str = "fast",
    **overrides,
) -> torch.Tensor:
    """The drifting field V_{p,q}(x) of Eq. (11), computed as in Alg. 2 (paper A.1).

    Laplace kernel ``k(x, y) = exp(-||x - y|| / T)`` (Eq. 12), normalized by a softmax over
    the joint set of positives and negatives (y axis) and, with ``normalize="both"``, also by
    a softmax over the generated samples (x axis), combined by a geometric mean; then
    cross-weighted so that ``V = V+ - V-`` (Eq. 10) with the ``x`` terms cancelling.

    Args:
        x: generated samples ``[N, D]`` or ``[B, N, D]``.
        y_pos: positives ``[P, D]`` or ``[B, P, D]``.
        y_neg: negatives ``[M, D]`` or ``[B, M, D]``; with ``mask_self`` the first N are x.
        T: temperature (> 0).
        options: the field's options (:class:`drifting.FieldOptions`); the kernel's are used here:
            ``normalize``, ``attraction`` and ``repulsion``, which may also be given as keywords.
        normalize: ``"both"`` (Alg. 2, default), ``"y"`` (softmax over y only) or ``"none"``
            (Z = 1) — the three rows of Table 11 — or ``"separate"``: Eq. (8)-(10) literally,
            ``V = V+_p - V-_q`` with ``Z_p`` and ``Z_q`` normalizing positives and negatives
            separately. Alg. 2's joint row softmax with cross-weighting equals ``"separate"``
            times ``Z_p Z_q / (Z_p + Z_q)^2`` per sample (for ``"y"``), which shrinks the drift of
            samples in regions where q outweighs p.
        mask_self: ignore the pair (x_i, y_neg_i) for i < N (Alg. 2 "ignore self").
        neg_weights: per-negative weights ``[M]`` or ``[B, M]`` (CFG, A.7).
        attraction, repulsion: scales a, r of ``a V+ - r V-`` (Table 1's anti-symmetry study;
            ``repulsion=0`` is attraction-only). The defaults give the anti-symmetric field.
        impl: ``"fast"`` (:mod:`drifting.field.fast`: matrix-product distances, bounded memory) or
            ``"reference"`` (directly evaluated distances, :func:`drift_from_distances`).

    Returns:
        ``V`` with the shape of ``x``, float32 (or float64 for float64 inputs), no gradient.
    """
    opts = field_options(options, overrides, "compute_V", KERNEL_OPTION_NAMES)
    xb, pb, nb, batched, T = _prepare(x, y_pos, y_neg, T, check_finite=False)  # checked on V below
    B, N, _ = xb.shape
    M = nb.shape[1]
    if mask_self and M < N:
        raise ValueError(
            f"mask_self=True needs the first N={N} negatives to be x itself, but y_neg has only M={M}"
        )
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    with torch.no_grad():
        w = broadcast_neg_weights(neg_weights, B, M, xb)
        if impl == "fast":  # the targets [positives; negatives] are read in place, not concatenated
            dists = Distances(xb, [pb, nb], self_col=pb.shape[1] if mask_self else None)  # Y = P + M
            V = drift_fields(dists, pb.shape[1], [T], options=opts, neg_weights=w)[:, 0]  # [B, N, D]
        else:
            y = torch.cat([pb, nb], dim=1)  # [B, P+M, D]
            V = drift_from_distances(y, pairwise_distances(xb, y), pb.shape[1], T, options=opts,
                                     mask_self=mask_self, neg_weights=w, x=xb)
    if not all_finite(V):  # one pass over V [B, N, D] instead of over the inputs: name the bad one
        check_inputs_finite(xb, pb, nb)
    return V if batched else V.squeeze(0)


def alg2_literal(x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor, T: float, mask_self: bool = True
                 ) -> torch.Tensor:
    """Alg. 2 (paper A.1) transcribed line by line for one problem ``x [N, D]``, ``y_pos [P, D]``,
    ``y_neg [M, D]`` (the first N negatives are x when ``mask_self``), in the inputs' dtype. The
    yardstick the tests and ``benchmarks/field.py`` hold the implementations to; not for training."""
    N, N_pos = x.shape[0], y_pos.shape[0]
    dist_pos = torch.cdist(x, y_pos)  # [N, P]
    dist_neg = torch.cdist(x, y_neg)  # [N, M]
    if mask_self:  # "ignore self": + 1e6 on the distance of each sample to itself
        dist_neg = dist_neg + torch.nn.functional.pad(torch.eye(N, dtype=x.dtype, device=x.device),
                                                      (0, y_neg.shape[0] - N)) * 1e6
    logit = torch.cat([-dist_pos / T, -dist_neg / T], dim=1)  # [N, P+M]
    A = torch.sqrt(logit.softmax(dim=-1) * logit.softmax(dim=-2))  # normalize along both dimensions
    A_pos, A_neg = torch.split(A, [N_pos, A.shape[1] - N_pos], dim=1)
    W_pos = A_pos * A_neg.sum(dim=1, keepdim=True)  # cross-weighting
    W_neg = A_neg * A_pos.sum(dim=1, keepdim=True)
    return W_pos @ y_pos - W_neg @ y_neg  # V = V+ - V-, [N, D]

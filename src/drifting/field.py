"""The drifting field V and its variants (pure functions, no learnable state).

Notation follows Deng et al. 2026, "Generative Modeling via Drifting":

* ``x``      generated samples, the points being drifted            ``[B, N, D]``
* ``y_pos``  positive samples y+ ~ p (data)                           ``[B, P, D]``
* ``y_neg``  negative samples y- ~ q (generated; the first N may be x) ``[B, M, D]``
* ``T``      the kernel temperature tau of Eq. (12)

``B`` counts independent problems (classes x feature locations); every function also
accepts unbatched ``[N, D]`` inputs and then returns ``[N, D]``.

Every field is computed under ``torch.no_grad`` on detached inputs: the drifting loss (Eq. 6)
treats ``x + V`` as a frozen target, so no gradient may flow through V.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Normalize = Literal["both", "y", "none", "separate"]
NORMALIZE_CHOICES = ("both", "y", "none", "separate")

# Logit given to a masked (self) pair. Alg. 2 adds 1e6 to the distance; we mask in logit
# space so the mask works at any temperature. Finite (not -inf) so that a column whose only
# entry is masked (N = 1) still has a well-defined softmax, exactly as with Alg. 2.
_MASKED_LOGIT = -1e30


# --------------------------------------------------------------------------- validation
def _as_batched(name: str, t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 2:
        return t.unsqueeze(0), False
    if t.dim() == 3:
        return t, True
    raise ValueError(f"{name} must have shape [N, D] or [B, N, D]; got {tuple(t.shape)}")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def _check_positive(name: str, T: float) -> float:
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {T!r}") from None
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"{name} must be a positive finite number, got {T}")
    return T


def _prepare(
    x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor, T: float, T_name: str = "T"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, float]:
    """Validate shapes/values, add the batch axis, detach. Returns (x, y_pos, y_neg, batched, T)."""
    xb, bx = _as_batched("x", x)
    pb, bp = _as_batched("y_pos", y_pos)
    nb, bn = _as_batched("y_neg", y_neg)
    if not (bx == bp == bn):
        raise ValueError(
            "x, y_pos and y_neg must all be batched [B, *, D] or all unbatched [*, D]; got shapes "
            f"{tuple(x.shape)}, {tuple(y_pos.shape)}, {tuple(y_neg.shape)}"
        )
    B, N, D = xb.shape
    if pb.shape[-1] != D:
        raise ValueError(f"y_pos has feature dim {pb.shape[-1]} but x has D={D}")
    if nb.shape[-1] != D:
        raise ValueError(f"y_neg has feature dim {nb.shape[-1]} but x has D={D}")
    if pb.shape[0] != B or nb.shape[0] != B:
        raise ValueError(
            f"batch sizes differ: x has B={B}, y_pos has {pb.shape[0]}, y_neg has {nb.shape[0]}"
        )
    if N < 1:
        raise ValueError("x must hold at least one sample (N >= 1)")
    if pb.shape[1] < 1:
        raise ValueError("y_pos must hold at least one positive sample (P >= 1)")
    for name, t in (("x", xb), ("y_pos", pb), ("y_neg", nb)):
        _check_finite(name, t)
    return xb.detach(), pb.detach(), nb.detach(), bx, _check_positive(T_name, T)


def _neg_weights(neg_weights, B: int, M: int, like: torch.Tensor) -> torch.Tensor | None:
    """Broadcast per-negative weights to ``[B, 1, M]`` (or None), in fp32+ on ``like``'s device."""
    if neg_weights is None:
        return None
    dtype = torch.promote_types(like.dtype, torch.float32)
    w = torch.as_tensor(neg_weights, device=like.device).detach().to(dtype)
    if w.dim() == 1:
        if w.shape[0] != M:
            raise ValueError(f"neg_weights has {w.shape[0]} entries, expected M={M} (one per negative)")
        w = w.expand(B, M)
    elif w.dim() == 2:
        if tuple(w.shape) != (B, M):
            raise ValueError(f"neg_weights must be [M] or [B, M] = [{B}, {M}]; got {tuple(w.shape)}")
    else:
        raise ValueError(f"neg_weights must be [M] or [B, M]; got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("neg_weights must be finite and >= 0")
    return w.unsqueeze(1)  # [B, 1, M]


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[B, n, m]`` between rows of ``a [B, n, D]`` and ``b [B, m, D]``, in fp32+."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    # The direct form, not ||a||^2 + ||b||^2 - 2 a.b: the matrix-product form loses ~sqrt(eps)|a|
    # to cancellation, so a sample's distance to itself would come out ~1e-3 instead of 0.
    return torch.cdist(a.to(dtype), b.to(dtype), compute_mode="donot_use_mm_for_euclid_dist")


# --------------------------------------------------------------------------- Alg. 2 core
def drift_from_distances(
    y: torch.Tensor,
    dist: torch.Tensor,
    P: int,
    T: float,
    *,
    normalize: Normalize = "both",
    mask_self: bool = True,
    neg_weights: torch.Tensor | None = None,
    attraction: float = 1.0,
    repulsion: float = 1.0,
    x: torch.Tensor | None = None,
) -> torch.Tensor:
    """Alg. 2 given the joint target set and its precomputed distances (batched, validated).

    ``y [B, P+M, D]`` holds the P positives followed by the M negatives (with ``mask_self`` the
    first N negatives are x itself); ``dist [B, N, P+M]`` the distances from x to them;
    ``neg_weights [B, 1, M]`` or None. Returns ``V [B, N, D]`` in the dtype of ``dist``.
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
    N = dist.shape[1]
    logit = dist * (-1.0 / T)  # [B, N, P+M], a fresh tensor that the steps below update in place
    if mask_self:  # ignore self: the pair (x_i, y_neg_i) for i < N
        logit[:, :, P: P + N].diagonal(dim1=-2, dim2=-1).fill_(_MASKED_LOGIT)

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
    else:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")

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
    normalize: Normalize = "both",
    mask_self: bool = True,
    neg_weights: torch.Tensor | None = None,
    attraction: float = 1.0,
    repulsion: float = 1.0,
    impl: str = "fast",
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
        impl: ``"fast"`` (:mod:`drifting.fast_field`: matrix-product distances, bounded memory) or
            ``"reference"`` (directly evaluated distances, :func:`drift_from_distances`).

    Returns:
        ``V`` with the shape of ``x``, float32 (or float64 for float64 inputs), no gradient.
    """
    xb, pb, nb, batched, T = _prepare(x, y_pos, y_neg, T)
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
    B, N, _ = xb.shape
    M = nb.shape[1]
    if mask_self and M < N:
        raise ValueError(
            f"mask_self=True needs the first N={N} negatives to be x itself, but y_neg has only M={M}"
        )
    for name, v in (("attraction", attraction), ("repulsion", repulsion)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    with torch.no_grad():
        w = _neg_weights(neg_weights, B, M, xb)
        y = torch.cat([pb, nb], dim=1)  # [B, P+M, D]
        if impl == "fast":
            from .fast_field import Distances, drift_fields  # (imports this module)

            V = drift_fields(Distances(xb, y, self_col=pb.shape[1] if mask_self else None), pb.shape[1], [T],
                             normalize=normalize, neg_weights=w, attraction=float(attraction),
                             repulsion=float(repulsion))[:, 0]  # [B, N, D]
            return V if batched else V.squeeze(0)
        V = drift_from_distances(
            y, pairwise_distances(xb, y), pb.shape[1], T,
            normalize=normalize, mask_self=mask_self, neg_weights=w,
            attraction=float(attraction), repulsion=float(repulsion), x=xb,
        )
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


# --------------------------------------------------------------------------- C.2: MMD field
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


# --------------------------------------------------------------------------- Drift-RAE field
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
            logit_neg[:, :, :N] = logit_neg[:, :, :N].masked_fill(eye, _MASKED_LOGIT)
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

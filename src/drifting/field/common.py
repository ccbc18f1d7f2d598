"""What every drifting field shares: the notation, input validation, negative weights and distances.

Notation (Deng et al. 2026, "Generative Modeling via Drifting"):

* ``x``      generated samples, the points being drifted            ``[B, N, D]``
* ``y_pos``  positive samples y+ ~ p (data)                           ``[B, P, D]``
* ``y_neg``  negative samples y- ~ q (generated; the first N may be x) ``[B, M, D]``
* ``T``      the kernel temperature tau of Eq. (12)

``B`` counts independent problems (classes x feature locations); every field also accepts
unbatched ``[N, D]`` inputs and then returns ``[N, D]``.
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
MASKED_LOGIT = -1e30


# --------------------------------------------------------------------------- validation
def _as_batched(name: str, t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 2:
        return t.unsqueeze(0), False
    if t.dim() == 3:
        return t, True
    raise ValueError(f"{name} must have shape [N, D] or [B, N, D]; got {tuple(t.shape)}")


def all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN and no inf, in one pass without a temporary of ``t``'s size:
    ``aminmax`` propagates NaN and keeps the infinities (``torch.isfinite(t).all()`` runs about five
    elementwise passes on the CPU)."""
    if t.numel() == 0:
        return True
    if not t.is_floating_point():
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not all_finite(t):
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
    x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor, T: float, T_name: str = "T", *,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, float]:
    """Validate shapes/values, add the batch axis, detach. Returns (x, y_pos, y_neg, batched, T).

    ``check_finite=False`` leaves the NaN/inf check to the caller, who runs :func:`check_inputs_finite` once
    its result is non-finite (a NaN or inf anywhere in a problem's inputs makes its whole field NaN), so
    that finite inputs cost no validation pass over their ``B (N + P + M) D`` values."""
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
    if check_finite:
        check_inputs_finite(xb, pb, nb)
    return xb.detach(), pb.detach(), nb.detach(), bx, _check_positive(T_name, T)


def check_inputs_finite(x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first of x, y_pos, y_neg that holds a NaN or an inf."""
    for name, t in (("x", x), ("y_pos", y_pos), ("y_neg", y_neg)):
        _check_finite(name, t)


def broadcast_neg_weights(neg_weights, B: int, M: int, like: torch.Tensor) -> torch.Tensor | None:
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

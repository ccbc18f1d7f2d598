"""Sample-based distances between point sets.

Both metrics are V-statistics computed in float64 from all pairwise Euclidean
distances, in row chunks so that ``[n, m]`` distance matrices are never held at
once (20000 x 20000 points work on a CPU with ~100 MB of scratch memory).

* :func:`energy_distance` (Szekely & Rizzo)::

      E(A, B) = 2/(n m) sum_ij |a_i - b_j| - 1/n^2 sum_ij |a_i - a_j| - 1/m^2 sum_ij |b_i - b_j|

  The within-set means include the zero diagonal terms, which makes E >= 0
  (it is the energy distance between the two empirical distributions) and
  E(A, A) = 0. For two independent samples of the same distribution it is a
  positive "noise floor" that shrinks like 1/n.

* :func:`mmd2`: biased squared maximum mean discrepancy with the kernel
  ``k(u, v) = sum_s exp(-|u - v|^2 / (2 s^2))``::

      MMD^2 = mean k(A, A) + mean k(B, B) - 2 mean k(A, B)     (diagonals included, >= 0)

:func:`noise_floor` measures both between two random halves of one data set, and
:func:`compare` both between samples and a reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["energy_distance", "mmd2", "median_bandwidths", "noise_floor", "compare"]

_CHUNK_ELEMENTS = 1 << 22  # about 4M pairwise entries (32 MB in float64) per chunk
_MEDIAN_MAX_POINTS = 2000
_MEDIAN_SEED = 0
_BANDWIDTH_SCALES = (0.5, 1.0, 2.0)

PairSum = Callable[[torch.Tensor], torch.Tensor]
"""Maps a freshly computed distance block ``[c, m]`` (which it may overwrite) to ``sum f(d)`` (a scalar)."""


def _as_points(x: object, arg: str) -> torch.Tensor:
    """Check that ``x`` is a non-empty ``[n, d]`` array and return it as a float64 tensor."""
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{arg} must be a 2-D point set [n, d] with n, d >= 1, got shape {tuple(t.shape)}")
    if t.device.type == "mps":  # no float64 there
        t = t.cpu()
    return t.detach().to(torch.float64)


def _as_pair(a: object, b: object, names: tuple[str, str] = ("a", "b")) -> tuple[torch.Tensor, torch.Tensor]:
    a_t, b_t = _as_points(a, names[0]), _as_points(b, names[1])
    if a_t.shape[1] != b_t.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same dimension d; got {names[0]}: {list(a_t.shape)}, "
            f"{names[1]}: {list(b_t.shape)}"
        )
    return a_t, b_t.to(a_t.device)


def _rows_per_chunk(cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(chunk_size)
    return max(1, _CHUNK_ELEMENTS // max(cols, 1))


def _dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact pairwise Euclidean distances ``[len(x), len(y)]`` (no matmul shortcut, so |u - u| = 0)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def _cross_sum(x: torch.Tensor, y: torch.Tensor, fn: PairSum, chunk_size: int | None) -> float:
    """``sum_ij fn(|x_i - y_j|)`` over all pairs, in row chunks of ``x``."""
    step = _rows_per_chunk(y.shape[0], chunk_size)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], step):
        total += fn(_dist(x[i : i + step], y))  # [c, m] -> scalar
    return float(total)


def _self_sum(x: torch.Tensor, fn: PairSum, chunk_size: int | None) -> float:
    """``sum_ij fn(|x_i - x_j|)`` over all ordered pairs (diagonal included), using symmetry."""
    n = x.shape[0]
    step = _rows_per_chunk(n, chunk_size)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, n, step):
        j = min(i + step, n)
        total += fn(_dist(x[i:j], x[i:j]))  # diagonal block [c, c]
        if j < n:
            total += 2.0 * fn(_dist(x[i:j], x[j:]))  # block above the diagonal [c, n - j], twice
    return float(total)


def _nonneg(v: float) -> float:
    """Clip tiny negative rounding noise of a quantity that is >= 0 in exact arithmetic (nan passes)."""
    return 0.0 if v < 0 else v


def _all_finite(*xs: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in xs)


def energy_distance(a: torch.Tensor, b: torch.Tensor, *, chunk_size: int | None = None) -> float:
    """Energy distance (V-statistic) between point sets ``a [n, d]`` and ``b [m, d]``.

    ``2 E|a - b| - E|a - a'| - E|b - b'|`` with all means over all pairs, the zero
    diagonal terms included (Szekely & Rizzo), so the result is >= 0 and exactly
    the energy distance between the two empirical distributions. Computed in float64.

    Args:
        a, b: point sets with the same dimension ``d``.
        chunk_size: rows per chunk of the pairwise computation (default: about 4M pairs per chunk);
            only affects memory and speed.

    Returns:
        A Python float (``nan`` if an input holds NaN or inf).
    """
    a, b = _as_pair(a, b)
    if not _all_finite(a, b):
        return math.nan
    n, m = a.shape[0], b.shape[0]

    def ident(d: torch.Tensor) -> torch.Tensor:
        return d.sum()

    ab = _cross_sum(a, b, ident, chunk_size) / (n * m)
    aa = _self_sum(a, ident, chunk_size) / (n * n)
    bb = _self_sum(b, ident, chunk_size) / (m * m)
    return _nonneg(2.0 * ab - aa - bb)


def median_bandwidths(
    points: torch.Tensor, *, scales: Sequence[float] = _BANDWIDTH_SCALES, max_points: int = _MEDIAN_MAX_POINTS
) -> tuple[float, ...]:
    """Median-heuristic Gaussian bandwidths for ``points [n, d]``.

    The median pairwise distance (over pairs i < j) of at most ``max_points`` points
    (a random subset drawn with a generator seeded with 0, so the result is
    deterministic), times each of ``scales`` (default 0.5, 1, 2). If the median is 0
    (e.g. all points equal) it is replaced by 1.
    """
    x = _as_points(points, "points")
    if x.shape[0] > max_points:
        g = torch.Generator().manual_seed(_MEDIAN_SEED)
        idx = torch.randperm(x.shape[0], generator=g)[:max_points]  # [max_points]
        x = x[idx.to(x.device)]  # [max_points, d]
    if x.shape[0] < 2:
        med = 1.0
    else:
        d = _dist(x, x)  # [k, k]
        iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
        med = float(d[iu[0], iu[1]].median())
        if not med > 0:
            med = 1.0
    return tuple(float(s) * med for s in scales)


def _check_bandwidths(bandwidths: float | Sequence[float]) -> tuple[float, ...]:
    """Return ``bandwidths`` as a tuple of positive finite floats, or raise ValueError."""
    try:
        items = [bandwidths] if torch.as_tensor(bandwidths).ndim == 0 else list(bandwidths)
        bw = tuple(float(s) for s in items)
    except (TypeError, ValueError, RuntimeError):
        bw = ()
    if not bw or not all(math.isfinite(s) and s > 0 for s in bw):
        raise ValueError(
            f"bandwidths must be a positive finite number or a non-empty sequence of them, got {bandwidths!r}"
        )
    return bw


def _kernel_plan(bandwidths: tuple[float, ...]) -> list[tuple[float, int | None]]:
    """Order the Gaussian terms from widest to narrowest bandwidth; a term whose coefficient
    ``-1/(2 s^2)`` is ``2^k`` times the previous one is obtained by ``k`` squarings instead of an exp.
    The default scales (0.5, 1, 2) need one exp and four squarings."""
    coefs = sorted((-0.5 / s**2 for s in bandwidths), reverse=True)  # widest (closest to 0) first
    plan: list[tuple[float, int | None]] = []
    for i, c in enumerate(coefs):
        squarings = None
        if i > 0:
            k = round(math.log2(c / coefs[i - 1]))
            if 0 <= k <= 4 and math.isclose(c, coefs[i - 1] * 2**k, rel_tol=1e-12, abs_tol=0.0):
                squarings = k
        plan.append((c, squarings))
    return plan


def mmd2(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    bandwidths: float | Sequence[float] | None = None,
    chunk_size: int | None = None,
) -> float:
    """Biased (V-statistic) squared MMD between ``a [n, d]`` and ``b [m, d]``.

    Kernel: ``k(u, v) = sum_s exp(-|u - v|^2 / (2 s^2))`` over the bandwidths ``s``;
    ``MMD^2 = mean k(a, a') + mean k(b, b') - 2 mean k(a, b)``, diagonals included
    (so the result is >= 0). Computed in float64.

    Args:
        a, b: point sets with the same dimension ``d``.
        bandwidths: one bandwidth or a sequence of them. Default: the median pairwise
            distance of the pooled sample times (0.5, 1, 2), see :func:`median_bandwidths`.
        chunk_size: rows per chunk of the pairwise computation; only affects memory and speed.

    Returns:
        A Python float (``nan`` if an input holds NaN or inf).
    """
    a, b = _as_pair(a, b)
    if not _all_finite(a, b):
        return math.nan
    if bandwidths is None:
        bandwidths = median_bandwidths(torch.cat([a, b], dim=0))
    steps = _kernel_plan(_check_bandwidths(bandwidths))
    n, m = a.shape[0], b.shape[0]

    def kernel(d: torch.Tensor) -> torch.Tensor:
        d2 = d.square_()  # [c, m], overwritten in place to save memory traffic
        total, e = d2.new_zeros(()), d2
        for coef, squarings in steps:
            if squarings is None:
                e = torch.mul(d2, coef).exp_()  # [c, m] = exp(-d^2 / (2 s^2))
            else:
                for _ in range(squarings):  # exp(x)^(2^k) = exp(2^k x), cheaper than exp
                    e = e.square_()
            total += e.sum()
        return total

    aa = _self_sum(a, kernel, chunk_size) / (n * n)
    bb = _self_sum(b, kernel, chunk_size) / (m * m)
    ab = _cross_sum(a, b, kernel, chunk_size) / (n * m)
    return _nonneg(aa + bb - 2.0 * ab)


def compare(
    samples: torch.Tensor, reference: torch.Tensor, *, bandwidths: float | Sequence[float] | None = None
) -> dict[str, float]:
    """Energy distance and MMD^2 between ``samples [n, d]`` and ``reference [m, d]``.

    Returns ``{"energy_distance": float, "mmd2": float}``; ``bandwidths`` is passed to :func:`mmd2`.
    """
    s, r = _as_pair(samples, reference, ("samples", "reference"))
    return {"energy_distance": energy_distance(s, r), "mmd2": mmd2(s, r, bandwidths=bandwidths)}


def noise_floor(
    data: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    bandwidths: float | Sequence[float] | None = None,
) -> dict[str, float]:
    """Data-vs-data floor: both metrics between two disjoint random halves of ``data [n, d]``.

    The rows are shuffled with ``generator`` (``None``: a generator seeded with 0) and split
    into two halves of ``n // 2`` rows each (one row is left out when ``n`` is odd). The V-statistic
    floor shrinks like ``1/size``, so compare it with distances between sets of about ``n // 2`` points.

    Returns ``{"energy_distance": float, "mmd2": float}``.
    """
    x = _as_points(data, "data")
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"data must have at least 4 rows to split into two halves, got {n}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=generator).to(x.device)  # [n]
    half = n // 2
    return compare(x[perm[:half]], x[perm[half : 2 * half]], bandwidths=bandwidths)

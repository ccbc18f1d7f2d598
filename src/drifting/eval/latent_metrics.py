"""Latent-space statistics of Drift-RAE §3.2 / App. B.1 (Tables 1-2, Fig. 1).

All functions are pure, take torch tensors (or anything ``torch.as_tensor`` accepts), compute
in float64 and never hold more than about ``_CHUNK_ELEMENTS`` scratch entries per block.

Isotropy (Table 1, Eq. 46-48)
    :func:`participation_ratio`, :func:`spectral_entropy` of a covariance spectrum, and
    :func:`isotropy_stats`: both computed for every (class, token) covariance and averaged.

Dispersion (Table 2, Eq. 49-53)
    :func:`nn_distance` (NN-d) and :func:`spherical_mmd` (S-MMD), distances divided by
    ``sqrt(d)``.

Trajectory curvature (Fig. 1)
    :func:`trajectory_curvature` integrates ``dy/dt = v(y, t)`` from ``t = 1`` (noise) to
    ``t = 0`` with Euler and measures the deviation of the velocity from the chord;
    :func:`trajectory_deviation` is the point-to-chord distance of the trajectory points,
    the quantity of Chen et al. (2024)'s released analysis code.

Latents are ``[n, T, d]`` (n samples, T tokens, d channels per token) or ``[n, d]`` (T = 1);
``labels [n]`` are integer class ids (``None``: one class).

Token protocol. B.1 computes PR/SE "separately for each class and each token, then average",
i.e. the sample of a (class, token) cell is the set of ``d``-channel vectors of that class at
that token position. The same paragraph argues that "the relevant geometry is the local
within-class, within-token geometry", so the dispersion statistics default to it as well
(``per_token=True``: compare token vectors at the same position, feature dimension ``d`` =
channels, average over tokens); ``per_token=False`` treats each sample's whole flattened
latent as one vector (feature dimension ``T * d``). The two agree for ``[n, d]`` latents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ..field import pairwise_distances

__all__ = [
    "participation_ratio",
    "spectral_entropy",
    "isotropy_stats",
    "nn_distance",
    "spherical_mmd",
    "trajectory_curvature",
    "trajectory_deviation",
]

_CHUNK_ELEMENTS = 1 << 23  # ~8M float64 entries (64 MB) per scratch block
_NEG_EIG_TOL = 1e-3  # eigenvalues below -tol * max|eig| are not round-off: refuse them


# --------------------------------------------------------------------------- validation
def _float64(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "mps":  # no float64 there
        x = x.cpu()
    return x.detach().to(torch.float64)


def _as_latents(latents: object) -> tuple[torch.Tensor, bool]:
    """``latents`` as float64 ``[n, T, d]``; the flag says whether it came as ``[n, d]``."""
    x = torch.as_tensor(latents)
    if x.ndim not in (2, 3) or any(s < 1 for s in x.shape):
        raise ValueError(
            f"latents must be [n, T, d] (samples, tokens, channels) or [n, d] with every size >= 1, "
            f"got shape {tuple(x.shape)}"
        )
    if not (x.is_floating_point()
            or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"latents must hold real numbers, got dtype {x.dtype}")
    x = _float64(x)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("latents holds NaN or inf")
    flat = x.ndim == 2
    return (x[:, None, :] if flat else x), flat  # [n, T, d]


def _class_groups(labels: object, n: int, min_count: int, fn: str) -> list[tuple[int, torch.Tensor]]:
    """``[(class id, sample indices)]`` sorted by class id; every class needs ``min_count`` samples."""
    if labels is None:
        groups = [(0, torch.arange(n))]
    else:
        y = torch.as_tensor(labels)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"labels must be a 1-D tensor with one class id per sample ({n}), got "
                             f"shape {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"labels must hold integer class ids, got dtype {y.dtype}")
        y = y.cpu()
        groups = [(int(c), torch.nonzero(y == c).flatten()) for c in torch.unique(y, sorted=True)]
    for c, idx in groups:
        if idx.numel() < min_count:
            raise ValueError(
                f"labels: class {c} has {idx.numel()} sample(s); {fn} needs at least {min_count} per class"
            )
    return groups


def _token_chunks(T: int, per_token_elements: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, per_token_elements))
    for s in range(0, T, step):
        yield slice(s, min(T, s + step))


def _class_batches(xc: torch.Tensor, per_token: bool, per_token_elements: int) -> Iterator[torch.Tensor]:
    """The independent point sets of one class ``xc [m, T, d]`` as batches ``[B, m, D]``.

    ``per_token``: one set per token position (``D = d``), in chunks of tokens; otherwise a
    single set of flattened latents (``D = T * d``).
    """
    if per_token:
        for sl in _token_chunks(xc.shape[1], per_token_elements):
            yield xc[:, sl].transpose(0, 1)  # [tc, m, d]
    else:
        yield xc.reshape(1, xc.shape[0], -1)  # [1, m, T*d]


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return float(tau)


# --------------------------------------------------------------------------- Eq. 46-48
def _as_spectrum(cov_eigs: object) -> torch.Tensor:
    mu = torch.as_tensor(cov_eigs)
    if mu.ndim < 1 or mu.shape[-1] < 1:
        raise ValueError(f"cov_eigs must be [..., r] eigenvalues with r >= 1, got shape {tuple(mu.shape)}")
    mu = _float64(mu)
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("cov_eigs holds NaN or inf")
    scale = mu.abs().amax(dim=-1, keepdim=True)  # [..., 1]
    if bool((mu < -_NEG_EIG_TOL * scale).any()):
        raise ValueError(
            f"cov_eigs has eigenvalues below -{_NEG_EIG_TOL:g} x the largest |eigenvalue|: not the spectrum "
            f"of a covariance matrix (only round-off negatives are clamped to 0)"
        )
    return mu.clamp_min(0.0)  # round-off negatives -> 0


def _pr_se(mu: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PR and SE (Eq. 47-48) of spectra ``mu [..., k]`` (>= 0) padded with ``r - k`` zeros.

    Zero eigenvalues add nothing to ``sum mu``, ``sum mu^2`` or ``-sum p log p``, so the
    padding only enters through the ``1/r`` normalization. An all-zero spectrum gives NaN.
    """
    total = mu.sum(dim=-1, keepdim=True)  # [..., 1]
    p = mu / total  # [..., k]   Eq. 46 (NaN where total == 0)
    pr = 1.0 / (r * (p * p).sum(dim=-1))  # Eq. 47
    se = torch.exp(-torch.special.xlogy(p, p).sum(dim=-1)) / r  # Eq. 48, 0 log 0 = 0
    return pr, se


def participation_ratio(cov_eigs: torch.Tensor) -> torch.Tensor:
    """Normalized participation ratio (Drift-RAE Eq. 47) of covariance spectra.

    ``PR = (sum_i mu_i)^2 / (r sum_i mu_i^2) = 1 / (r sum_i p_i^2)`` with ``p_i = mu_i / sum_j mu_j``
    (Eq. 46) and ``r`` the number of eigenvalues (the last axis). ``1/r`` for a rank-1 spectrum,
    ``1`` for an isotropic one.

    Args:
        cov_eigs: eigenvalues ``[..., r]``. Round-off negatives are clamped to 0; values below
            ``-1e-3`` x the largest |eigenvalue| raise ``ValueError``.

    Returns:
        float64 tensor ``[...]`` in ``[1/r, 1]`` (NaN for an all-zero spectrum).
    """
    mu = _as_spectrum(cov_eigs)  # [..., r]
    return _pr_se(mu, mu.shape[-1])[0]


def spectral_entropy(cov_eigs: torch.Tensor) -> torch.Tensor:
    """Normalized spectral entropy (Drift-RAE Eq. 48) of covariance spectra.

    ``SE = exp(-sum_i p_i log p_i) / r`` with ``p`` the normalized spectrum of Eq. 46 and
    ``0 log 0 = 0``: the effective number of directions, divided by ``r``. Same input contract
    as :func:`participation_ratio`; returns float64 ``[...]`` in ``[1/r, 1]`` (NaN if all-zero).
    """
    mu = _as_spectrum(cov_eigs)  # [..., r]
    return _pr_se(mu, mu.shape[-1])[1]


def _cov_eigs(x: torch.Tensor) -> torch.Tensor:
    """Non-zero-capable covariance eigenvalues of point sets ``x [B, m, D]`` (m >= 2).

    Returns ``[B, min(m, D)]``: the eigenvalues of the ``D x D`` covariance (1/(m-1)
    normalization) that can be non-zero; the rest are exactly zero. With ``m < D`` they come
    from the ``m x m`` Gram matrix of the centered samples, which has the same non-zero
    eigenvalues as ``Xc^T Xc`` at a fraction of the cost.
    """
    m = x.shape[1]
    xc = x - x.mean(dim=1, keepdim=True)  # [B, m, D]
    if m <= x.shape[2]:
        g = xc @ xc.transpose(1, 2)  # [B, m, m]
    else:
        g = xc.transpose(1, 2) @ xc  # [B, D, D]
    return torch.linalg.eigvalsh(g / (m - 1)).clamp_min(0.0)  # [B, min(m, D)]


def isotropy_stats(latents: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Average PR and SE of the per-class, per-token covariances (Drift-RAE Table 1, App. B.1).

    For every class ``c`` and token ``t`` the covariance of ``{latents[i, t, :] : labels[i] = c}``
    (``d x d``, unbiased; PR and SE do not depend on the scale) gives eigenvalues
    ``mu_1..mu_r`` with ``r = d``; PR (Eq. 47) and SE (Eq. 48) of that spectrum are averaged
    uniformly over all (class, token) cells - "separately for each class and each token, and
    then average over all classes and all tokens". A class with ``n_c - 1 < d`` samples has at
    most ``n_c - 1`` non-zero eigenvalues, so its PR/SE are at most ``(n_c - 1)/d``-ish: use the
    same sample counts when comparing latent spaces.

    Args:
        latents: ``[n, T, d]`` or ``[n, d]`` (T = 1).
        labels: integer class ids ``[n]``, or None for a single class. Every class needs >= 2
            samples; a cell whose covariance is exactly zero raises ``ValueError``.

    Returns:
        dict with ``pr``, ``se`` (floats, the averages), ``pr_per_cell``/``se_per_cell``
        (float64 ``[C, T]``), ``classes`` (sorted ids), ``class_counts``, ``num_tokens``,
        ``dim`` (= r).
    """
    x, _ = _as_latents(latents)  # [n, T, d]
    n, T, d = x.shape
    groups = _class_groups(labels, n, 2, "isotropy_stats")
    pr_cells = torch.empty(len(groups), T, dtype=torch.float64)  # [C, T]
    se_cells = torch.empty_like(pr_cells)
    for ci, (c, idx) in enumerate(groups):
        xc = x[idx]  # [m, T, d]
        m = xc.shape[0]
        t0 = 0
        for xb in _class_batches(xc, True, m * d + min(m, d) ** 2):  # [tc, m, d]
            mu = _cov_eigs(xb)  # [tc, k]
            dead = mu.sum(dim=-1) == 0
            if bool(dead.any()):
                t = t0 + int(torch.nonzero(dead)[0])
                raise ValueError(f"latents: class {c}, token {t} has a zero covariance (all samples "
                                 "identical); PR and SE are undefined there")
            pr, se = _pr_se(mu, d)  # [tc]
            pr_cells[ci, t0 : t0 + xb.shape[0]] = pr.cpu()
            se_cells[ci, t0 : t0 + xb.shape[0]] = se.cpu()
            t0 += xb.shape[0]
    return {
        "pr": float(pr_cells.mean()),
        "se": float(se_cells.mean()),
        "pr_per_cell": pr_cells,
        "se_per_cell": se_cells,
        "classes": [c for c, _ in groups],
        "class_counts": [int(i.numel()) for _, i in groups],
        "num_tokens": T,
        "dim": d,
    }


# --------------------------------------------------------------------------- Eq. 49
def _nn_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum_i min_{j != i} |x_i - x_j|`` of each set in ``x [B, m, D]`` -> ``[B]``, in row chunks."""
    B, m, _ = x.shape
    out = torch.zeros(B, dtype=torch.float64, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, B * m))
    for s in range(0, m, rows):
        e = min(m, s + rows)
        dist = pairwise_distances(x[:, s:e], x)  # [B, e-s, m], exact (|u - u| = 0)
        i = torch.arange(s, e, device=x.device)
        dist[:, i - s, i] = math.inf  # exclude j = i
        out += dist.amin(dim=-1).sum(dim=-1)  # [B]
    return out


def nn_distance(latents: torch.Tensor, labels: torch.Tensor | None, *, per_token: bool = True) -> dict:
    """Average within-class nearest-neighbour distance NN-d (Drift-RAE Eq. 49, Table 2).

    ``NN-d = 1/sum_c n_c  sum_c sum_i  min_{j != i} |x_ci - x_cj| / sqrt(d)``: a mean over
    *samples* (classes weighted by their size), distances divided by the square root of the
    dimension ``d`` of the compared vectors.

    ``per_token=True`` (default, the within-token protocol of B.1): the vectors are the
    ``d``-channel token vectors at one position, compared only with the same position of the
    other samples of the class; Eq. 49 is evaluated per token and averaged uniformly over the
    ``T`` tokens (= the mean over all (sample, token) pairs). ``per_token=False``: each sample's
    flattened latent ``[T * d]`` is one vector and ``d`` in Eq. 49 is ``T * d``.

    Args:
        latents: ``[n, T, d]`` or ``[n, d]``.
        labels: integer class ids ``[n]`` (>= 2 samples per class), or None for one class.

    Returns:
        dict with ``nn_d`` (float), ``per_class`` (float64 ``[C]``: the mean over the class's
        samples and tokens), ``classes``, ``class_counts``, ``dim`` (the ``d`` of Eq. 49),
        ``per_token``.
    """
    x, _ = _as_latents(latents)  # [n, T, d]
    n, T, d = x.shape
    groups = _class_groups(labels, n, 2, "nn_distance")
    dim = d if per_token else T * d
    sums = torch.zeros(len(groups), dtype=torch.float64)  # [C] sum of NN distances
    for ci, (_, idx) in enumerate(groups):
        xc = x[idx]  # [m, T, d]
        m = xc.shape[0]
        for xb in _class_batches(xc, per_token, m * m + m * d):  # [B, m, D]
            sums[ci] += float(_nn_sum(xb).sum())
    counts = torch.tensor([float(i.numel()) for _, i in groups], dtype=torch.float64)
    reps = T if per_token else 1  # terms per sample
    scale = 1.0 / math.sqrt(dim)
    return {
        "nn_d": float(sums.sum() / (counts.sum() * reps) * scale),
        "per_class": sums / (counts * reps) * scale,
        "classes": [c for c, _ in groups],
        "class_counts": [int(i.numel()) for _, i in groups],
        "dim": dim,
        "per_token": per_token,
    }


# --------------------------------------------------------------------------- Eq. 50-53
def _smmd(x: torch.Tensor, tau: float) -> torch.Tensor:
    """Squared MMD (Eq. 52) between centered ``x [B, m, D]`` and its pole set (Eq. 50-51) -> ``[B]``.

    Kernel ``k(u, v) = exp(-|u - v| / (tau sqrt(D)))`` (Eq. 53), biased V-statistic (all pairs,
    diagonals included), computed without materializing the ``2D`` poles:

    * ``mean k(P, P)``: of the ``(2D)^2`` ordered pole pairs ``2D`` are equal (distance 0),
      ``2D`` are antipodal (``2 rho``) and the rest orthogonal (``sqrt(2) rho``).
    * ``|x - s rho e_i|^2 = (|x|^2 - x_i^2) + (x_i - s rho)^2`` for ``s = +-1`` (no
      cancellation between ``|x|^2`` and ``2 rho x_i``, so samples that are poles give 0).
    """
    B, m, D = x.shape
    xt = x - x.mean(dim=1, keepdim=True)  # [B, m, D]   centered samples x~
    rho = xt.norm(dim=-1).mean(dim=-1)  # [B]          Eq. 50
    s = tau * math.sqrt(D)  # kernel length scale of Eq. 53

    kxx = torch.zeros(B, dtype=torch.float64, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, B * m))
    for a in range(0, m, rows):
        kxx += torch.exp(-pairwise_distances(xt[:, a : a + rows], xt) / s).sum(dim=(1, 2))  # [B]
    kxx /= m * m

    n_p = 2 * D  # |S_rho|
    kpp = (n_p + n_p * torch.exp(-2.0 * rho / s)
           + (n_p * n_p - 2 * n_p) * torch.exp(-math.sqrt(2.0) * rho / s)) / (
        n_p * n_p
    )  # [B]

    sq = xt.square()  # [B, m, D]
    rest = (sq.sum(dim=-1, keepdim=True) - sq).clamp_min(0.0)  # [B, m, D]  |x|^2 - x_i^2
    r3 = rho[:, None, None]  # [B, 1, 1]
    kxp = torch.exp(-torch.sqrt(rest + (xt - r3).square()) / s).sum(dim=(1, 2))  # poles +rho e_i
    kxp += torch.exp(-torch.sqrt(rest + (xt + r3).square()) / s).sum(dim=(1, 2))  # poles -rho e_i
    kxp /= m * n_p
    return kxx + kpp - 2.0 * kxp  # [B]  Eq. 52


def spherical_mmd(
    latents: torch.Tensor, labels: torch.Tensor | None, tau: float = 1.0, *, per_token: bool = True
) -> dict:
    """Spherical MMD S-MMD (Drift-RAE Eq. 50-53, Table 2): how far each class is from a sphere.

    Per class (and, with ``per_token``, per token position) the samples are centered, the
    radius is their mean centered norm ``rho`` (Eq. 50), the reference set is the ``2d`` poles
    ``{+-rho e_i}`` (Eq. 51), and the squared MMD is the biased V-statistic of Eq. 52 with the
    kernel ``exp(-|x - y| / (tau sqrt(d)))`` (Eq. 53; ``d`` the dimension of the compared
    vectors). It is 0 when the centered samples are exactly the poles.

    Aggregation (the paper gives no formula): the value of a class is the uniform mean over
    its tokens; ``s_mmd`` is the uniform mean over classes (each class one MMD, like the
    per-class PR/SE of B.1; NN-d's Eq. 49 instead weighs samples). ``per_token`` as in
    :func:`nn_distance` (default True: ``d`` = channels; False: flattened, ``d = T * channels``).

    Args:
        latents: ``[n, T, d]`` or ``[n, d]``.
        labels: integer class ids ``[n]`` (>= 2 samples per class), or None for one class.
        tau: kernel temperature (> 0; the paper uses 1.0).

    Returns:
        dict with ``s_mmd`` (float), ``per_class`` (float64 ``[C]``), ``classes``,
        ``class_counts``, ``dim``, ``per_token``, ``tau``.
    """
    tau = _check_tau(tau)
    x, _ = _as_latents(latents)  # [n, T, d]
    n, T, d = x.shape
    groups = _class_groups(labels, n, 2, "spherical_mmd")
    dim = d if per_token else T * d
    per_class = torch.zeros(len(groups), dtype=torch.float64)  # [C]
    for ci, (_, idx) in enumerate(groups):
        xc = x[idx]  # [m, T, d]
        m = xc.shape[0]
        for xb in _class_batches(xc, per_token, m * m + 4 * m * d):  # [B, m, D]
            per_class[ci] += float(_smmd(xb, tau).sum())
        per_class[ci] /= T if per_token else 1
    return {
        "s_mmd": float(per_class.mean()),
        "per_class": per_class,
        "classes": [c for c, _ in groups],
        "class_counts": [int(i.numel()) for _, i in groups],
        "dim": dim,
        "per_token": per_token,
        "tau": tau,
    }


# --------------------------------------------------------------------------- Fig. 1
def trajectory_curvature(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    steps: int,
    *,
    per_dim: bool = False,
    return_path: bool = False,
):
    """Curvature of the flow-ODE trajectories from ``t = 1`` (noise ``z``) to ``t = 0`` (Fig. 1).

    Integrates ``dy/dt = v(y, t)`` (the convention of Eq. 8: ``y_0 = z - v(z, 1)`` for a straight
    flow) with ``steps`` Euler steps ``y_{t-h} = y_t - h v(y_t, t)``, ``h = 1/steps``, at
    ``t_k = 1 - k h``, ``k = 0..steps-1``, and returns, per trajectory::

        C = 1/steps  sum_k  | v(y_{t_k}, t_k) - (y_1 - y_0) |^2

    the discrete form of ``int_0^1 |v(y_t, t) - (y_1 - y_0)|^2 dt``: the mean squared deviation
    of the velocity from the chord velocity (the straightness/curvature of rectified flow, Liu
    et al. 2023; Lee et al. 2023). Since Euler makes ``y_1 - y_0 = h sum_k v_k`` the mean of the
    ``v_k``, ``C`` is their variance along the path; it is accumulated with Welford's update in
    float64 (memory ``O(B D)``, no stored velocities), so it is exactly 0 when the velocity is
    constant along the trajectory - a straight line traversed at constant speed - and > 0
    otherwise. Drift-RAE computes Fig. 1 "using the open-source implementation of Chen et al.
    (2024)", whose analysis code measures the distance of the trajectory points from the chord
    (:func:`trajectory_deviation`, available on the returned path); the two vanish together for
    straight trajectories.

    Args:
        velocity: ``v(y, t) -> [B, ...]`` with ``y`` shaped like ``z`` and ``t`` a ``[B]`` tensor
            (dtype/device of ``z``).
        z: starting noise ``[B, ...]``; integration runs in its dtype (statistics in float64).
        steps: number of Euler steps (>= 1).
        per_dim: divide by the number of elements per trajectory (``prod(z.shape[1:])``), for
            comparing latent spaces of different sizes.
        return_path: also return the path ``[steps + 1, B, ...]`` (``path[0] = z``).

    Returns:
        float64 ``[B]`` curvatures, or ``(curvatures, path)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not callable(velocity):
        raise ValueError("velocity must be a callable v(y, t) -> tensor shaped like y")
    z = torch.as_tensor(z)
    if z.ndim < 1 or z.shape[0] < 1 or not z.is_floating_point():
        raise ValueError("z must be a floating-point tensor [B, ...] with B >= 1, "
                         f"got {z.dtype} {tuple(z.shape)}")
    B = z.shape[0]
    h = 1.0 / steps
    y = z
    path = [z] if return_path else None
    mean = None  # [B, D] running mean of v_k; after the loop = (y_1 - y_0) of the Euler path
    m2 = None  # [B] running sum_k |v_k - mean|^2 (Welford)
    with torch.no_grad():
        for k in range(steps):
            t = torch.full((B,), 1.0 - k * h, dtype=z.dtype, device=z.device)  # [B]
            v = velocity(y, t)
            if not isinstance(v, torch.Tensor) or v.shape != z.shape:
                raise ValueError(f"velocity(y, t) must return a tensor shaped like z {tuple(z.shape)}, "
                                 f"got {getattr(v, 'shape', type(v))}")
            v64 = _float64(v).reshape(B, -1)  # [B, D]
            if mean is None:
                mean = v64.clone()
                m2 = torch.zeros(B, dtype=torch.float64, device=v64.device)
            else:  # Welford: stable, and exactly 0 for a constant velocity
                delta = v64 - mean  # [B, D]
                mean += delta / (k + 1)
                m2 += (delta * (v64 - mean)).sum(dim=-1)
            y = y - h * v  # Euler step to t - h
            if path is not None:
                path.append(y)
    curv = m2 / steps  # [B]
    if per_dim:
        curv = curv / mean.shape[1]
    if return_path:
        return curv, torch.stack(path)
    return curv


def trajectory_deviation(path: torch.Tensor) -> torch.Tensor:
    """Distance of each intermediate trajectory point from the chord (Chen et al. 2024).

    For a path ``[S + 1, B, ...]`` (e.g. from ``trajectory_curvature(..., return_path=True)``)
    returns float64 ``[B, S - 1]``: ``|a - c - <a - c, u> u|`` for the intermediate points
    ``a = path[1..S-1]``, end point ``c = path[S]`` and ``u`` the unit vector from ``path[0]``
    to ``path[S]`` - the perpendicular distance to the line through the two end points, as in
    the ``cal_deviation`` of the authors' released analysis code (zju-pi/diff-sampler,
    diff-analyzer). 0 for a straight trajectory. Requires ``S >= 2`` and distinct end points.
    """
    p = torch.as_tensor(path)
    if p.ndim < 2 or p.shape[0] < 3 or not p.is_floating_point():
        raise ValueError("path must be a floating-point tensor [S + 1, B, ...] with S >= 2, "
                         f"got {tuple(p.shape)}")
    p = _float64(p).reshape(p.shape[0], p.shape[1], -1)  # [S+1, B, D]
    start, end, mid = p[0], p[-1], p[1:-1]  # [B, D], [B, D], [S-1, B, D]
    chord = end - start  # [B, D]
    norm = chord.norm(dim=-1, keepdim=True)  # [B, 1]
    if bool((norm == 0).any()):
        raise ValueError("path: a trajectory ends where it starts; its chord direction is undefined")
    u = chord / norm  # [B, D]
    ac = end - mid  # [S-1, B, D]
    perp = ac - (ac * u).sum(dim=-1, keepdim=True) * u  # [S-1, B, D]
    return perp.norm(dim=-1).transpose(0, 1)  # [B, S-1]

"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020)
of generated features against real features, with k-nearest-neighbour balls.

* radius of a point: the distance to its k-th nearest neighbour in its own set (itself excluded).
* precision: share of fake points inside at least one real ball (``d <= r``, as the paper and
  torch-fidelity).
* recall: share of real points inside at least one fake ball (``d <= r``).
* density: ``1 / (k M) * sum_j #{real balls containing fake j}`` (``d < r``, as Naeem's ``prdc``).
* coverage: share of real points whose ball contains at least one fake point (``d < r``).

Distances are computed in float64 chunks of rows (``||a||^2 + ||b||^2 - 2 a.b``), so 10k x 10k
sets with 2048-d features need ``chunk x N`` doubles at a time, never ``M x N``. Comparisons use
squared distances (monotone in the distance).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

MAX_ELEMENTS = 1 << 24  # distances held at once (128 MB of float64)


def _check(x, name: str) -> torch.Tensor:
    a = np.asarray(x)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a numeric [n, F] array, got dtype {a.dtype} shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _sq_dist_chunks(a: torch.Tensor, b: torch.Tensor,
                    max_elements: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, D2)`` with ``D2 [len(rows), n_b]`` the squared distances of ``a[rows]`` to all of
    ``b``."""
    step = max(1, max_elements // max(1, b.shape[0]))
    bb = b.square().sum(1)  # [n_b]
    for i in range(0, a.shape[0], step):
        ai = a[i: i + step]  # [c, F]
        d2 = ai.square().sum(1, keepdim=True) + bb - 2 * ai @ b.T  # [c, n_b]
        yield slice(i, i + ai.shape[0]), d2.clamp_min_(0)


def knn_sq_radii(x: torch.Tensor, k: int, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Squared distance of each row of ``x [n, F]`` to its k-th nearest other row -> ``[n]``."""
    out = torch.empty(x.shape[0], dtype=x.dtype)
    for rows, d2 in _sq_dist_chunks(x, x, max_elements):
        out[rows] = d2.kthvalue(k + 1, dim=1).values  # the (k+1)-th smallest counts the point itself
    return out


def prdc(real, fake, k: int = 3, *, max_elements: int = MAX_ELEMENTS) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake [M, F]`` against ``real [N, F]`` with ``k``
    neighbours.

    Memory: O((N + M) + max_elements) doubles; one pass over the fake x real distances plus the
    two k-NN radius passes.
    """
    real_t, fake_t = _check(real, "real"), _check(fake, "fake")
    if real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(f"real and fake must have the same feature size F, got {real_t.shape[1]} "
                         f"and {fake_t.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n_min = min(real_t.shape[0], fake_t.shape[0])
    if n_min < k + 1:
        raise ValueError(f"real and fake need at least k + 1 = {k + 1} rows each, got {real_t.shape[0]} "
                         f"and {fake_t.shape[0]}")
    if not isinstance(max_elements, int) or max_elements < 1:
        raise ValueError(f"max_elements must be a positive int, got {max_elements!r}")
    r_real = knn_sq_radii(real_t, k, max_elements)  # [N]
    r_fake = knn_sq_radii(fake_t, k, max_elements)  # [M]
    in_real = torch.zeros(fake_t.shape[0], dtype=torch.bool)  # [M] precision hits
    density_count = torch.zeros((), dtype=torch.float64)
    recall_hit = torch.zeros(real_t.shape[0], dtype=torch.bool)  # [N]
    nn_fake = torch.full((real_t.shape[0],), float("inf"), dtype=torch.float64)  # [N] nearest fake, squared
    for rows, d2 in _sq_dist_chunks(fake_t, real_t, max_elements):  # d2 [c, N]
        in_real[rows] = (d2 <= r_real).any(1)
        density_count += (d2 < r_real).sum()
        recall_hit |= (d2 <= r_fake[rows, None]).any(0)
        nn_fake = torch.minimum(nn_fake, d2.min(0).values)
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(recall_hit.double().mean()),
        "density": float(density_count / (k * fake_t.shape[0])),
        "coverage": float((nn_fake < r_real).double().mean()),
    }

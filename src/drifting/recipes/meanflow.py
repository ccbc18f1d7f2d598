"""MeanFlow (Geng et al. 2025, arXiv 2505.13447): a one-step generator trained from scratch, the
one-step peer of drifting in ``drifting peers --methods meanflow``.

The flow convention is :mod:`drifting.recipes.flow`'s (t = 0 data, t = 1 noise):

    z_t = (1 - t) x + t eps,   v = eps - x                                   (the path and its velocity)
    u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds                          (average velocity, Eq. 3)
    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t)                     (the MeanFlow identity, Eq. 6)
    d/dt u = v . grad_z u + d_t u   (r held fixed)                           (Eq. 8)
    L = E || u_theta(z_t, r, t) - sg(u_tgt) ||^2,
        u_tgt = v - (t - r) (v . grad_z u_theta + d_t u_theta)               (Eq. 9-10)

``d/dt u`` is one Jacobian-vector product of the network (``torch.func.jvp``) with tangent
``(v, 0, 1)`` in ``(z, r, t)``. The network sees ``(t, h = t - r)`` (the paper's preferred embedding;
:attr:`~drifting.models.dit.DiTConfig.interval_cond`), where that tangent is ``(v, dt = 1, dh = 1)``.
Samples with ``r = t`` (``h = 0``) are plain flow matching (the target is ``v``) and skip the JVP. The
per-sample loss is weighted adaptively, ``sg(w) ||Delta||^2`` with ``w = 1 / (||Delta||^2 + c)^p`` (the
paper's §4.3; p = 0 is the plain squared error).

Sampling: one step ``x = z - u(z, r = 0, t = 1)`` (Alg. 2); K steps
``z_{t - dt} = z_t - dt u(z_t, t - dt, t)``, which is :func:`drifting.recipes.flow.euler_sample` on an
interval-conditioned network.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .paths import flow_path


def sample_interval(n: int, mu: float, sigma: float, ratio: float,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MeanFlow's (r, t) sampler: two logit-normal times ``sigmoid(N(mu, sigma^2))``, t the larger, r the
    smaller; all but the first ``round(ratio * n)`` pairs then get ``r = t`` (flow matching). Returns
    ``(r, t)``, each ``[n]`` with ``0 <= r <= t <= 1``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: the fraction of pairs with r != t must lie in [0, 1], got {ratio!r}")
    if not sigma > 0:
        raise ValueError(f"sigma: the logit-normal's standard deviation must be > 0, got {sigma!r}")
    a = torch.sigmoid(mu + sigma * torch.randn(2, n, generator=generator))  # [2, n]
    t, r = a.max(dim=0).values, a.min(dim=0).values  # [n] each
    keep = torch.arange(n) < round(ratio * n)  # [n]: the pairs that keep r < t
    return torch.where(keep, r, t), t


def meanflow_target(u_fn, z: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9-10: ``(u, u_tgt)`` with ``u = u_fn(z, t, h = t - r)`` (differentiable) and the detached target
    ``u_tgt = v - (t - r) du/dt``, ``du/dt`` the JVP of ``u_fn`` along ``(dz, dt, dh) = (v, 1, 1)``.

    u_fn: ``(z [B, ...], t [B], h [B]) -> [B, ...]``; z, v ``[B, ...]``; r, t ``[B]``. The attention inside
    runs on PyTorch's math kernel (fused attention has no forward-mode derivative)."""
    h = t - r  # [B]
    with sdpa_kernel([SDPBackend.MATH]):
        u, dudt = torch.func.jvp(u_fn, (z, t, h), (v, torch.ones_like(t), torch.ones_like(h)))
    hh = h.to(dudt.dtype).view(-1, *([1] * (z.dim() - 1)))  # [B, 1, ...]
    return u, (v - hh * dudt).detach()


def adaptive_loss(u: torch.Tensor, target: torch.Tensor, p: float, c: float,
                  stats: dict | None = None) -> torch.Tensor:
    """MeanFlow §4.3: mean over the batch of ``sg(w) ||u - target||^2``, ``w = 1 / (||u - target||^2 + c)^p``
    (the squared norm summed over each sample's elements; fp32). u, target ``[B, ...]``. ``stats``: gets
    ``"mse"``, the unweighted mean squared error per element (with p = 1 the loss itself stays near 1)."""
    sq = (u.float() - target.float()).square().flatten(1).sum(dim=1)  # [B]
    if stats is not None:
        stats["mse"] = sq.detach().mean() / u[0].numel()
    w = (sq.detach() + c).pow(-p)  # [B]
    return (w * sq).mean()


def meanflow_loss(model, y: torch.Tensor, labels: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                  eps: torch.Tensor, *, p: float = 1.0, c: float = 1e-3,
                  stats: dict | None = None) -> torch.Tensor:
    """The MeanFlow loss of one batch. y (data), eps (noise) ``[B, C, H, W]``; labels ``[B]``; r <= t ``[B]``.

    The pairs with ``r = t`` regress ``v = eps - y`` with one plain forward (no JVP); the others take
    :func:`meanflow_target`. Both parts are weighted by :func:`adaptive_loss` and averaged over all B
    (``stats``: see there)."""
    z, v = flow_path(y, eps, t)  # z_t and v = eps - y, [B, C, H, W] each
    jvp = r < t  # [B]
    us, targets = [], []
    if bool((~jvp).any()):
        m = ~jvp
        us.append(model(z[m], labels[m], t=t[m], h=torch.zeros_like(t[m])))
        targets.append(v[m])
    if bool(jvp.any()):
        lab = labels[jvp]
        u, tgt = meanflow_target(lambda zz, tt, hh: model(zz, lab, t=tt, h=hh),
                                 z[jvp], v[jvp], r[jvp], t[jvp])
        us.append(u)
        targets.append(tgt)
    return adaptive_loss(torch.cat(us), torch.cat(targets), p, c, stats)

"""Latent-space geometry of Drift-RAE §3.2 (Tables 1-2, Fig. 1) for any tokenizer and flow teacher.

Drift-RAE (§3.2, App. B.1) motivates distilling with a drifting field rather than along ODE
trajectories by three measurements of a latent space, all made here with the metric functions of
:mod:`drifting.eval.latent_metrics`:

* Table 1, isotropy (Eq. 46-48): the normalized participation ratio PR and spectral entropy SE of
  the covariance of ``{z_i[token] : label_i = c}``, computed "separately for each class and each
  token, and then averaged over all classes and all tokens" (:func:`latent_statistics`).
* Table 2, dispersion (Eq. 49-53): the within-class nearest-neighbour distance NN-d and the
  spherical MMD S-MMD, Euclidean distances divided by ``sqrt(d)``, same per-class, per-token
  protocol (``d`` = the dimension of one token vector).
* Fig. 1, curvature: 32 flow-ODE trajectories of a teacher integrated with Euler from ``t = 1``
  (noise) to ``t = 0`` (data), with their curvature (:func:`teacher_curvature`).

Protocol notes (choices the paper leaves open, all recorded in the outputs):

* A token is a spatial position of the latent ``[c, h, w]`` (the paper's RAE has 16x16 = 256),
  its vector the ``c`` channels there. ``patch = p > 1`` groups ``p x p`` positions into one token
  of ``c p^2`` values, as a DiT with patch size ``p`` sees it (SD-VAE's 32x32x4 latent under
  DiT-XL/2 has 256 tokens of 16 values: the paper's SD-VAE PR of 0.2068 is below ``1/4``, so its
  tokens cannot be 4-dimensional).
* The covariance of ``n_c`` samples has rank ``<= min(n_c - 1, d)``, so PR and SE are at most
  ``min(n_c - 1, d) / d``: spaces must be compared with EQUAL per-class sample counts
  (``per_class``: the first ``n`` samples of each class, in data order), and the bound is reported.
* A (class, token) cell whose samples are all identical (e.g. a background pixel that is 0 in every
  image of a class) has a zero covariance and no PR/SE; it is left out of the PR/SE average and
  counted in ``dead_cells`` (NN-d and S-MMD are well defined there, both 0, and kept).
* Aggregation: PR/SE uniform over (class, token) cells; NN-d a mean over samples (Eq. 49); S-MMD
  the mean over classes of the per-class mean over tokens (as
  :func:`~drifting.eval.latent_metrics.spherical_mmd`).
* Curvature: the paper uses Chen et al. (2024)'s code, whose plotted quantity is the distance of
  the trajectory points from the chord (``trajectory_deviation``); we report it, and the
  velocity-variance curvature of rectified flow (``trajectory_curvature``), raw and per dimension.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..eval.latent_metrics import (
    isotropy_stats,
    nn_distance,
    spherical_mmd,
    trajectory_curvature,
    trajectory_deviation,
)

__all__ = [
    "first_per_class",
    "to_tokens",
    "latent_statistics",
    "euler_path",
    "teacher_curvature",
    "run_latent_stats",
    "format_latent_stats",
]

DEFAULT_PER_CLASS = 1000  # Fashion-MNIST's test split has exactly 1000 images per class
TOKENIZER_INFO = "tokenizer.json"  # {"spec", "pixel_channels"} beside a latent-space flow model


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return float(tau)


# --------------------------------------------------------------------------- Tables 1-2
def first_per_class(labels, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class present in ``labels [N]``.

    Deterministic: class by class in increasing class id, each in data order. ``None`` keeps every
    sample (still grouped by class). Raises ``ValueError`` naming ``per_class`` when a class has
    fewer samples (equal counts are what makes PR/SE comparable across spaces, App. B.1).
    Returns int64 ``[C * per_class]`` (or ``[N]``).
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError("labels must be a 1-D array of integer class ids, got "
                         f"dtype {y.dtype} shape {y.shape}")
    if per_class is not None:
        per_class = _check_int("per_class", per_class, 2)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)  # ascending = data order
        if per_class is not None:
            if idx.size < per_class:
                raise ValueError(f"per_class: class {int(c)} has only {idx.size} samples, fewer "
                                 f"than per_class={per_class}; lower --per-class (all spaces "
                                 "must use equal counts)")
            idx = idx[:per_class]
        out.append(idx)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def to_tokens(latents: torch.Tensor, patch: int = 1) -> torch.Tensor:
    """``[N, c, h, w]`` latents -> ``[N, T, D]`` token vectors, ``T = (h/p)(w/p)``, ``D = c p^2``.

    Tokens in raster order (as a DiT's patch embedding makes them); the vector of a token is its
    ``p x p`` patch of ``c`` channels (order ``(c, p, p)``; the statistics are invariant to it).
    """
    p = _check_int("patch", patch, 1)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError(
            f"latents must be a tensor [N, c, h, w], got "
            f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    N, c, h, w = latents.shape
    if h % p or w % p:
        raise ValueError(f"patch: {p} does not divide the latent grid {h}x{w}")
    x = latents.reshape(N, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # [N, h/p, w/p, c, p, p]
    return x.reshape(N, (h // p) * (w // p), c * p * p)  # [N, T, D]


def _tokens_by_class(latents: torch.Tensor, labels, per_class: int | None, patch: int):
    """Checked inputs of :func:`latent_statistics`: ``(tokens [N, T, D], y [n], idx [n], classes, counts)``
    with ``idx`` the rows used (grouped by class, :func:`first_per_class`) and ``y`` their labels."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or min(latents.shape) < 1:
        raise ValueError(
            "latents must be a tensor [N, c, h, w] with every size >= 1, got "
            f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.shape[0] != latents.shape[0]:
        raise ValueError(f"labels must be 1-D with one class id per latent ({latents.shape[0]}), "
                         f"got shape {tuple(y.shape)}")
    idx = torch.from_numpy(first_per_class(y, per_class))  # [n], grouped by class
    tokens = to_tokens(latents, patch)  # [N, T, D]
    y = y.cpu()[idx]  # [n]
    classes = [int(c) for c in torch.unique(y, sorted=True)]
    counts = [int((y == c).sum()) for c in classes]
    for c, m in zip(classes, counts):
        if m < 2:
            raise ValueError(f"labels: class {c} has {m} sample(s); the per-class statistics need at least 2")
    return tokens, y, idx, classes, counts


def latent_statistics(latents: torch.Tensor, labels, *, per_class: int | None = None, patch: int = 1,
                      tau: float = 1.0, device: str | torch.device | None = None) -> dict:
    """PR, SE (Table 1) and NN-d, S-MMD (Table 2) of class-labelled latents (Drift-RAE §3.2, App. B.1).

    Every statistic is computed per class and per token (a spatial position, or a ``patch x patch``
    group of positions: :func:`to_tokens`) on ``D``-dimensional token vectors:

    * PR (Eq. 47) and SE (Eq. 48) of the spectrum (Eq. 46) of each (class, token) covariance,
      averaged uniformly over the cells (:func:`~drifting.eval.latent_metrics.isotropy_stats`);
      cells whose samples are all identical have no spectrum and are counted in ``dead_cells``.
    * NN-d (Eq. 49): the mean over samples and tokens of the distance to the nearest other sample
      of the class at the same token, divided by ``sqrt(D)``.
    * S-MMD (Eq. 50-53): squared MMD between the centered samples and the ``2D`` poles of the sphere
      of their mean radius, kernel ``exp(-|x - y| / (tau sqrt(D)))``, mean over tokens then classes.

    Classes are processed one at a time (float64 memory ``O(n_c T D)``); the aggregation reproduces
    the eval functions' on the whole set.

    Args:
        latents: ``[N, c, h, w]`` tensor (e.g. :meth:`Tokenizer.encode_dataset`).
        labels: integer class ids ``[N]``.
        per_class: use the first ``per_class`` samples of each class (:func:`first_per_class`; every
            class needs that many). ``None``: all samples, every class needing >= 2. The covariance
            rank is ``<= min(n_c - 1, D)``, so PR/SE are only comparable at equal counts.
        patch: token size in latent positions (>= 1, dividing ``h`` and ``w``).
        tau: S-MMD kernel temperature (Eq. 53; the paper's 1.0).
        device: where the float64 statistics run (default: the latents' device).

    Returns:
        a JSON-ready dict: ``pr``, ``se``, ``nn_d``, ``s_mmd`` (floats); ``latent_shape [c, h, w]``,
        ``patch``, ``num_tokens`` (T), ``dim`` (D, per token), ``per_class`` (the argument),
        ``classes``, ``class_counts``, ``rank_bound`` (``min(max n_c - 1, D)``), ``pr_se_max``
        (``rank_bound / D``, the largest PR/SE any cell can reach), ``dead_cells``, ``cells``,
        ``tau`` and ``by_class`` (``pr``, ``se``, ``nn_d``, ``s_mmd`` lists per class).
    """
    tokens, y, idx, classes, counts = _tokens_by_class(latents, labels, per_class, patch)
    tau = _check_tau(tau)
    N, T, D = tokens.shape
    dev = torch.device(device) if device is not None else tokens.device

    pr_sum = se_sum = 0.0
    live_cells = dead = 0
    by = {"pr": [], "se": [], "nn_d": [], "s_mmd": []}
    nn_weighted = 0.0
    for c in classes:
        xc = tokens[idx[y == c].to(tokens.device)].to(dev, torch.float64)  # [m, T, D]
        cell = _class_statistics(xc, tau)
        pr_sum, se_sum = pr_sum + cell["pr_sum"], se_sum + cell["se_sum"]
        live_cells, dead = live_cells + cell["live"], dead + T - cell["live"]
        for k in by:
            by[k].append(cell[k])
        nn_weighted += cell["nn_d"] * xc.shape[0]
        del xc
    if live_cells == 0:
        raise ValueError("latents: every (class, token) cell has identical samples; PR and SE are undefined")
    rank = min(max(counts) - 1, D)
    c_, h, w = latents.shape[1:]
    return {
        "pr": pr_sum / live_cells,
        "se": se_sum / live_cells,
        "nn_d": nn_weighted / sum(counts),
        "s_mmd": float(np.mean(by["s_mmd"])),
        "latent_shape": [int(c_), int(h), int(w)],
        "patch": int(patch),
        "num_tokens": T,
        "dim": D,
        "per_class": per_class,
        "classes": classes,
        "class_counts": counts,
        "rank_bound": rank,
        "pr_se_max": rank / D,
        "dead_cells": dead,
        "cells": T * len(classes),
        "tau": tau,
        "by_class": by,
    }


def _class_statistics(xc: torch.Tensor, tau: float) -> dict:
    """One class's samples ``xc [m, T, D]`` (float64): PR and SE over its live tokens (those whose samples
    are not all identical; their per-cell sums ``pr_sum``, ``se_sum`` and count ``live``), NN-d (Eq. 49)
    and S-MMD (Eq. 52), each a mean over samples and tokens."""
    const = (xc == xc[:1]).all(dim=2).all(dim=0)  # [T] tokens where every sample is identical
    live = torch.nonzero(~const).flatten()
    out = {"pr_sum": 0.0, "se_sum": 0.0, "live": live.numel(), "pr": math.nan, "se": math.nan}
    if live.numel():
        iso = isotropy_stats(xc[:, live], None)  # per-cell PR/SE over the live tokens
        out.update(pr_sum=float(iso["pr_per_cell"].sum()), se_sum=float(iso["se_per_cell"].sum()),
                   pr=iso["pr"], se=iso["se"])
    out["nn_d"] = nn_distance(xc, None)["nn_d"]  # Eq. 49 within the class, mean over samples and tokens
    out["s_mmd"] = spherical_mmd(xc, None, tau)["s_mmd"]  # Eq. 52, mean over tokens
    return out


# --------------------------------------------------------------------------- Fig. 1
def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    p = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def _teacher_velocity(model, labels: torch.Tensor, guidance_scale: float):
    """``v(y, t)`` of :func:`drifting.recipes.flow.euler_sample`, for a batch with ``labels [B]``.

    The same forward calls and arithmetic: ``model(y, labels, style=None, t=t).float()``, or with
    ``guidance_scale != 1`` one forward on the doubled batch (labels | null class) and
    ``v_u + s (v_c - v_u)``.
    """
    from .flow import null_class

    guided = guidance_scale != 1
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, null_class(model))])  # [2B]: cond | uncond

    def velocity(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # y [B, C, H, W], t [B]
        if guided:
            v_cond, v_uncond = model(torch.cat([y, y]), labels, style=None,
                                     t=torch.cat([t, t])).float().chunk(2)
            return v_uncond + guidance_scale * (v_cond - v_uncond)
        return model(y, labels, style=None, t=t).float()

    return velocity


def _check_teacher(model, labels, guidance_scale) -> tuple[torch.Tensor, torch.device]:
    cfg = getattr(model, "config", None)
    if cfg is None or not getattr(cfg, "time_cond", False):
        raise ValueError("model: a flow model (DiTConfig.time_cond=True) is needed, e.g. "
                         "from load_flow_model")
    if getattr(cfg, "style_tokens", 0) > 0:
        raise ValueError("model: style tokens are not supported here (flow teachers have style_tokens=0)")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
            math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale: the guidance scale must be a finite number >= 0, "
                         f"got {guidance_scale!r}")
    dev = _model_device(model)
    labels = torch.as_tensor(labels, device=dev)
    if labels.ndim != 1 or labels.shape[0] < 1 or labels.is_floating_point():
        raise ValueError("labels: expected a non-empty 1-D sequence of class indices, "
                         f"got {tuple(labels.shape)}")
    return labels, dev


def _integrate(model, labels, steps: int, noise: torch.Tensor, guidance_scale: float):
    """One Euler integration -> (curvature ``[B]`` float64, path ``[steps + 1, B, C, H, W]``)."""
    labels, dev = _check_teacher(model, labels, guidance_scale)
    if not isinstance(noise, torch.Tensor) or noise.ndim != 4 or noise.shape[0] != labels.shape[0]:
        raise ValueError(f"noise: expected a tensor [B, C, H, W] with B = len(labels) = {labels.shape[0]}, "
                         "got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    z = noise.to(dev, torch.float32)  # [B, C, H, W], y_1 = z (as euler_sample)
    # trajectory_curvature's loop is euler_sample's: t = 1 - k/steps (a [B] float32 tensor),
    # y <- y - (1/steps) v(y, t); it records the path and the velocity variance in one pass.
    return trajectory_curvature(_teacher_velocity(model, labels, float(guidance_scale)), z, steps,
                                return_path=True)


def euler_path(model, labels, steps: int, noise: torch.Tensor, *,
               guidance_scale: float = 1.0) -> torch.Tensor:
    """The whole Euler path of the flow ODE (Drift-RAE Eq. 2) from ``t = 1`` (noise) to ``t = 0``.

    Same update rule as :func:`drifting.recipes.flow.euler_sample`: ``y_{t - dt} = y_t - dt v(y_t, t, c)``,
    ``dt = 1/steps``, ``t = 1 - i dt`` for ``i = 0..steps-1`` (classifier-free guidance as there), so
    ``euler_path(...)[-1]`` equals ``euler_sample(model, labels, steps, noise=noise, guidance_scale=...)``.

    Args:
        model: a flow velocity network (``config.time_cond``; called as
            ``model(y, labels, style=None, t=t)``).
        labels: class ids ``[B]``.
        steps: Euler steps (>= 1).
        noise: the start ``z [B, C, H, W]`` (cast to float32 on the model's device).

    Returns:
        float32 ``[steps + 1, B, C, H, W]`` on the model's device; ``path[0] = z``.
    """
    return _integrate(model, labels, steps, noise, guidance_scale)[1]


def teacher_curvature(flow_model, labels, *, steps: int = 50, seed: int = 0, guidance_scale: float = 1.0,
                      noise: torch.Tensor | None = None, batch: int | None = None) -> dict:
    """Curvature of a flow teacher's ODE trajectories (Drift-RAE Fig. 1, §3.2, App. B.1).

    One trajectory per label (the paper uses 32), Euler from ``t = 1`` to ``t = 0`` with ``steps``
    steps (:func:`euler_path`), then per trajectory:

    * ``curvature``: ``1/S sum_k |v_k - (y_1 - y_0)|^2``, the variance of the velocity along the path
      (:func:`~drifting.eval.latent_metrics.trajectory_curvature`): 0 iff the velocity is constant;
    * ``deviation``: the distance of each intermediate point from the chord (Chen et al. 2024's
      analysis, :func:`~drifting.eval.latent_metrics.trajectory_deviation`), ``[S - 1]`` per trajectory.

    Both grow with the dimension ``D = C H W`` of the space, so ``curvature_per_dim`` (``/ D``) and
    ``deviation_per_sqrt_dim`` (``/ sqrt(D)``) are given for comparing spaces. A trajectory whose
    end point equals its start has no chord: its deviation is NaN (left out of the statistics) and
    it is counted in ``degenerate``.

    Args:
        flow_model: a flow velocity network (:func:`drifting.recipes.flow.load_flow_model`).
        labels: class ids ``[B]``, one trajectory each.
        steps: Euler steps (>= 2, so that there are intermediate points).
        seed: noise ``[B, C, H, W]`` is ``randn`` from a CPU generator seeded with it.
        guidance_scale: guidance scale (1: conditional velocity, as the paper's curvature plots).
        noise: explicit start noise instead of ``seed``.
        batch: trajectories per integration (memory: the path is ``(steps + 1) B C H W`` floats);
            default all at once.

    Returns:
        JSON-ready dict: ``n``, ``steps``, ``guidance_scale``, ``seed``, ``dim``, ``degenerate``,
        ``curvature`` / ``curvature_per_dim`` / ``deviation`` / ``deviation_per_sqrt_dim`` each
        ``{"mean", "max"}`` (``curvature`` also ``per_trajectory``, ``deviation`` also
        ``per_step``: the mean over trajectories at each intermediate step, Fig. 1's curve).
    """
    steps = _check_int("steps", steps, 2)
    labels, dev = _check_teacher(flow_model, labels, guidance_scale)
    B = labels.shape[0]
    cfg = flow_model.config
    shape = (B, cfg.in_channels, cfg.input_size, cfg.input_size)
    if noise is None:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))  # [B, C, H, W]
    elif not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        raise ValueError(f"noise: expected shape {list(shape)}, got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    batch = B if batch is None else _check_int("batch", batch, 1)
    D = int(np.prod(shape[1:]))
    curv = torch.empty(B, dtype=torch.float64)  # [B]
    dev_tab = torch.full((B, steps - 1), math.nan, dtype=torch.float64)  # [B, S-1]
    for s in range(0, B, batch):
        c, path = _integrate(flow_model, labels[s:s + batch], steps, noise[s:s + batch], guidance_scale)
        curv[s:s + batch] = c.cpu()  # path [S+1, b, C, H, W]
        ok = (path[-1] - path[0]).flatten(1).norm(dim=1) > 0  # [b] trajectories with a chord
        if bool(ok.any()):
            dev_tab[s:s + batch][ok.cpu()] = trajectory_deviation(path[:, ok]).cpu()  # [b_ok, S-1]
        del path
    ok = ~torch.isnan(dev_tab[:, 0])  # [B]
    # Fig. 1's curve: the mean deviation over the trajectories at each intermediate step  [S-1]
    per_step = dev_tab[ok].mean(dim=0).tolist() if bool(ok.any()) else [None] * (steps - 1)

    def stats(x: torch.Tensor) -> dict:
        x = x[~torch.isnan(x)]
        return {"mean": float(x.mean()), "max": float(x.max())} if x.numel() else {"mean": None, "max": None}

    return {
        "n": B,
        "steps": steps,
        "guidance_scale": float(guidance_scale),
        "seed": int(seed),
        "dim": D,
        "degenerate": int((~ok).sum()),
        "curvature": {**stats(curv), "per_trajectory": curv.tolist()},
        "curvature_per_dim": stats(curv / D),
        "deviation": {**stats(dev_tab), "per_step": per_step},
        "deviation_per_sqrt_dim": stats(dev_tab / math.sqrt(D)),
    }


def _teacher_space(model_dir: Path) -> dict:
    """The latent space of a flow model: ``model_dir/tokenizer.json`` if present, else pixels."""
    p = model_dir / TOKENIZER_INFO
    if not p.is_file():
        return {"spec": "pixel", "pixel_channels": None, "source": "default (no tokenizer.json)"}
    try:
        info = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"teachers: {p} is not readable JSON ({err})") from err
    if not isinstance(info, dict) or "spec" not in info:
        raise ValueError(f"teachers: {p} must hold a JSON object with a 'spec' key, got {info!r}")
    return {"spec": info["spec"], "pixel_channels": info.get("pixel_channels"), "source": str(p)}


# --------------------------------------------------------------------------- the study
def _per_space(value, names: list[str], what: str, check) -> dict:
    """An int for every space or a {name: int} dict (missing names: the default) -> {name: value}."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{what}: unknown space name(s) {unknown}; the spaces are {names}")
        return {n: check(value.get(n, 1)) for n in names}
    return {n: check(value) for n in names}


def run_latent_stats(spaces: dict, data: str = "fashion-mnist", split: str = "test",
                     per_class: int = DEFAULT_PER_CLASS, *, patch: int | dict = 1, tau: float = 1.0,
                     teachers: dict | None = None, curvature_n: int = 32, curvature_steps: int = 50,
                     guidance_scale: float = 1.0, seed: int = 0, device: str | torch.device = "cpu",
                     batch: int = 256, progress: bool = False) -> dict:
    """Tables 1-2 (and Fig. 1 for ``teachers``) of Drift-RAE §3.2 for several latent spaces.

    Loads ``split`` of ``data`` (:func:`drifting.data.images.load_dataset`), keeps the first
    ``per_class`` images of every class (:func:`first_per_class`; the same images for every
    space), encodes them with each tokenizer (``build_tokenizer(spec, pixel_channels=C)``;
    ``"pixel"`` is the identity, a reference row) and computes :func:`latent_statistics`. For each
    teacher (a flow-model directory, :func:`drifting.recipes.flow.load_flow_model`), computes
    :func:`teacher_curvature` on ``curvature_n`` trajectories with labels ``0, 1, ..., K-1, 0, ...``;
    the teacher's latent space is read from ``DIR/tokenizer.json`` when present (else pixels).

    Args:
        spaces: ``{name: tokenizer spec}``, at least one.
        patch: token size per space (an int for all, or ``{name: p}``, default 1).
        device: where encoders, teachers and the statistics run.
        batch: images per encoder call.

    Returns:
        JSON-ready ``{"data", "split", "per_class", "tau", "num_images", "spaces": {name: stats +
        "spec"}, "teachers": {name: curvature + "model_dir", "latent_space"}}``.
    """
    from ..data.images import load_dataset
    from ..models.tokenizers import build_tokenizer

    if not isinstance(spaces, dict) or not spaces:
        raise ValueError(f"spaces must be a non-empty dict {{name: tokenizer spec}}, got {spaces!r}")
    for k, v in spaces.items():
        if not isinstance(k, str) or not k or not isinstance(v, str) or not v.strip():
            raise ValueError(f"spaces: names and specs must be non-empty strings, got {k!r}: {v!r}")
    if teachers is not None and not isinstance(teachers, dict):
        raise ValueError("teachers must be a dict {name: flow model dir} or None, "
                         f"got {type(teachers).__name__}")
    per_class = _check_int("per_class", per_class, 2)
    tau = _check_tau(tau)
    curvature_n = _check_int("curvature_n", curvature_n, 1)
    curvature_steps = _check_int("curvature_steps", curvature_steps, 2)
    patches = _per_space(patch, list(spaces), "patch", lambda v: _check_int("patch", v, 1))
    dev = torch.device(device)

    ds = load_dataset(data, split)
    idx = first_per_class(ds.labels, per_class)  # [n], same images for every space
    images = ds.images[idx]  # [n, H, W, C] uint8
    labels = torch.from_numpy(ds.labels[idx])  # [n]
    C = ds.shape[2]
    out = {"data": data, "split": split, "per_class": per_class, "tau": tau, "num_images": int(idx.size),
           "spaces": {}, "teachers": {}}
    for name, spec in spaces.items():
        tok = build_tokenizer(spec, pixel_channels=C, device=dev)
        z = tok.encode_dataset(images, batch=batch, progress=progress)  # [n, c, h, w] float32 CPU
        del tok
        st = latent_statistics(z, labels, per_class=per_class, patch=patches[name], tau=tau, device=dev)
        out["spaces"][name] = {"spec": spec, **st}
    if teachers:
        from .flow import load_flow_model, null_class

        for name, d in teachers.items():
            model = load_flow_model(d, device=dev)
            K = null_class(model)  # the real classes are 0..K-1
            lab = torch.arange(curvature_n) % max(K, 1)  # [n]
            res = teacher_curvature(model, lab, steps=curvature_steps, seed=seed,
                                    guidance_scale=guidance_scale)
            out["teachers"][name] = {"model_dir": str(d), "latent_space": _teacher_space(Path(d)), **res}
            del model
    return out


def _num(v, fmt: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if v != 0 and abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.3e}"
    return format(v, fmt)


def format_latent_stats(result: dict) -> str:
    """Markdown tables of :func:`run_latent_stats`'s result in the layout of Drift-RAE's Table 1
    (Latent space | PR ↑ | SE ↑), Table 2 (Latent space | NN-d ↓ | S-MMD ↑), a setup table
    (tokens, dimension, samples per class, the PR/SE ceiling) and, with teachers, a curvature table."""
    sp = result.get("spaces", {})
    src = f"{result.get('data')} {result.get('split')}, first {result.get('per_class')} images per class"
    lines = [f"Table 1: Isotropy statistics of latent features (per class and per token; {src})", "",
             "| Latent space | PR ↑ | SE ↑ |", "|---|---|---|"]
    lines += [f"| {n} | {_num(s['pr'])} | {_num(s['se'])} |" for n, s in sp.items()]
    lines += ["", f"Table 2: Dispersion statistics of latent features (distances / sqrt(d), "
              f"S-MMD tau = {result.get('tau')})", "", "| Latent space | NN-d ↓ | S-MMD ↑ |", "|---|---|---|"]
    lines += [f"| {n} | {_num(s['nn_d'])} | {_num(s['s_mmd'], '.5f')} |" for n, s in sp.items()]
    lines += ["", "Setup (PR/SE of a cell cannot exceed rank bound / d, rank bound = min(n - 1, d))", "",
              "| Latent space | spec | latent c×h×w | patch | tokens | d / token | n / class | rank bound | "
              "PR, SE max | dead cells |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, s in sp.items():
        c, h, w = s["latent_shape"]
        counts = s["class_counts"]
        nc = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)}"
        lines.append(f"| {n} | `{s['spec']}` | {c}×{h}×{w} | {s['patch']} | {s['num_tokens']} | {s['dim']} "
                     f"| {nc} | {s['rank_bound']} | {_num(s['pr_se_max'])} "
                     f"| {s['dead_cells']}/{s['cells']} |")
    te = result.get("teachers") or {}
    if te:
        first = next(iter(te.values()))
        lines += ["", f"Figure 1: Curvature of teacher ODE trajectories ({first['n']} trajectories, "
                  f"{first['steps']} Euler steps, guidance {first['guidance_scale']:g}; curvature = velocity "
                  "variance "
                  "along the path, deviation = distance from the chord; D = C·H·W)", "",
                  "| Teacher | latent space | D | curvature mean | curvature max | curvature / D | "
                  "deviation mean | deviation max | deviation / √D |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, t in te.items():
            lines.append(
                f"| {n} | `{t['latent_space']['spec']}` | {t['dim']} | {_num(t['curvature']['mean'], '.4g')} "
                f"| {_num(t['curvature']['max'], '.4g')} | {_num(t['curvature_per_dim']['mean'], '.4g')} "
                f"| {_num(t['deviation']['mean'], '.4g')} | {_num(t['deviation']['max'], '.4g')} "
                f"| {_num(t['deviation_per_sqrt_dim']['mean'], '.4g')} |")
    return "\n".join(lines)

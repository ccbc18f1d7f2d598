"""Multi-scale feature sets for the drifting loss (paper A.5), built from encoder feature maps.

Paper: Deng et al. 2026, A.5 "Multi-scale Features for Drifting Loss" and A.6 "Normalization
across spatial locations". Each tapped map ``[B, C_i, H_i, W_i]`` of the encoder (see
:meth:`drifting.models.resnet_mae.ResNetEncoder.forward_features`) gives these feature groups,
each a per-sample tensor ``[B, L, C_i]`` whose ``L`` vectors share one normalization (A.6) but
each get their own kernel, drift and loss:

=========================  ==========================  =============================================
key                        L                           what (each vector ``C_i``-dim)
=========================  ==========================  =============================================
``tap{k}.loc``       (a)   ``H_i * W_i``               one vector per location
``tap{k}.mean/std``  (b)   1                           global mean / std over all locations
``tap{k}.p2mean/p2std`` (c) ``ceil(H_i/2)*ceil(W_i/2)`` mean / std over each 2x2 patch
``tap{k}.p4mean/p4std`` (d) ``ceil(H_i/4)*ceil(W_i/4)`` mean / std over each 4x4 patch
``input.sq``               1                           per-channel mean of ``x^2`` of the encoder input
=========================  ==========================  =============================================

``k`` is the 0-based index of the map in the list. Choices where A.5 is silent:

* **Odd sizes** (e.g. the 7x7 map of a 28x28 input): patches tile the map from the top-left
  corner and the last row/column of patches is *partial* (``avg_pool2d(ceil_mode=True)``:
  each partial patch averages over its valid pixels only). No location is dropped; 7x7 gives
  4x4 2x2-patches and 2x2 4x4-patches. A 1x1 partial patch has std ``sqrt(eps)``.
* **Too small**: (c) / (d) are skipped for a map with ``H_i < k`` or ``W_i < k`` (k = 2, 4).
  A map of exactly ``k x k`` keeps its single patch, as A.5's ``H_i/k x W_i/k`` says, even
  though it then equals (b).
* **Std** is the population std with ``eps`` inside the square root, ``sqrt(var + eps)``, so its
  gradient stays finite where a patch is constant. Statistics are computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F

SETS = ("ab", "abc", "abcd")  # the A.5 ablation: (a,b), (a-c), (a-d)
_PATCHES = {"c": 2, "d": 4}


def _check_sets(sets: str) -> str:
    if sets not in SETS:
        raise ValueError(f"sets: must be one of {SETS} (the A.5 ablation), got {sets!r}")
    return sets


def _patch_stats(f: torch.Tensor, k: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ``k x k`` patches (partial at the border): ``[B, C, H, W]`` -> 2 x ``[B, C, h,
    w]``. The variance is centred (no cancellation): each patch's mean is spread over its pixels by one
    expand-and-copy (a broadcast over the map viewed as ``[B, C, h, k, w, k]`` vectorizes poorly, two
    ``repeat_interleave`` copy twice)."""
    B, C, H, W = f.shape
    mean = F.avg_pool2d(f, k, k, ceil_mode=True)  # [B, C, h, w], h = ceil(H/k), w = ceil(W/k)
    h, w = mean.shape[-2:]
    mean_up = mean[:, :, :, None, :, None].expand(B, C, h, k, w, k).reshape(B, C, h * k, w * k)[..., :H, :W]
    var = F.avg_pool2d((f - mean_up).square_(), k, k, ceil_mode=True)  # [B, C, h, w]
    return mean, (var + eps).sqrt()


def _vectors(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, h*w, C]`` (row-major locations)."""
    return t.flatten(2).transpose(1, 2)


def feature_sets(
    maps: Sequence[torch.Tensor],
    x_in: torch.Tensor | None = None,
    *,
    sets: str = "abcd",
    include_input_sq: bool = True,
    eps: float = 1e-6,
    prefix: str = "tap",
) -> dict[str, torch.Tensor]:
    """The A.5 feature groups of one batch: ``{key: [B, L, C]}`` (see the module docstring).

    Args:
        maps: the encoder's tapped maps, each ``[B, C_i, H_i, W_i]``.
        x_in: the encoder input ``[B, C0, H0, W0]`` for ``input.sq`` (skipped when None).
        sets: ``"ab"``, ``"abc"`` or ``"abcd"`` (A.5's ablation).
        include_input_sq: add ``input.sq``, the per-channel mean of ``x_in^2`` (``[B, 1, C0]``).
        eps: added to the variance inside the std's square root.
        prefix: key prefix of the maps.
    """
    _check_sets(sets)
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    if isinstance(maps, torch.Tensor):
        maps = [maps]
    out: dict[str, torch.Tensor] = {}
    B = None
    for k, f in enumerate(maps):
        if not isinstance(f, torch.Tensor) or f.dim() != 4:
            raise ValueError(f"maps[{k}]: expected a [B, C, H, W] tensor, got {getattr(f, 'shape', type(f))}")
        if B is None:
            B = f.shape[0]
        elif f.shape[0] != B:
            raise ValueError(f"maps[{k}]: batch size {f.shape[0]} differs from maps[0]'s {B}")
        f = f.float()
        H, W = f.shape[-2:]
        name = f"{prefix}{k}"
        out[f"{name}.loc"] = _vectors(f)  # (a) [B, H*W, C]
        mean = f.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        var = (f - mean).square_().mean(dim=(2, 3), keepdim=True)
        out[f"{name}.mean"] = _vectors(mean)  # (b) [B, 1, C]
        out[f"{name}.std"] = _vectors((var + eps).sqrt())  # (b) [B, 1, C]
        for s in sets[2:]:  # (c), (d)
            p = _PATCHES[s]
            if H < p or W < p:
                continue
            pm, ps = _patch_stats(f, p, eps)
            out[f"{name}.p{p}mean"] = _vectors(pm)  # [B, ceil(H/p)*ceil(W/p), C]
            out[f"{name}.p{p}std"] = _vectors(ps)
    if include_input_sq and x_in is not None:
        if x_in.dim() != 4:
            raise ValueError(f"x_in: expected [B, C0, H0, W0], got {tuple(x_in.shape)}")
        if B is not None and x_in.shape[0] != B:
            raise ValueError(f"x_in: batch size {x_in.shape[0]} differs from the maps' {B}")
        out["input.sq"] = x_in.float().square().mean(dim=(2, 3)).unsqueeze(1)  # [B, 1, C0]
    return out


def encoder_feature_sets(encoder, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    """``feature_sets(encoder.forward_features(x), x, **kwargs)``: phi of A.5 for a batch of inputs.

    ``encoder`` is anything with ``forward_features(x) -> list[[B, C_i, H_i, W_i]]`` (e.g.
    :class:`drifting.models.resnet_mae.ResNetEncoder`); ``input.sq`` uses ``x`` as given (for
    pixel-MAE that is the full-resolution image, not the patchified grid).
    """
    return feature_sets(encoder.forward_features(x), x, **kwargs)


def vanilla_group(x: torch.Tensor) -> torch.Tensor:
    """The raw sample flattened, ``[B, ...] -> [B, 1, D]``: the "vanilla drifting loss without phi" (A.5)."""
    if x.dim() < 1:
        raise ValueError("x: expected a batch tensor [B, ...], got a scalar")
    return x.reshape(x.shape[0], 1, -1)


def parse_groups(groups: str | None) -> tuple[str, ...] | None:
    """``"tap1.loc,tap*.mean"`` -> ``("tap1.loc", "tap*.mean")``; None (all groups) stays None."""
    if groups is None:
        return None
    if not isinstance(groups, str):
        raise ValueError(f"groups: expected a comma-separated string of group-name patterns, got {groups!r}")
    pats = tuple(p.strip() for p in groups.split(","))
    if not pats or any(not p for p in pats):
        raise ValueError(f"groups: expected comma-separated patterns such as 'tap1.loc,tap*.mean' (fnmatch "
                         f"syntax over keys like tap0.loc, tap2.p4std, input.sq), got {groups!r}")
    return pats


def select_groups(feats: Mapping[str, torch.Tensor], groups: str | None) -> dict[str, torch.Tensor]:
    """The groups of ``feats`` whose key matches one of the comma-separated fnmatch ``groups`` patterns
    (None: all of them).

    A subset of A.5's groups for the loss: each kept group is drift-normalized on its own (Eq. 25) and so
    weighs as much as any other in the sum of Eq. 26; dropping groups re-weights the loss towards the ones
    kept. A pattern that matches no key is an error naming the keys there are.
    """
    pats = parse_groups(groups)
    if pats is None:
        return dict(feats)
    for p in pats:
        if not any(fnmatchcase(k, p) for k in feats):
            raise ValueError(f"groups: the pattern {p!r} matches none of the feature groups {sorted(feats)}")
    return {k: v for k, v in feats.items() if any(fnmatchcase(k, p) for p in pats)}


def group_by_class(feats: Mapping[str, torch.Tensor], n_classes: int) -> dict[str, torch.Tensor]:
    """Class-major batches ``{key: [Nc*n, L, C]}`` -> the loss's layout ``{key: [Nc, n, L, C]}``.

    Sample ``i`` of the batch belongs to class ``i // n`` (all samples of class 0 first).
    """
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes: must be an integer >= 1, got {n_classes!r}")
    out = {}
    for key, t in feats.items():
        if t.dim() < 2:
            raise ValueError(f"feats[{key!r}]: expected [Nc*n, L, C], got {tuple(t.shape)}")
        if t.shape[0] % n_classes:
            raise ValueError(f"n_classes: {n_classes} does not divide the batch "
                             f"size {t.shape[0]} of feats[{key!r}]")
        out[key] = t.reshape(n_classes, t.shape[0] // n_classes, *t.shape[1:])  # [Nc, n, L, C]
    return out


def count_features(
    config_or_shapes,
    input_hw: tuple[int, int] | int | None = None,
    *,
    sets: str = "abcd",
    include_input_sq: bool = True,
    in_channels: int | None = None,
    prefix: str = "tap",
) -> dict[str, tuple[int, int]]:
    """``{key: (L, C)}`` that :func:`feature_sets` produces, without running anything.

    ``config_or_shapes`` is either an encoder config with ``tap_shapes(input_hw)`` and
    ``in_channels`` (e.g. :class:`~drifting.models.resnet_mae.ResNetMAEConfig`) or a list of
    map shapes ``(C_i, H_i, W_i)``; then ``in_channels`` (C0) enables ``input.sq``.
    """
    _check_sets(sets)
    if hasattr(config_or_shapes, "tap_shapes"):
        shapes = config_or_shapes.tap_shapes(input_hw)
        if in_channels is None:
            in_channels = config_or_shapes.in_channels
    else:
        shapes = [tuple(int(v) for v in s) for s in config_or_shapes]
    out: dict[str, tuple[int, int]] = {}
    for k, (C, H, W) in enumerate(shapes):
        name = f"{prefix}{k}"
        out[f"{name}.loc"] = (H * W, C)
        out[f"{name}.mean"] = (1, C)
        out[f"{name}.std"] = (1, C)
        for s in sets[2:]:
            p = _PATCHES[s]
            if H < p or W < p:
                continue
            L = ((H + p - 1) // p) * ((W + p - 1) // p)  # ceil(H/p) * ceil(W/p)
            out[f"{name}.p{p}mean"] = (L, C)
            out[f"{name}.p{p}std"] = (L, C)
    if include_input_sq and in_channels is not None:
        out["input.sq"] = (1, int(in_channels))
    return out


def sample_locations(
    shapes: Mapping[str, torch.Tensor], max_locations: int | None, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A random subset of at most ``max_locations`` locations for each group with more.

    Every location of a group is its own drifting problem (A.6), and the loss averages over
    them, so drifting a uniformly drawn subset each step is an unbiased estimate of the full
    loss (the shared normalization ``S_j`` is then estimated on the subset). It trades
    gradient noise for speed where a map has many locations (a 28x28 map has 784). Returns
    ``{key: sorted indices [max_locations]}`` for the groups to subsample; the same indices must
    be applied to the generated and the real features (:func:`take_locations`).
    """
    if max_locations is None:
        return {}
    if not isinstance(max_locations, int) or max_locations < 1:
        raise ValueError(f"max_locations: must be None or an integer >= 1, got {max_locations!r}")
    out = {}
    for key, t in shapes.items():
        L = t.shape[1]  # [B, L, C]
        if L > max_locations:
            out[key] = torch.randperm(L, generator=generator)[:max_locations].sort().values.to(t.device)
    return out


def take_locations(feats: Mapping[str, torch.Tensor],
                   subsets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{key: [B, L, C]}`` -> the same with only the locations in ``subsets[key]`` (others unchanged)."""
    return {k: (t.index_select(1, subsets[k]) if k in subsets else t) for k, t in feats.items()}

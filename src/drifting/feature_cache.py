"""The real images' feature groups, computed once: real features without an encoder forward, and without
the A.5 statistics, per step.

The positives and the unconditional negatives of a step are real images, and the feature encoder is
frozen (A.3), so their feature groups do not change during training. With ``P = 32`` positives and
``N_unc = 8`` per class they are most of the encoder's work in the ``cpu`` preset (400 real images
against 80 generated ones a step), and once the tap maps were cached, building the A.5 groups from them
(the 2x2 and 4x4 patch statistics of 400 images) was still a fifth of a step (session 18's step_cost).
:class:`RealFeatureCache` computes every group of the whole training set once, in fixed batches of
consecutive images (so a resumed run recomputes the very same numbers), and a step only gathers its rows
and its locations (:meth:`RealFeatureCache.take`): the same numbers as from freshly encoded images, up to
the float rounding of other batch shapes.

The cache holds ``sum_j L_j C_j`` numbers per image (the groups of
:func:`drifting.features.count_features` plus the vanilla group; 41k for the ``cpu-wide`` MAE at 28x28,
about 1.7x its tap maps: 9.2 GiB in fp32 for Fashion-MNIST's 60k images); :meth:`RealFeatureCache.build`
returns None when that exceeds its ``max_gb``, and training then encodes the real images every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

GB = 1024**3


class RealFeatureCache:
    """``{key: [n_images, L, C]}``: the feature groups of images ``0 .. n_images - 1``."""

    def __init__(self, groups: dict[str, torch.Tensor]):
        sizes = {t.shape[0] for t in groups.values()}
        if len(sizes) != 1 or any(t.dim() != 3 for t in groups.values()):
            raise ValueError("groups: expected [n_images, L, C] tensors with one n_images, got "
                             f"{ {k: tuple(t.shape) for k, t in groups.items()} }")
        self.groups = groups
        self.n_images = sizes.pop()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.groups.values())

    def take(self, idx: torch.Tensor,
             subsets: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The groups of the images ``idx`` (``[n]`` ints): ``{key: [n, L, C]}``, with only the locations
        ``subsets[key]`` of the groups named there (:func:`drifting.features.sample_locations`; one gather,
        the rows and locations together, as ``take_locations`` after a plain take would give)."""
        subsets = subsets or {}
        return {k: (t[idx[:, None], subsets[k][None, :]] if k in subsets else t[idx])  # [n, L', C]
                for k, t in self.groups.items()}

    @classmethod
    @torch.no_grad()
    def build(cls, features: Callable[[torch.Tensor], dict[str, torch.Tensor]], n_images: int, *,
              max_gb: float, batch: int = 512) -> "RealFeatureCache | None":
        """Compute ``features(idx) -> {key: [len(idx), L, C]}`` for images ``0 .. n_images - 1`` in batches of
        ``batch`` consecutive ones (the caller's encoder, device and autocast are in ``features``). Returns
        None, having computed one batch only, when the groups of all images would take more than ``max_gb``
        GiB."""
        if not max_gb > 0:
            raise ValueError(f"max_gb: must be > 0, got {max_gb}")
        if batch < 1 or n_images < 1:
            raise ValueError(f"batch and n_images must be >= 1, got {batch}, {n_images}")
        out: dict[str, torch.Tensor] | None = None
        for start in range(0, n_images, batch):
            idx = torch.arange(start, min(start + batch, n_images))
            groups = features(idx)
            if out is None:
                per_image = sum(t[0].numel() * t.element_size() for t in groups.values())
                if per_image * n_images > max_gb * GB:
                    return None
                out = {k: torch.empty((n_images, *t.shape[1:]), dtype=t.dtype, device=t.device)
                       for k, t in groups.items()}
            for k, t in groups.items():
                out[k][start:start + len(idx)] = t
        return cls(out)

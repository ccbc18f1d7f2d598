"""The frozen encoder's tap maps of every training image, computed once: real features without a
forward per step.

The positives and the unconditional negatives of a step are real images, and the feature encoder is
frozen (A.3), so their feature maps do not change during training. With ``P = 32`` positives and
``N_unc = 8`` per class the encoder's forward on them is most of its cost in the ``cpu`` preset (400 real
images against 80 generated ones a step). :class:`RealFeatureCache` computes the tap maps of the whole
training set once, in fixed batches of consecutive images (so a resumed run recomputes the very same
numbers), and a step then only gathers its rows and builds the A.5 groups from them
(:func:`drifting.models.encoders.groups_from_maps`), exactly as from freshly computed maps.

The cache holds ``sum_i C_i H_i W_i`` numbers per image (12k for the ``cpu-tiny`` MAE at 28x28: 2.9 GB in
fp32 for Fashion-MNIST's 60k images); :meth:`RealFeatureCache.build` returns None when that exceeds its
``max_gb``, and training then encodes the real images every step as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .models.encoders import tap_maps

GB = 1024**3


class RealFeatureCache:
    """``{prefix: [[n_images, C_i, H_i, W_i], ...]}``: the tap maps of images ``0 .. n_images - 1``."""

    def __init__(self, maps: dict[str, list[torch.Tensor]]):
        sizes = {m.shape[0] for ms in maps.values() for m in ms}
        if len(sizes) != 1:
            raise ValueError(f"maps: every map must hold the same number of images, got {sorted(sizes)}")
        self.maps = maps
        self.n_images = sizes.pop()

    @property
    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for ms in self.maps.values() for m in ms)

    def take(self, idx: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The maps of the images ``idx`` (``[n]`` ints), in :func:`tap_maps`' layout."""
        return {p: [m[idx] for m in ms] for p, ms in self.maps.items()}

    @classmethod
    @torch.no_grad()
    def build(cls, encoder, images: Callable[[torch.Tensor], torch.Tensor], n_images: int, *,
              max_gb: float, batch: int = 512, device: torch.device | str = "cpu",
              autocast=None) -> "RealFeatureCache | None":
        """Encode images ``0 .. n_images - 1`` in batches of ``batch`` consecutive ones.

        ``images(idx)`` returns the encoder inputs ``[len(idx), C, H, W]`` of those images; ``autocast`` is
        the training's autocast context (None: none). Returns None, having encoded one batch only, when the
        maps of all images would take more than ``max_gb`` GiB.
        """
        if not max_gb > 0:
            raise ValueError(f"max_gb: must be > 0, got {max_gb}")
        if batch < 1 or n_images < 1:
            raise ValueError(f"batch and n_images must be >= 1, got {batch}, {n_images}")
        out: dict[str, list[torch.Tensor]] | None = None
        for start in range(0, n_images, batch):
            idx = torch.arange(start, min(start + batch, n_images))
            x = images(idx).to(device)
            if autocast is None:
                maps = tap_maps(encoder, x)
            else:
                with autocast:
                    maps = tap_maps(encoder, x)
            if out is None:
                per_image = sum(m[0].numel() * m.element_size() for ms in maps.values() for m in ms)
                if per_image * n_images > max_gb * GB:
                    return None
                out = {p: [torch.empty((n_images, *m.shape[1:]), dtype=m.dtype, device=m.device) for m in ms]
                       for p, ms in maps.items()}
            for p, ms in maps.items():
                for dst, m in zip(out[p], ms):
                    dst[start:start + len(idx)] = m
        return cls(out)

"""Randomness derived from (seed, step, stream): a resumed run draws exactly what an
uninterrupted one would, with no RNG state to save (DESIGN.md, "Randomness")."""

from __future__ import annotations

import torch


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for step ``step`` of a run seeded with ``seed``; ``stream`` separates uses
    (e.g. 0 = training batches, 1 = MAE pre-training, 2 = queue warm-up)."""
    return torch.Generator().manual_seed(
        (seed * 1_000_003 + step * 7_919 + stream * 104_729 + 12_345) % (2**63 - 1))

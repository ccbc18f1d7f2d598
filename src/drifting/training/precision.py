"""Mixed precision for the trainers: where bf16 autocast runs.

``precision`` is one of :data:`PRECISIONS`:

* ``"auto"``: bf16 autocast on CUDA, fp32 on the CPU. On an Intel Xeon with AMX (native bf16
  products) a step of the ``cpu`` image preset took 534 ms in bf16 against 609 ms in fp32 (1 thread,
  docs/results.md): too little to change the numerics by default; an AVX2-only CPU emulates bf16;
* ``"fp32"``: no autocast anywhere;
* ``"bf16"``: ``torch.autocast(device, torch.bfloat16)`` on any device, the CPU included.

Under autocast only the networks run in bf16; the drifting field and the loss stay in fp32 (the
features are cast up before the loss, see :mod:`drifting.features`).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether ``precision`` means bf16 autocast on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a null context for fp32)."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

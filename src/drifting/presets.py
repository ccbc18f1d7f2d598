"""One way to name configurations: ``PRESETS: dict[str, Config]`` and :func:`preset` to take one with
overrides. Used by the models (DiT, U-Net, ResNet-MAE), the image trainer and distillation."""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass, replace
from typing import TypeVar

C = TypeVar("C")


def preset(presets: dict[str, C], name: str, what: str, **overrides) -> C:
    """A validated copy of ``presets[name]`` with ``overrides`` applied; unknown names and fields are errors
    that list the choices (``what`` names the kind of preset in the message). A field that holds a nested
    config (the image trainer's ``mae``) takes a dict of that config's fields, merged into the preset's
    (or a whole config object)."""
    if name not in presets:
        raise ValueError(f"name: unknown {what} preset {name!r}; choose one of {sorted(presets)}")
    base = copy.deepcopy(presets[name])  # a preset's nested configs are never shared with a run's
    cfg = _with(base, overrides, "overrides")
    cfg.validate()
    return cfg


def _with(base, overrides: dict, where: str):
    """``base`` with ``overrides``, checked against its fields; dicts for nested configs merge into them."""
    known = {f.name for f in fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {type(base).__name__} field(s) {unknown}; known "
                         f"fields are {sorted(known)}")
    merged = {k: _with(getattr(base, k), v, f"{where}[{k!r}]")
              if isinstance(v, dict) and is_dataclass(getattr(base, k)) else v for k, v in overrides.items()}
    return replace(base, **merged)

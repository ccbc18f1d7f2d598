"""One way to name configurations: ``PRESETS: dict[str, Config]`` and :func:`preset` to take one with
overrides."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TypeVar

C = TypeVar("C")


def preset(presets: dict[str, C], name: str, what: str, **overrides) -> C:
    """A validated copy of ``presets[name]`` with ``overrides`` applied; unknown names and fields are errors
    that list the choices (``what`` names the kind of preset in the message)."""
    if name not in presets:
        raise ValueError(f"name: unknown {what} preset {name!r}; choose one of {sorted(presets)}")
    base = presets[name]
    known = {f.name for f in fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"overrides: unknown {type(base).__name__} field(s) {unknown}; known "
                         f"fields are {sorted(known)}")
    return replace(base, **overrides).validate()

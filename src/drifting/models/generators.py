"""The generator families by preset name: the DiT of A.2 (:mod:`.dit`) and the U-Net of :mod:`.convnet`.

``generator_config(name, **overrides)`` resolves a preset of either family, ``build_generator(config)``
makes the network, and ``load_generator_model(dir)`` reads an export of either (its ``config.json``
names the class). Everything downstream (the trainers, sampling, evaluation) sees only the shared
interface of :class:`~drifting.models.onestep.OneStepGenerator`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from . import convnet, dit
from .convnet import ConvGenConfig, ConvGenerator
from .dit import DiTConfig, DriftingDiT

FAMILIES = {DiTConfig: DriftingDiT, ConvGenConfig: ConvGenerator}


def generator_names() -> list[str]:
    """Every generator preset name (DiT and conv)."""
    return sorted(set(dit.PRESETS) | set(convnet.PRESETS))


def generator_config(name: str, **overrides) -> DiTConfig | ConvGenConfig:
    """The validated config of the preset ``name`` (either family) with ``overrides`` applied."""
    if name in convnet.PRESETS:
        return convnet.conv_config(name, **overrides)
    if name in dit.PRESETS:
        return dit.dit_config(name, **overrides)
    raise ValueError(f"generator: unknown preset {name!r}; choose one of {generator_names()}")


def config_fields(name: str) -> set[str]:
    """The config field names of the family of preset ``name``."""
    return {f.name for f in fields(ConvGenConfig if name in convnet.PRESETS else DiTConfig)}


def build_generator(config: DiTConfig | ConvGenConfig):
    """The network of ``config``'s family."""
    if type(config) not in FAMILIES:
        raise ValueError(f"config: expected a DiTConfig or ConvGenConfig, got {type(config).__name__}")
    return FAMILIES[type(config)](config)


def load_generator_model(directory: str | Path, device="cpu"):
    """A generator exported with ``save_pretrained`` (config.json + model.safetensors), either family."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} must contain config.json and model.safetensors")
    name = json.loads((d / "config.json").read_text()).get("_class_name", "DriftingDiT")
    classes = {cls.__name__: cls for cls in FAMILIES.values()}
    if name not in classes:
        raise ValueError(f"directory: {d} holds a {name}, not one of the generators {sorted(classes)}")
    return classes[name].from_pretrained(d, device=device)

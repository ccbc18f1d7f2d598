"""``save_pretrained`` / ``from_pretrained`` for models described by a config dataclass:
``config.json`` (with ``_class_name``) + ``model.safetensors``. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch


class PretrainedMixin:
    """Mix into an ``nn.Module`` whose ``__init__(config)`` takes an instance of ``config_class``."""

    config_class: type

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"_class_name": type(self).__name__, **asdict(self.config)}
        (d / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(d / "model.safetensors.tmp"))
        os.replace(d / "model.safetensors.tmp", d / "model.safetensors")  # never a half-written file

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        """Load what :meth:`save_pretrained` wrote (safetensors only: nothing is unpickled)."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"{d} must contain config.json and model.safetensors")
        raw = json.loads((d / "config.json").read_text())
        name = cls.config_class.__name__
        if raw.get("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"directory: {d} holds a {raw['_class_name']}, not a {cls.__name__}")
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(k for k in raw if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"directory: {d / 'config.json'} has unknown {name} fields {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
        model = cls(cls.config_class(**values))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model.to(device)

"""Crash-safe training checkpoints and user-facing exports.

* Training state: one file written atomically (tmp file + ``os.replace``), so a crash while
  saving never corrupts the last good checkpoint; loaded with ``torch.load(weights_only=True)``
  (tensors, numbers, strings, lists and dicts only — never arbitrary pickles).
* Export: ``config.json`` + ``model.safetensors`` in a directory.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_state(path: str | os.PathLike, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half


def load_state(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "it is corrupt, truncated or not a drifting checkpoint. It was left as it is: move it aside to keep it, "
            "then start over in this directory without resuming, or use a new --out") from err


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (the command line reports it and exits with status 2)."""


def export_model(directory: str | os.PathLike, model: torch.nn.Module, config: dict) -> None:
    """Write ``config.json`` and ``model.safetensors`` (what users load with :func:`load_export`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(d / "model.safetensors.tmp"))
    os.replace(d / "model.safetensors.tmp", d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def load_export(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d} must contain config.json and model.safetensors")
    return json.loads((d / "config.json").read_text()), load_file(str(d / "model.safetensors"))


def jsonable(v):
    """Tuples to lists recursively, so a config compares equal after a torch/JSON round trip."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def fill_defaults(stored: dict, defaults: dict) -> dict:
    """``stored`` (a checkpoint's JSON config) with the keys it lacks taken from ``defaults``, nested dicts
    included: a checkpoint written before an option existed reads as holding the option's default."""
    out = dict(stored)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = fill_defaults(out[k], v)
    return out

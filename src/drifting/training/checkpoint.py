"""Crash-safe training checkpoints and user-facing exports.

* Training state: one file written atomically (tmp file + ``os.replace``), so a crash while
  saving never corrupts the last good checkpoint; loaded with ``torch.load(weights_only=True)``
  (tensors, numbers, strings, lists and dicts only — never arbitrary pickles) after a CRC check of the
  file. A file that cannot be read is a :class:`CorruptCheckpointError` naming it and what to do.
* Export: ``config.json`` + ``model.safetensors`` in a directory.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..field.options import FIELD_OPTION_NAMES


def save_state(path: str | os.PathLike, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half


# what every training checkpoint of this library holds (the trainers add their own parts)
_REQUIRED_KEYS = ("step", "config", "history")


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but cannot be read, or is not a drifting training checkpoint.

    The message names the file and what to do; the command line prints it and exits with status 2."""


def _what_to_do(path: Path) -> str:
    return (f"The file was left as it is. To go on, either keep it (move it aside, e.g. to {path.name}.bad, "
            "to look at it later) and start a new run in another --out, or copy an older checkpoint of this "
            f"same run (a backup) to {path} and resume again.")


def _reason(err: BaseException) -> str:
    """A one-line reason from a torch.load error. torch's weights-only message opens with advice to load with
    weights_only=False (unpickling arbitrary code), which is not ours to give: keep only the parser's
    reason."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def load_state(path: str | os.PathLike, map_location="cpu") -> dict:
    """The training state saved by :func:`save_state` at ``path``.

    Raises FileNotFoundError when there is no file, and :class:`CorruptCheckpointError` (a ValueError) naming
    the file and what to do when it cannot be read (truncated, overwritten, not a torch file, objects that
    ``weights_only`` refuses) or is not a dict holding ``step``, ``config`` and ``history``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # torch's reader checks no CRCs: a damaged stretch of tensor data would load as wrong weights
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()  # reads every member once (~0.1 s per 200 MB)
        if damaged is not None:
            raise CorruptCheckpointError(f"checkpoint {path} cannot be read (its member {damaged} fails the "
                                         f"CRC check): it is corrupt. {_what_to_do(path)}")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (MemoryError, CorruptCheckpointError):
        raise
    except (PermissionError, IsADirectoryError) as err:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({_reason(err)}); check the file's "
                                     "permissions and resume again") from err
    except Exception as err:  # noqa: BLE001 - torch's zip and pickle readers raise many kinds on a bad file
        raise CorruptCheckpointError(
            f"checkpoint {path} cannot be read ({_reason(err)}): it is corrupt, truncated or not a drifting "
            f"checkpoint. {_what_to_do(path)}") from err
    missing = ([k for k in _REQUIRED_KEYS if k not in state] if isinstance(state, dict)
               else list(_REQUIRED_KEYS))
    if missing:
        got = f"a dict without {missing}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CorruptCheckpointError(
            f"checkpoint {path} cannot be read as a drifting training checkpoint (it holds {got}). "
            f"{_what_to_do(path)}")
    return state


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


# config fields renamed since runs were first saved: old name -> new name (issue 34: guidance is "guidance")
RENAMED_FIELDS = {"cfg": "guidance", "sample_cfg": "sample_guidance"}


# config fields moved into a nested config since runs were first saved: field -> the nested config that holds
# it now (issue 34: the field's options are one FieldOptions, `field_options`)
MOVED_FIELDS = {name: "field_options" for name in FIELD_OPTION_NAMES}


def fill_defaults(stored: dict, defaults: dict) -> dict:
    """``stored`` (a checkpoint's JSON config) with the keys it lacks taken from ``defaults``, nested dicts
    included: a checkpoint written before an option existed reads as holding the option's default, one
    written under a field's old name (:data:`RENAMED_FIELDS`) as holding it under the new one, and one written
    before a field moved into a nested config (:data:`MOVED_FIELDS`) as holding it there."""
    out = {(RENAMED_FIELDS[k] if k in RENAMED_FIELDS and RENAMED_FIELDS[k] in defaults else k): v
           for k, v in stored.items()}
    for k in [k for k in out if k not in defaults and k in MOVED_FIELDS]:
        nest = MOVED_FIELDS[k]
        if isinstance(defaults.get(nest), dict) and k in defaults[nest]:
            out[nest] = {**out.get(nest, {}), k: out.pop(k)}
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = fill_defaults(out[k], v)
    return out

"""``drifting latent-stats``: Drift-RAE Tables 1-2 (isotropy, dispersion) and teacher curvature
(:mod:`drifting.recipes.latent_stats`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..recipes.latent_stats import DEFAULT_PER_CLASS, format_latent_stats, run_latent_stats
from .args import add_deprecated_alias, add_threads_option, positive_int


def _name_value(option: str, value_name: str):
    """An argparse ``type`` parsing ``NAME=VALUE`` into ``(name, value)`` with errors naming ``option``."""
    def parse(s: str) -> tuple[str, str]:
        name, sep, value = s.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(
                f"{option} expects NAME={value_name} (e.g. {option} "
                f"{'pixel=pixel' if option == '--space' else 'a=' + value_name}), got {s!r}")
        return name.strip(), value.strip()

    return parse


def _patch_arg(s: str) -> tuple[str | None, int]:
    name, sep, value = s.rpartition("=")
    try:
        p = int(value)
    except ValueError:
        p = 0
    if p < 1 or (sep and not name.strip()):
        raise argparse.ArgumentTypeError(f"--patch expects P or NAME=P with P a positive integer, got {s!r}")
    return (name.strip() if sep else None), p


def _pairs(pairs, option: str) -> dict:
    out = {}
    for name, value in pairs or []:
        if name in out:
            raise ValueError(f"{option}: the name {name!r} is given twice")
        out[name] = value
    return out


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def cmd_latent_stats(a: argparse.Namespace) -> int:
    spaces = _pairs(a.space, "--space")
    teachers = _pairs(a.teacher, "--teacher") or None
    patch: dict = {}
    for name, p in a.patch or []:
        if name is None:
            patch.update({n: p for n in spaces if n not in patch})
        elif name not in spaces:
            raise ValueError(f"--patch: {name!r} is not a --space name ({', '.join(spaces)})")
        else:
            patch[name] = p
    res = run_latent_stats(spaces, data=a.data, split=a.split, per_class=a.per_class, patch=patch, tau=a.tau,
                           teachers=teachers, curvature_n=a.curvature_n, curvature_steps=a.curvature_steps,
                           guidance_scale=a.guidance_scale, seed=a.seed, device=a.device, batch=a.batch,
                           progress=not a.no_progress)
    print(format_latent_stats(res))
    if a.json:
        p = Path(a.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_jsonable(res), indent=2, allow_nan=False) + "\n")
        print(f"wrote {p}")
    return 0


def add_latent_stats_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting latent-stats --space NAME=SPEC ...`` on ``subparsers`` (from
    ``add_subparsers``)."""
    def per_class_arg(s: str) -> int:
        v = positive_int(s)
        if v < 2:
            raise argparse.ArgumentTypeError("--per-class must be >= 2 (a covariance "
                                             f"needs 2 samples), got {v}")
        return v

    f = subparsers.add_parser(
        "latent-stats",
        help="isotropy, dispersion and teacher curvature of latent spaces (Drift-RAE Tables 1-2, Fig. 1)",
        description="Drift-RAE §3.2 / App. B.1 statistics, per class and per token: PR and SE (Table 1), "
        "NN-d and S-MMD (Table 2) of each --space on the first --per-class images of every class, and the "
        "curvature of each --teacher's flow-ODE trajectories (Fig. 1). Prints markdown tables.")
    f.add_argument("--space", action="append", required=True, type=_name_value("--space", "SPEC"),
                   metavar="NAME=SPEC", help="a latent space: NAME=tokenizer spec, e.g. pixel=pixel, "
                   "sdvae=autoencoderkl:DIR, rae=rae:DIR (repeatable)")
    f.add_argument("--teacher", action="append", default=None, type=_name_value("--teacher", "DIR"),
                   metavar="NAME=DIR",
                   help="a flow model directory (OUT/model of train-flow) for the curvature "
                   "table (repeatable)")
    f.add_argument("--patch", action="append", default=None, type=_patch_arg, metavar="[NAME=]P",
                   help="group PxP latent positions into one token (as a DiT with patch P); P alone applies "
                   "to every space without its own NAME=P (default 1)")
    f.add_argument("--data", default="fashion-mnist",
                   help="data spec (default fashion-mnist): mnist:<dir>, IDX "
                   "dir, .npz or image folder")
    f.add_argument("--split", default="test", help="train or test (default test)")
    f.add_argument("--per-class", type=per_class_arg, default=DEFAULT_PER_CLASS,
                   help=f"images per class, the same for every space (default {DEFAULT_PER_CLASS})")
    f.add_argument("--tau", type=float, default=1.0, help="S-MMD kernel temperature (default 1.0, Eq. 53)")
    f.add_argument("--curvature-n", type=positive_int, default=32,
                   help="trajectories per teacher (default 32)")
    f.add_argument("--curvature-steps", type=positive_int, default=50, help="Euler steps (default 50, >= 2)")
    f.add_argument("--guidance-scale", type=float, default=1.0, help="teacher guidance scale (default 1)")
    add_deprecated_alias(f, "--cfg-scale", "--guidance-scale", "guidance_scale", type=float)
    f.add_argument("--seed", type=int, default=0, help="seed of the teachers' start noise")
    f.add_argument("--device", default="cpu", help="cpu, cuda, ... (encoders, teachers and statistics)")
    f.add_argument("--batch", type=positive_int, default=256, help="images per encoder call (default 256)")
    f.add_argument("--json", default=None, metavar="OUT.json", help="also write the full result here")
    add_threads_option(f)
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_latent_stats)
    return f

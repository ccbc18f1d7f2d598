"""``drifting ablate NAME``: a paper ablation table at CPU scale (:mod:`drifting.recipes.ablations`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes.ablations import ABLATIONS, format_ablation, run_ablation
from .args import add_threads_option, positive_int


def cmd_ablate(a: argparse.Namespace) -> int:
    names = sorted(ABLATIONS) if a.name == "all" else [a.name]
    base = {"data": a.data} if a.data else {}
    for name in names:
        res = run_ablation(name, a.out, steps=a.steps, eval_samples=a.eval_samples, preset=a.preset,
                           progress=not a.no_progress, **base)
        print(format_ablation(res))
        print(f"wrote {Path(a.out) / (name + '.json')}\n")
    return 0


def add_ablate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting ablate NAME --out DIR [--steps S] [--eval-samples N] [--preset P]``."""
    p = subparsers.add_parser(
        "ablate", help="one of the paper's ablation tables at CPU scale",
        description="Train one generator per row of a paper ablation table and score each with the in-domain "
                    "classifier; runs are cached under OUT/runs (the default row is shared by all tables).")
    p.add_argument("name", choices=sorted(ABLATIONS) + ["all"], help="which table")
    p.add_argument("--out", required=True, help="directory for the runs and NAME.json")
    p.add_argument("--steps", type=positive_int, default=200, help="generator steps per row (default 200)")
    p.add_argument("--eval-samples", type=positive_int, default=1000,
                   help="samples scored per row (default 1000)")
    p.add_argument("--preset", default="cpu", help="training preset the rows start from (default cpu)")
    p.add_argument("--data", default=None, help="dataset (default: the preset's, fashion-mnist)")
    p.add_argument("--no-progress", action="store_true")
    add_threads_option(p)
    p.set_defaults(func=cmd_ablate)
    return p

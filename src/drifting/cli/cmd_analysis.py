"""``drifting guidance-sweep`` (Fig. 5), ``drifting neighbours`` (Fig. 6) and ``drifting drift-norm``: the
analyses of a trained image generator (:mod:`drifting.recipes.analysis`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..recipes.analysis import _check_alphas, _series, drift_diagnosis, guidance_sweep, nearest_neighbours
from ..recipes.evaluate import METRICS
from .args import add_threads_option, metric_list, positive_int


def _alphas_arg(s: str) -> tuple[float, ...]:
    try:
        return _check_alphas(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--alphas must be comma-separated "
                                         f"numbers >= 1, got {s!r}") from None


def cmd_guidance_sweep(a: argparse.Namespace) -> int:
    """Handler of ``drifting guidance-sweep``."""
    res = guidance_sweep(a.model, a.alphas, num=a.num, ref=a.ref, metrics=a.metrics, seed=a.seed,
                    out_dir=a.out, progress=not a.no_progress, n_ref=a.n_ref, inception=a.inception)
    for name, vals in _series(res["results"]).items():
        print(f"{name:20s} " + "  ".join(f"a={al:g}: {v:.4g}" for al, v in zip(res["alphas"], vals)))
    print(f"wrote {Path(a.out) / 'guidance_sweep.json'} and {Path(a.out) / 'guidance_sweep.png'}")
    return 0


def cmd_neighbours(a: argparse.Namespace) -> int:
    """Handler of ``drifting neighbours``."""
    res = nearest_neighbours(a.model, data=a.data, encoder_dir=a.encoder, num=a.num, k=a.k, seed=a.seed,
                             out_path=a.out, pool_size=a.pool_size)
    for lab, sims in zip(res["labels"], res["similarities"]):
        print(f"class {lab}: cosine " + " ".join(f"{s:.3f}" for s in sims))
    print(f"wrote {a.out}")
    return 0


def cmd_drift_norm(a: argparse.Namespace) -> int:
    """Handler of ``drifting drift-norm``."""
    res = drift_diagnosis(a.run, batches=a.batches, n_gen=a.n_gen, n_pos=a.n_pos, seed=a.seed)
    print(f"raw drift norm of {a.run} at N = {res['n_gen']}, P = {res['n_pos']} ({res['batches']} batches of "
          "every class), against real images in place of the samples (the floor):")
    print("| group @ tau | V2 | floor | V2 / floor | attraction V2 (floor) | repulsion V2 (floor) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, v in list(res["by_kind"].items()) + [("all", res["total"])]:
        print(f"| {k} | {v['V2']:.4g} | {v['floor_V2']:.4g} | {v['V2'] / max(v['floor_V2'], 1e-12):.2f} "
              f"| {v['V2_attr']:.4g} ({v['floor_V2_attr']:.4g}) | {v['V2_rep']:.4g} "
              f"({v['floor_V2_rep']:.4g}) |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.json}")
    return 0


def add_analysis_parsers(subparsers) -> None:
    """Register ``drifting guidance-sweep`` (Fig. 5), ``drifting neighbours`` (Fig. 6) and ``drifting
    drift-norm``."""

    # cfg-sweep: the command's old, deprecated name
    c = subparsers.add_parser("guidance-sweep", aliases=["cfg-sweep"],
                              help="FID / precision / recall vs the guidance scale alpha (Fig. 5)")
    c.add_argument("model", help="a generator export (OUT/model of `drifting train`)")
    c.add_argument("--alphas", type=_alphas_arg, default=(1.0, 1.5, 2.0, 3.0),
                   help="comma-separated, >= 1 (default 1,1.5,2,3)")
    c.add_argument("--num", type=positive_int, default=1000, help="samples per alpha (default 1000)")
    c.add_argument("--ref", required=True,
                   help="reference, e.g. fashion-mnist:test or an .npz (see `drifting eval`)")
    c.add_argument("--metrics", type=metric_list, default=("fid", "prdc"),
                   help=f"comma-separated, from: {', '.join(METRICS)} (default fid,prdc)")
    c.add_argument("--n-ref", type=positive_int, default=None, help="use the first N reference images")
    c.add_argument("--inception", default=None, help="FID Inception weights (see `drifting eval`)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True, help="directory for guidance_sweep.json and guidance_sweep.png")
    c.add_argument("--no-progress", action="store_true")
    add_threads_option(c)
    c.set_defaults(func=cmd_guidance_sweep)

    n = subparsers.add_parser("neighbours",
                              help="generated samples beside their top-k training neighbours (Fig. 6)")
    n.add_argument("model", help="a generator export (OUT/model of `drifting train`)")
    n.add_argument("--data", default=None, help="training data spec (default: the run's, else fashion-mnist)")
    n.add_argument("--encoder", default=None, help="ResNet-MAE export dir (default MODEL/../mae)")
    n.add_argument("--num", type=positive_int, default=8,
                   help="generated samples, one per class in turn (default 8)")
    n.add_argument("--k", type=positive_int, default=5, help="neighbours per sample (default 5)")
    n.add_argument("--pool-size", type=positive_int, default=None,
                   help="search only the first N training images")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", required=True, help="PNG path")
    add_threads_option(n)
    n.set_defaults(func=cmd_neighbours)

    d = subparsers.add_parser("drift-norm", help="the raw drift norm of a trained run per feature "
                              "group and temperature, attraction vs repulsion, against real images in "
                              "place of the samples")
    d.add_argument("run", help="a `drifting train --out` directory (with model/ and mae/)")
    d.add_argument("--batches", type=positive_int, default=4,
                   help="batches of every class averaged (default 4)")
    d.add_argument("--n-gen", type=positive_int, default=None,
                   help="samples per class (default: the run's N)")
    d.add_argument("--n-pos", type=positive_int, default=None,
                   help="positives per class (default: the run's P)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", default=None, help="also write the full result here")
    add_threads_option(d)
    d.set_defaults(func=cmd_drift_norm)

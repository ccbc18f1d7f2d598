"""Thin structures in ``drifting fit-points`` (issue 33 item 5): a helix of radius 1 with noise 0.05 beside a
blob, in 3-D. Does the generator reproduce the helix's thickness?

    python benchmarks/helix_spread.py                      # the defaults, seed 0 (about a minute)
    python benchmarks/helix_spread.py --seeds 0 1 2 --set steps=6000 --set temperatures=0.01,0.05,0.2

The data: 10,000 points, 75% on a helix (x, y, z) = (cos a, sin a, a / (2 pi)), a in [0, 4 pi] (two turns,
radius 1, pitch 1) plus isotropic Gaussian noise of std 0.05, and 25% in a Gaussian blob at (3, 0, 1) of std
0.3. The run holds out 20% of the rows (the fit-points default).

The measure: the helix points are those within 0.5 of the helix's cylinder (|r - 1| < 0.5 with r the distance
to the z axis, z in [-0.25, 2.25]); their radial spread is the RMS of r - 1. The table gives it for the
held-out data and for the 5000 samples, their ratio (the target: <= 1.5), the fraction of points on the helix
(the data's: about 0.75) and the energy distance against its floor. Writes OUT/helix_spread.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from drifting.field import FieldOptions
from drifting.recipes.point_fitting import PointsConfig, fit_points

HELIX_NOISE = 0.05
BLOB_CENTER = (3.0, 0.0, 1.0)


def helix_points(n: int = 10_000, seed: int = 0) -> np.ndarray:
    """``[n, 3]`` float32: the helix (75%) and the blob (25%) of the module docstring."""
    rng = np.random.default_rng(seed)
    on_helix = rng.random(n) < 0.75
    a = 4 * math.pi * rng.random(n)
    helix = np.stack([np.cos(a), np.sin(a), a / (2 * math.pi)], 1) + HELIX_NOISE * rng.standard_normal((n, 3))
    blob = np.array(BLOB_CENTER) + 0.3 * rng.standard_normal((n, 3))
    return np.where(on_helix[:, None], helix, blob).astype(np.float32)


def radial_spread(x: np.ndarray) -> tuple[float, float]:
    """(RMS of r - 1 over the points near the helix's cylinder, the fraction of points there)."""
    r = np.hypot(x[:, 0], x[:, 1])
    near = (np.abs(r - 1) < 0.5) & (x[:, 2] > -0.25) & (x[:, 2] < 2.25)
    return float(np.sqrt(np.mean((r[near] - 1) ** 2))), float(near.mean())


def _parse_set(items: list[str]) -> dict:
    """``key=value`` overrides of PointsConfig fields or of its field options (FieldOptions: temperatures,
    normalize, ...), tuples as comma-separated numbers."""
    known = {f.name: getattr(PointsConfig(), f.name) for f in fields(PointsConfig)
             if f.name != "field_options"}
    field_known = {f.name: getattr(FieldOptions(), f.name) for f in fields(FieldOptions)}
    out, field_over = {}, {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in known and key not in field_known:
            raise SystemExit(f"--set {item!r}: {key!r} is not a PointsConfig or FieldOptions field "
                             f"({', '.join([*known, *field_known])})")
        default = known[key] if key in known else field_known[key]
        if isinstance(default, tuple):
            v = tuple(float(v) for v in value.split(","))
        elif isinstance(default, bool):
            v = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            v = int(value)
        elif isinstance(default, float):
            v = float(value)
        else:
            v = value
        (out if key in known else field_over)[key] = v
    if field_over:
        out["field_options"] = field_over
    return out


def _config(data: Path, over: dict, **kw) -> PointsConfig:
    fo = FieldOptions(**over.get("field_options", {}))
    return PointsConfig(data=str(data), **{**over, "field_options": fo}, **kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/helix")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], help="a PointsConfig field, key=value (repeatable)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "helix3d.npy"
    np.save(data, helix_points())
    over = _parse_set(a.set)
    rows = []
    for seed in a.seeds:
        cfg = _config(data, over, seed=seed)
        t0 = time.perf_counter()
        res = fit_points(cfg, out / f"seed{seed}", progress=False)
        secs = time.perf_counter() - t0
        held = res.data.heldout.numpy()
        s_data, f_data = radial_spread(held)
        s_gen, f_gen = radial_spread(res.samples)
        rows.append({"seed": seed, "data_spread": s_data, "sample_spread": s_gen, "ratio": s_gen / s_data,
                     "data_on_helix": f_data, "samples_on_helix": f_gen,
                     "energy_vs_floor": res.metrics.get("energy_ratio_to_floor"), "seconds": secs})
    cpu = platform.processor() or platform.machine()
    print(f"CPU: {cpu}; overrides: {over or 'none (the defaults)'}\n")
    print("| seed | radial spread: data | samples | ratio | on the helix: data | samples | energy vs floor "
          "| s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ef = r["energy_vs_floor"]
        print(f"| {r['seed']} | {r['data_spread']:.4f} | {r['sample_spread']:.4f} | **{r['ratio']:.2f}x** | "
              f"{r['data_on_helix']:.3f} | {r['samples_on_helix']:.3f} | "
              f"{'-' if ef is None else f'{ef:.2f}x'} | {r['seconds']:.0f} |")
    cfg = asdict(_config(data, over))
    (out / "helix_spread.json").write_text(json.dumps({"overrides": over, "config": cfg, "rows": rows},
                                                      indent=2, default=list))
    print(f"\nwrote {out / 'helix_spread.json'}")


if __name__ == "__main__":
    main()

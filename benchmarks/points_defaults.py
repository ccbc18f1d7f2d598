"""``fit-points``'s defaults by dimension: the 2-D setting against the setting chosen from d = 3 on.

    python examples/make_point_files.py data
    python benchmarks/points_defaults.py --files data/swissroll3d.csv data/mix4d.npy data/mix6d.npy \
        --seeds 0 1

For every file and seed, two runs of 4000 steps: "2-D rule" (batch = n_pos = 256, noise_dim max(8, 2 d),
cosine to 5%: the defaults before session 17 for every d) and "d-rule" (today's defaults,
PointsConfig.resolved: for d >= 3 batch = n_pos = 512, noise_dim = d, cosine to 0). Prints the energy distance
against its floor and the seconds, and writes OUT/points_defaults.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from drifting.recipes.point_fitting import PointsConfig, fit_points

SETTINGS = {
    "2-D rule": dict(batch=256, n_pos=256, min_lr_ratio=0.05),  # noise_dim set per file below
    "d-rule": {},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/points_defaults")
    a = p.parse_args()
    out = Path(a.out)
    rows = []
    for f in a.files:
        for seed in a.seeds:
            for name, over in SETTINGS.items():
                cfg = PointsConfig(data=f, seed=seed, **over)
                t0 = time.perf_counter()
                res = fit_points(cfg if name == "d-rule" else _two_d_noise(cfg, f), None, progress=False)
                rows.append({"file": f, "dim": res.metrics["dim"], "seed": seed, "setting": name,
                             "energy_vs_floor": res.metrics["energy_ratio_to_floor"],
                             "seconds": time.perf_counter() - t0})
                r = rows[-1]
                print(f"| {Path(f).name} | {r['dim']} | {seed} | {name} | {r['energy_vs_floor']:.2f}x | "
                      f"{r['seconds']:.0f} |", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "points_defaults.json").write_text(json.dumps(
        {"cpu": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {out / 'points_defaults.json'}")


def _two_d_noise(cfg: PointsConfig, f: str) -> PointsConfig:
    """The 2-D rule's noise dimension, max(8, 2 d), for the file's d."""
    from dataclasses import replace

    from drifting.recipes.point_fitting import prepare_data

    d = prepare_data(cfg).dim
    return replace(cfg, noise_dim=max(8, 2 * d))


if __name__ == "__main__":
    main()

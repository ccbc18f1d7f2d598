"""Write the user-style point files used in docs/results.md (any [n, d] .npy/.csv works the same).

    python examples/make_point_files.py OUT_DIR
    drifting fit-points OUT_DIR/mix4d.npy --out runs/mix4d

* mix4d.npy        10000 x 4: four Gaussian clusters (centers ~N(0, 3^2), correlated noise)
* swissroll3d.csv  10000 x 3 with a header row: a 3-D swiss roll (t cos t, h, t sin t) + noise 0.5
* mix6d.npy         8000 x 6: three far-apart anisotropic clusters (centers ~N(0, 40^2), stds 1..8)
"""

import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 10000
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    h = 21 * rng.random(n)
    roll = np.stack([t * np.cos(t), h, t * np.sin(t)], 1) + rng.normal(size=(n, 3)) * 0.5
    np.savetxt(out / "swissroll3d.csv", roll, delimiter=",", header="x,y,z", comments="", fmt="%.5f")
    centers = rng.normal(size=(4, 4)) * 3
    k = rng.integers(0, 4, n)
    mixing = rng.normal(size=(4, 4)) * 0.5
    np.save(out / "mix4d.npy", (centers[k] + rng.normal(size=(n, 4)) @ mixing).astype(np.float32))

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 40
    k = rng.integers(0, 3, 8000)
    x = centers[k] + rng.normal(size=(8000, 6)) * np.array([1, 5, 2, 8, 3, 1])
    np.save(out / "mix6d.npy", x.astype(np.float32))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data"))

"""Numerical check of Drift-RAE Theorem 1: dispersed positives lose their attraction as d grows.

Setting of the theorem (Drift-RAE §3.2, Eq. 6-7; proof in App. A.1): ``d`` positives
``y_i`` uniform on the unit sphere S^{d-1}, ``d`` negatives ``x_j`` uniform in ``[-r, r]^d``,
and the *simplified* field without the ``- x_j`` terms::

    V_j+ = sum_i softmax_i(-|y_i - x_j| / tau) y_i                     (i = 1..d)
    V_j- = sum_{k != j} softmax_k(-|x_k - x_j| / tau) x_k              (k != j, self excluded)
    V_j  = V_j+ - V_j-

For each d, tau and seed we average ``|V_j+|^2``, ``|V_j-|^2`` and ``|V_j|^2`` over j, then over
seeds, and compare with the claims: (1) ``|V_j+|^2 ~ 1/d`` (Eq. 28-29: uniform weights, the
mean of d random unit vectors), (2) ``V_j -> 0``. The proof itself ends with
``|V_j-| -> r / sqrt(3)`` (Eq. 24) and ``|V_j| -> r / sqrt(3)`` (Eq. 30), so the table also
lists ``r^2 / 3``. Contrast case: *concentrated* positives ``y_i = mu + s g_i / sqrt(d)`` (a
tight cluster of radius ~s around a unit vector mu, s = 0.1), where ``|V_j+|^2 ~ |mu|^2 = 1``
does not vanish.

What the default run shows (r = 1): claim (1) holds - ``d |V+|^2 -> 1`` (1.006 at d = 1024 for
tau = 1; for tau = 0.05 the weights only flatten once ``d >> 1/tau^2``, 1.87 at d = 1024) - while
the concentrated positives keep ``|V+|^2 ~ 1``. Claim (2) does not: the repulsion stays, so
``|V|^2 -> |V-|^2`` ~ 0.46 for tau = 1 (the proof's r^2/3 is reached only for large tau, where
the negative softmax is uniform; its step "u_i / R_i -> 0" fails for the negatives since
``std <x, z_i>`` grows like sqrt(d)), and ``|V-|^2`` grows like d for tau = 0.05 (nearly
one-hot weights). What vanishes is the attraction, relative to the repulsion.

    python benchmarks/theorem1.py            # default: d = 2..1024, 5 seeds, tau = 1 and 0.05
    python benchmarks/theorem1.py --dims 8 64 512 --seeds 3 --taus 1.0 --out /tmp/t1

Writes ``<out>/theorem1.json`` and ``<out>/theorem1.png`` (default out: benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

CLUSTER_RADIUS = 0.1  # s of the concentrated contrast case


def drift_terms(y: torch.Tensor, x: torch.Tensor, tau: float) -> dict[str, float]:
    """Mean over j of ``|V_j+|^2``, ``|V_j-|^2``, ``|V_j|^2`` (Eq. 7) for positives ``y [P, d]``, negatives
    ``x [N, d]``."""
    # torch.cdist's matrix-product form: float64 keeps its cancellation error (~1e-8 |x|) far
    # below the distance spread that the softmaxes see; the self term is masked, not computed.
    d_yx = torch.cdist(x, y)  # [N, P]   |y_i - x_j|
    d_xx = torch.cdist(x, x)  # [N, N]   |x_k - x_j|
    d_xx.fill_diagonal_(math.inf)  # k != j
    v_pos = torch.softmax(-d_yx / tau, dim=1) @ y  # [N, d]  V_j+
    v_neg = torch.softmax(-d_xx / tau, dim=1) @ x  # [N, d]  V_j-
    v = v_pos - v_neg  # [N, d]  V_j
    return {
        "v_pos_sq": float(v_pos.square().sum(1).mean()),
        "v_neg_sq": float(v_neg.square().sum(1).mean()),
        "v_sq": float(v.square().sum(1).mean()),
    }


def sample(d: int, r: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispersed positives ``[d, d]`` on S^{d-1}, negatives ``[d, d]`` in [-r, r]^d, concentrated positives
    ``[d, d]``."""
    g = torch.Generator().manual_seed(1_000_003 * seed + d)
    y = torch.randn(d, d, generator=g, dtype=torch.float64)
    y = y / y.norm(dim=1, keepdim=True)  # uniform on the unit sphere
    x = (torch.rand(d, d, generator=g, dtype=torch.float64) * 2 - 1) * r  # uniform in the cube
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    mu = mu / mu.norm()
    y_conc = mu + CLUSTER_RADIUS * torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return y, x, y_conc


def run(dims: list[int], seeds: int, r: float, taus: list[float]) -> dict:
    rows = []
    for tau in taus:
        for d in dims:
            acc: dict[str, list[float]] = {}
            for seed in range(seeds):
                y, x, y_conc = sample(d, r, seed)
                for prefix, pos in (("", y), ("conc_", y_conc)):
                    for k, v in drift_terms(pos, x, tau).items():
                        acc.setdefault(prefix + k, []).append(v)
            row = {"d": d, "tau": tau}
            for k, vals in acc.items():
                row[k] = sum(vals) / len(vals)
                row[k + "_std"] = float(torch.tensor(vals).std()) if len(vals) > 1 else 0.0
            row["d_times_v_pos_sq"] = d * row["v_pos_sq"]
            rows.append(row)
    return {
        "config": {"dims": dims, "seeds": seeds, "r": r, "taus": taus, "cluster_radius": CLUSTER_RADIUS,
                   "claims": {"v_pos_sq": "1/d", "v_sq": "0 (theorem) / r^2/3 (proof, Eq. 30)"}},
        "r2_over_3": r * r / 3,
        "rows": rows,
    }


def print_table(res: dict) -> None:
    head = ["tau", "d", "|V+|^2", "1/d", "d|V+|^2", "|V-|^2", "|V|^2", "r^2/3", "conc |V+|^2", "conc |V|^2"]
    print("  ".join(f"{h:>11}" for h in head))
    for w in res["rows"]:
        vals = [w["tau"], w["d"], w["v_pos_sq"], 1 / w["d"], w["d_times_v_pos_sq"], w["v_neg_sq"], w["v_sq"],
                res["r2_over_3"], w["conc_v_pos_sq"], w["conc_v_sq"]]
        print("  ".join(f"{v:>11d}" if isinstance(v, int) else f"{v:>11.4g}" for v in vals))


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = res["config"]["taus"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ti, tau in enumerate(taus):
        rows = [w for w in res["rows"] if w["tau"] == tau]
        d = [w["d"] for w in rows]
        col = f"C{ti}"
        axes[0].loglog(d, [w["v_pos_sq"] for w in rows], "o-", color=col,
                       label=f"uniform sphere, tau={tau:g}")
        axes[0].loglog(d, [w["conc_v_pos_sq"] for w in rows], "s--", color=col,
                       label=f"concentrated, tau={tau:g}")
        axes[1].loglog(d, [w["v_sq"] for w in rows], "o-", color=col, label=f"|V|^2, tau={tau:g}")
        axes[1].loglog(d, [w["v_neg_sq"] for w in rows], "x:", color=col, label=f"|V-|^2, tau={tau:g}")
    dims = res["config"]["dims"]
    axes[0].loglog(dims, [1 / d for d in dims], "k-", lw=1, label="1/d (Theorem 1)")
    axes[1].axhline(res["r2_over_3"], color="k", lw=1, label="r^2/3 (proof, Eq. 30)")
    axes[0].set(xlabel="d", ylabel="mean_j |V_j+|^2", title="attraction")
    axes[1].set(xlabel="d", ylabel="mean_j |V_j|^2", title="total field (dispersed positives)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--seeds", type=int, default=5, help="independent draws per (d, tau) (default 5)")
    p.add_argument("--r", type=float, default=1.0, help="negatives uniform in [-r, r]^d (default 1)")
    p.add_argument("--taus", type=float, nargs="+", default=[1.0, 0.05], help="kernel temperatures")
    p.add_argument("--out", default="benchmarks/results", help="folder for theorem1.json / theorem1.png")
    a = p.parse_args()
    if min(a.dims) < 2 or a.seeds < 1 or a.r <= 0 or min(a.taus) <= 0:
        p.error("need dims >= 2 (a negative needs another negative), seeds >= 1, r > 0, taus > 0")
    t0 = time.perf_counter()
    res = run(a.dims, a.seeds, a.r, a.taus)
    res["seconds"] = time.perf_counter() - t0
    print_table(res)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "theorem1.json").write_text(json.dumps(res, indent=2))
    plot(res, out / "theorem1.png")
    print(f"{res['seconds']:.1f} s; wrote {out / 'theorem1.json'} and {out / 'theorem1.png'}")


if __name__ == "__main__":
    main()

"""The paper's toy studies at CPU scale: Fig. 3, Fig. 4 and a toy version of Tables 1, 11 and the
A.6 temperature table, each measured by the energy distance to held-out target samples.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..eval import figures as fig
from .point_fitting import PointsConfig, fit_points

BIMODAL_MODES = np.array([[-2.0, -2.0], [2.0, 2.0]])  # the centers of the "bimodal" target

# Fig. 3's three initializations of q for the bimodal target.
FIG3_INITS = {
    "between the modes": (0.0, 0.0),
    "far from both": (-6.0, 6.0),
    "collapsed on one mode": (2.0, 2.0),
}


def mode_masses(samples: np.ndarray, modes: np.ndarray = BIMODAL_MODES) -> list[float]:
    """Fraction of samples whose nearest mode is each of ``modes``."""
    d = ((samples[:, None, :] - modes[None]) ** 2).sum(-1)  # [k, n_modes]
    nearest = d.argmin(1)
    return [float((nearest == i).mean()) for i in range(len(modes))]


def _fmt_table(header: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows])


def figure3(out: str | Path, *, steps: int = 3000, seed: int = 0, progress: bool = True, **overrides) -> dict:
    """Fig. 3: q evolving toward a bimodal p from three initializations; all must cover both modes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, hist_rows, results = [], [], {}
    for label, center in FIG3_INITS.items():
        cfg = PointsConfig(data="bimodal", steps=steps, seed=seed, init_center=center, init_spread=0.3,
                           **overrides)
        r = fit_points(cfg, None, progress=progress)
        masses = mode_masses(r.samples)
        results[label] = {"init_center": center, "mode_masses": masses, **_brief(r.metrics)}
        rows.append([label, str(center), f"{masses[0]:.3f} / {masses[1]:.3f}",
                     f"{r.metrics['samples_vs_heldout']['energy_distance']:.2e}",
                     f"{r.metrics['energy_ratio_to_floor']:.2f}x"])
        hist_rows.append((label, r.history))
    fig.plot_rows(hist_rows, r.data.heldout.numpy(), out / "fig3.png",
                  title="Fig. 3: drifting toward a bimodal target")
    table = _fmt_table(["initialization", "init center", "mass on mode 1 / 2", "energy dist.", "vs floor"],
                       rows)
    (out / "fig3.json").write_text(json.dumps({"steps": steps, "seed": seed, "runs": results}, indent=2))
    return {"table": table, "results": results, "files": [str(out / "fig3.png"), str(out / "fig3.json")]}


def figure4(out: str | Path, *, steps: int = 4000, seed: int = 0, progress: bool = True,
            targets: tuple[str, ...] = ("8gaussians", "swissroll"), **overrides) -> dict:
    """Fig. 4: samples at several iterations and the drift norm ||V||^2 (log scale), on two 2-D cases."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, results, files = [], {}, []
    for t in targets:
        r = fit_points(PointsConfig(data=t, steps=steps, seed=seed, **overrides), None, progress=progress)
        path = out / f"fig4_{t}.png"
        fig.plot_evolution(r.history, r.data.heldout.numpy(), path, title=f"Fig. 4: {t}")
        files.append(str(path))
        v2 = r.history["V2"]
        # q starts collapsed, so ||V||^2 first rises for a few dozen steps, then falls
        peak = int(np.argmax(v2))
        results[t] = {**_brief(r.metrics), "V2_peak": v2[peak], "V2_peak_step": r.history["step"][peak],
                      "V2_last": v2[-1]}
        rows.append([t, f"{v2[peak]:.2e} (step {r.history['step'][peak]})", f"{v2[-1]:.2e}",
                     f"{r.metrics['samples_vs_heldout']['energy_distance']:.2e}",
                     f"{r.metrics['energy_ratio_to_floor']:.2f}x"])
    (out / "fig4.json").write_text(json.dumps({"steps": steps, "seed": seed, "runs": results}, indent=2))
    files.append(str(out / "fig4.json"))
    table = _fmt_table(["target", "||V||^2 peak", "||V||^2 last", "energy dist.", "vs floor"], rows)
    return {"table": table, "results": results, "files": files}


# (section, label, overrides of the field's options, PointsConfig.field_options)
ABLATION_VARIANTS: list[tuple[str, str, dict]] = [
    ("Table 1: anti-symmetry", "anti-symmetric V+ - V- (default)", {}),
    ("Table 1: anti-symmetry", "1.5x attraction", {"attraction": 1.5}),
    ("Table 1: anti-symmetry", "1.5x repulsion", {"repulsion": 1.5}),
    ("Table 1: anti-symmetry", "2.0x attraction", {"attraction": 2.0}),
    ("Table 1: anti-symmetry", "2.0x repulsion", {"repulsion": 2.0}),
    ("Table 1: anti-symmetry", "attraction-only V+", {"repulsion": 0.0}),
    ("Table 11: kernel normalization", "softmax over x and y (default)", {}),
    ("Table 11: kernel normalization", "softmax over y", {"normalize": "y"}),
    ("Table 11: kernel normalization", "no normalization (Z = 1)", {"normalize": "none"}),
    ("A.6: temperatures", "tau = 0.02", {"temperatures": (0.02,)}),
    ("A.6: temperatures", "tau = 0.05", {"temperatures": (0.05,)}),
    ("A.6: temperatures", "tau = 0.2", {"temperatures": (0.2,)}),
    ("A.6: temperatures", "tau in {0.02, 0.05, 0.2} (default)", {}),
]


def ablation(out: str | Path, *, target: str = "checkerboard", steps: int = 2000, seed: int = 0,
             progress: bool = True, variants=None, **overrides) -> dict:
    """The toy ablation: every variant trained with the same budget, energy distance side by side.

    The default run appears in each section's table but is trained once.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = ABLATION_VARIANTS if variants is None else variants
    base = PointsConfig(data=target, steps=steps, seed=seed, **overrides)
    cache: dict[str, dict] = {}
    results: list[dict] = []
    for section, label, ov in variants:
        key = json.dumps(ov, sort_keys=True)
        if key not in cache:
            r = fit_points(replace(base, field_options=replace(base.field_options, **ov)), None,
                           progress=progress)
            cache[key] = {**_brief(r.metrics), "V2_last": r.history["V2"][-1]}
        results.append({"section": section, "variant": label, "overrides": ov, **cache[key]})
    parts = []
    for section in dict.fromkeys(r["section"] for r in results):
        rows = [[r["variant"], f"{r['energy_distance']:.3e}", f"{r['ratio_to_floor']:.2f}x",
                 f"{r['V2_last']:.2e}"]
                for r in results if r["section"] == section]
        parts.append(f"{section} ({target}, {steps} steps, seed {seed})\n"
                     + _fmt_table(["variant", "energy dist.", "vs floor", "final ||V||^2"], rows))
    floor = results[0]["floor_energy_distance"]
    table = "\n\n".join(parts) + f"\n\ndata-vs-data floor (energy distance): {floor:.3e}"
    (out / "ablation.json").write_text(json.dumps({"target": target, "steps": steps, "seed": seed,
                                                   "runs": results}, indent=2))
    (out / "ablation.md").write_text(table + "\n")
    return {"table": table, "results": results,
            "files": [str(out / "ablation.json"), str(out / "ablation.md")]}


def _brief(m: dict) -> dict:
    return {
        "energy_distance": m["samples_vs_heldout"]["energy_distance"],
        "mmd2": m["samples_vs_heldout"]["mmd2"],
        "floor_energy_distance": m["data_vs_heldout"]["energy_distance"],
        "floor_mmd2": m["data_vs_heldout"]["mmd2"],
        "ratio_to_floor": m["energy_ratio_to_floor"],
        "train_seconds": m["train_seconds"],
    }

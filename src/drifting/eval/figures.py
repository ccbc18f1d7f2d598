"""Figures for the point-cloud runs: loss / drift-norm curves and sample evolution (Fig. 3-4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_GEN = "tab:orange"
_DATA = "tab:blue"


def _lims(*arrays: np.ndarray, pad: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    pts = np.concatenate([np.asarray(a).reshape(-1, 2) for a in arrays])
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return (lo[0], hi[0]), (lo[1], hi[1])


def _finish(fig, path: str | Path, title: str) -> None:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scatter(a, target: np.ndarray, pts: np.ndarray, xl, yl) -> None:
    """Target (blue) under generated points (orange) on one square panel."""
    a.scatter(target[:, 0], target[:, 1], s=1, c=_DATA, alpha=0.25, lw=0)
    a.scatter(pts[:, 0], pts[:, 1], s=1, c=_GEN, alpha=0.5, lw=0)
    a.set(xlim=xl, ylim=yl, xticks=[], yticks=[])
    a.set_aspect("equal", adjustable="box")


def _v2_axis(a, history: dict, title: str) -> None:
    a.plot(history["step"], history["V2"], color=_GEN, lw=1)
    a.set(xlabel="step", ylabel="||V||^2", yscale="log", title=title)
    a.title.set_fontsize(9)
    a.grid(alpha=0.3)


def plot_curves(history: dict, path: str | Path, *, title: str = "") -> None:
    """Loss and raw drift norm (sum over temperatures of mean ||V||^2) vs step, log y."""
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(history["step"], history["loss"], color="k", lw=1)
    ax[0].set(xlabel="step", ylabel="loss", yscale="log",
              title="loss (normalized drift: ~constant by design)")
    ax[0].title.set_fontsize(9)
    ax[0].grid(alpha=0.3)
    _v2_axis(ax[1], history, "raw drift norm ||V||^2")
    _finish(fig, path, title)


def plot_evolution(history: dict, target: np.ndarray, path: str | Path, *, title: str = "") -> None:
    """Generated points (orange) over the target (blue) at the snapshot steps, plus the V^2 curve."""
    snaps = history["snapshots"]
    steps = sorted(snaps, key=int)
    target = np.asarray(target)[:2000]
    xl, yl = _lims(target, *[snaps[s] for s in steps[-1:]], pad=0.25)
    n = len(steps)
    fig, ax = plt.subplots(1, n + 1, figsize=(2.4 * (n + 1), 2.6))
    for a, s in zip(ax, steps):
        _scatter(a, target, np.asarray(snaps[s]), xl, yl)
        a.set_title(f"step {s}", fontsize=9)
    _v2_axis(ax[-1], history, "||V||^2 (log)")
    _finish(fig, path, title)


def plot_rows(rows: list[tuple[str, dict]], target: np.ndarray, path: str | Path, *, title: str = "") -> None:
    """Several runs' evolutions, one row each (Fig. 3): ``rows = [(label, history), ...]``."""
    target = np.asarray(target)[:2000]
    steps = sorted(rows[0][1]["snapshots"], key=int)
    allpts = [target] + [np.asarray(h["snapshots"][s]) for _, h in rows for s in steps]
    xl, yl = _lims(*allpts, pad=0.1)
    fig, ax = plt.subplots(len(rows), len(steps), figsize=(2.2 * len(steps), 2.3 * len(rows)), squeeze=False)
    for r, (label, hist) in enumerate(rows):
        for c, s in enumerate(steps):
            a = ax[r, c]
            _scatter(a, target, np.asarray(hist["snapshots"][s]), xl, yl)
            if r == 0:
                a.set_title(f"step {s}", fontsize=9)
            if c == 0:
                a.set_ylabel(label, fontsize=9)
    _finish(fig, path, title)

"""The paper's ablations at CPU scale: one command per table (``drifting ablate NAME``).

Each ablation is a list of rows; a row is a set of :class:`~drifting.recipes.image_config.ImageTrainConfig`
overrides on a shared base (the ``cpu`` preset with fewer steps). Every row trains a generator
and is scored by the in-domain classifier (accuracy of one-step samples and a classifier-feature
FID to the test split, see :func:`~drifting.recipes.image_training.evaluate_generator`). Runs are keyed
by a hash of their full configuration, so a row shared by several tables (the default, which
every table has) is trained once, and an interrupted ablation resumes where it stopped.

The ``default, seed 1`` row repeats the default with another seed: differences between rows
smaller than its difference to the default are within run-to-run noise at this budget.

Paper tables: anti-symmetry (Table 1), kernel normalization (Table 11), allocation of positives
and negatives (Table 2), feature sets (A.5), temperatures (A.6), style tokens (A.2), encoder
width (Table 3's width trend).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cache import content_key
from ..training.checkpoint import jsonable
from .image_config import ImageTrainConfig, train_preset
from .image_training import train_images


@dataclass(frozen=True)
class Ablation:
    title: str  # the paper table it mirrors
    # (label, ImageTrainConfig overrides); "mae", "field_options": dicts of MAEConfig / FieldOptions fields
    rows: tuple[tuple[str, dict], ...]


_DEFAULT = ("default", {})
_SEED1 = ("default, seed 1", {"seed": 1})


def _field(**options) -> dict:
    """A row's overrides of the field's options (ImageTrainConfig.field_options)."""
    return {"field_options": options}


ABLATIONS: dict[str, Ablation] = {
    "antisymmetry": Ablation("Table 1: anti-symmetry of V (a V+ - r V-)", (
        ("anti-symmetric (default)", {}), ("1.5x attraction", _field(attraction=1.5)),
        ("1.5x repulsion", _field(repulsion=1.5)), ("2.0x attraction", _field(attraction=2.0)),
        ("2.0x repulsion", _field(repulsion=2.0)), ("attraction-only", _field(repulsion=0.0)), _SEED1)),
    "normalization": Ablation("Table 11: kernel normalization", (
        ("softmax over x and y (default)", {}), ("softmax over y only", _field(normalize="y")),
        ("no normalization", _field(normalize="none")), _SEED1)),
    "allocation": Ablation("Table 2: positives and negatives at a fixed generated batch Nc x N = 80", (
        ("Nc 10, P 1, N 8", {"n_pos": 1}), ("Nc 10, P 2, N 8", {"n_pos": 2}),
        ("Nc 10, P 4, N 8", {"n_pos": 4}), ("Nc 10, P 8, N 8 (default)", {}),
        ("Nc 5, P 16, N 16", {"classes_per_step": 5, "n_pos": 16, "n_gen": 16}),
        ("Nc 2, P 40, N 40", {"classes_per_step": 2, "n_pos": 40, "n_gen": 40}), _SEED1)),
    "features": Ablation("A.5: feature sets", (
        ("(a, b)", {"feature_sets": "ab"}), ("(a-c)", {"feature_sets": "abc"}), ("(a-d) (default)", {}),
        _SEED1)),
    "temperatures": Ablation("A.6: temperatures", (
        ("tau 0.02", _field(temperatures=(0.02,))), ("tau 0.05", _field(temperatures=(0.05,))),
        ("tau 0.2", _field(temperatures=(0.2,))), ("tau {0.02, 0.05, 0.2} (default)", {}), _SEED1)),
    "style": Ablation("A.2: style tokens", (
        ("32 style tokens (default)", {}), ("no style tokens", {"style_tokens": 0}), _SEED1)),
    "encoder-width": Ablation("Table 3: feature-encoder width (ResNet-MAE base width C)", (
        ("C = 4", {"mae": {"width": 4}}), ("C = 8 (default)", {}), ("C = 16", {"mae": {"width": 16}}),
        _SEED1)),
}


def ablation_config(overrides: dict, *, preset: str = "cpu", steps: int = 200, eval_samples: int = 1000,
                    **base) -> ImageTrainConfig:
    """The row config: ``preset`` with ``steps``/``eval_samples`` and ``base`` overrides, then the row's
    (``mae``: a dict of MAE config fields, as in :func:`~drifting.recipes.image_config.train_preset`)."""
    kw = {"steps": steps, "minutes": 0, "eval_samples": eval_samples, "sample_every": steps,  # a step budget
          "ckpt_every": max(1, min(100, steps)), **base, **overrides}
    return train_preset(preset, **kw)


def _run_dir(root: Path, cfg: ImageTrainConfig) -> Path:
    return root / "runs" / content_key(jsonable(asdict(cfg)))[:16]


def run_row(cfg: ImageTrainConfig, root: Path, *, progress: bool = True) -> dict:
    """Train (or resume, or reuse) the run of ``cfg`` under ``root/runs/<hash>``; return its metrics."""
    d = _run_dir(root, cfg)
    done = d / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(jsonable(asdict(cfg)), indent=2))
    run = train_images(cfg, d, progress=progress, resume=(d / "checkpoint.pt").is_file())
    if run.metrics is None:
        raise ValueError(f"data {cfg.data!r} has no test split to score the ablation on")
    return run.metrics


def run_ablation(name: str, out: str | Path, *, steps: int = 200, eval_samples: int = 1000,
                 preset: str = "cpu", progress: bool = True, **base) -> dict:
    """Train and score every row of ``ABLATIONS[name]``; write ``OUT/NAME.json`` and return the result."""
    if name not in ABLATIONS:
        raise ValueError(f"name: unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    ab, root = ABLATIONS[name], Path(out)
    cfgs = [(label, ablation_config(o, preset=preset, steps=steps, eval_samples=eval_samples, **base))
            for label, o in ab.rows]  # validate every row before training any
    rows, t0 = [], time.perf_counter()
    for label, cfg in cfgs:
        m = run_row(cfg, root, progress=progress)
        rows.append({"row": label, "accuracy": m["accuracy"], "clf_fid": m["classifier_fid"],
                     "train_seconds": m.get("train_seconds"),
                     "run": str(_run_dir(root, cfg))})
    res = {"ablation": name, "title": ab.title, "preset": preset, "steps": steps,
           "eval_samples": eval_samples, "base_overrides": jsonable(base), "rows": rows,
           "floor_clf_fid": m.get("floor_classifier_fid"), "seconds": time.perf_counter() - t0}
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.json").write_text(json.dumps(res, indent=2))
    return res


def format_ablation(res: dict) -> str:
    """A Markdown table like the paper's: one line per row, classifier metrics and training time."""
    lines = [f"{res['title']} ({res['preset']} preset, {res['steps']} steps, {res['eval_samples']} samples)",
             "", "| row | classifier accuracy | classifier-feature FID | train s |",
             "| --- | --- | --- | --- |"]
    for r in res["rows"]:
        t = f"{r['train_seconds']:.0f}" if r["train_seconds"] is not None else "-"
        lines.append(f"| {r['row']} | {r['accuracy']:.3f} | {r['clf_fid']:.1f} | {t} |")
    if res.get("floor_clf_fid") is not None:
        lines.append("\n(classifier-feature FID of real train images at this sample "
                     f"size: {res['floor_clf_fid']:.2f})")
    return "\n".join(lines)

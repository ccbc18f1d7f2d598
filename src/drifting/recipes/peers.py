"""Drifting next to its peers on the same data, backbone and budget (``drifting peers``).

Four generators share the generator preset's backbone, the data and the per-step batch:

* **drifting** (1 NFE): the image trainer of :mod:`drifting.recipes.image_training` as configured by
  ``preset``;
* **MMD** (1 NFE): the same trainer, feature space and samples, with the drifting field replaced by
  the field of a squared-MMD loss with Gaussian kernels (paper C.2, Eq. 41-45) and no drift
  normalization, so its gradient is that of MMD^2 summed over the bandwidths ``MMD_BANDWIDTHS``
  (multiples of the mean feature distance; the paper's temperatures would make a Gaussian kernel
  vanish, exp(-1/(2 * 0.02^2)) = 0 in float32);
* **flow matching** (K NFE): a time-conditioned DiT trained on as many real images per step as
  drifting generates, sampled with Euler at K = 1, 2, 4, ..., 50 steps (:mod:`drifting.recipes.flow`);
* **MeanFlow** (1 and 2 NFE): the same network with an (r, t) embedding, trained from scratch on the same
  batches with the MeanFlow identity (:mod:`drifting.recipes.meanflow`), the one-step method trained from
  scratch that the drifting paper compares with.

All are sampled without guidance (alpha = 1, CFG scale 1) with the same labels, and scored by
:func:`drifting.recipes.evaluate.evaluate` (FID, precision/recall with the FID Inception network,
and the in-domain classifier) against the first ``eval_n`` test images. Training time is wall
time on this machine; sampling throughput is images per second at batch 500.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.images import load_dataset
from ..training.checkpoint import fill_defaults, jsonable
from .distill import DistillConfig, distill
from .evaluate import evaluate
from .flow import FlowTrainConfig, flow_generate, load_flow_model, train_flow
from .image_config import ImageTrainConfig, train_preset
from .image_sampling import generate, load_generator, write_grid
from .image_training import train_images

EULER_STEPS = (1, 2, 4, 8, 16, 32, 50)
MEANFLOW_STEPS = (1, 2)  # MeanFlow's 1-NFE and 2-NFE samplers
METHODS = ("drifting", "mmd", "flow", "meanflow")
MMD_BANDWIDTHS = (0.25, 0.5, 1.0)  # sigma / (mean distance) per feature group, in normalized features


# The peers' own tuning, under --flow / --meanflow (docs/results.md): flow matching's best of the 8-minute
# search (session 9); MeanFlow's best at 15 minutes (sessions 13-14): lr 1e-3, half the batch on r != t,
# and a slow time embedding, sincos(t) instead of DiT's sincos(1000 t) (its JVP differentiates through it;
# Inception FID 150 -> 113 at one step).
FLOW_PEER = {"lr": 3e-3, "lr_decay": 0.5}
MEANFLOW_PEER = {"lr": 1e-3, "meanflow_ratio": 0.5, "meanflow_time": (-0.4, 1.0),
                 "generator_overrides": {"time_scale": 1.0}}

# the step cap of a run with a wall-time budget and no --steps: the budget ends it
MAX_STEPS = 10_000_000


def peer_configs(*, preset: str = "cpu", steps: int | None = None, flow_steps: int | None = None,
                 minutes: float | None = None, flow: dict | None = None, meanflow: dict | None = None,
                 **overrides) -> dict[str, object]:
    """``{"drifting": ImageTrainConfig, "mmd": ImageTrainConfig, "flow": FlowTrainConfig, "meanflow":
    FlowTrainConfig}`` on one budget: the same steps (``steps``, ``flow_steps`` for flow and MeanFlow), or
    with ``minutes`` the same wall time each (then the steps, default unlimited, are only a cap). ``flow``,
    ``meanflow``: FlowTrainConfig fields of those peers (learning rate, EMA, model size, MeanFlow's (r, t)
    sampler) on top of their tuned :data:`FLOW_PEER` / :data:`MEANFLOW_PEER`; MeanFlow also takes ``flow``'s
    fields, then ``meanflow``'s. ``generator_overrides`` dicts are merged key by key."""
    if minutes is not None:
        steps, flow_steps = steps or MAX_STEPS, flow_steps or steps or MAX_STEPS
    # minutes 0: not the preset's time budget; no learning curve (cpu-long's would eat into the equal time)
    budget = dict(steps=steps, minutes=0 if minutes is None else minutes, eval_samples=0, eval_every=0)
    drift = train_preset(preset, **budget, **overrides)
    mmd_field = dict(kernel="mmd", normalize_drift=False, temperatures=MMD_BANDWIDTHS)
    mmd = train_preset(preset, **budget, **{**overrides, "field_options": {
        **mmd_field, **overrides.get("field_options", {})}})
    base = dict(data=drift.data, generator=drift.generator, steps=flow_steps or drift.steps, minutes=minutes,
                batch=drift.classes_per_step * drift.n_gen, seed=drift.seed)
    fm = FlowTrainConfig(**_merged(base, FLOW_PEER, flow)).validate()
    mf = FlowTrainConfig(**_merged(base, FLOW_PEER, MEANFLOW_PEER, flow, {"objective": "meanflow"},
                                   meanflow)).validate()
    return {"drifting": drift, "mmd": mmd, "flow": fm, "meanflow": mf}


def _merged(*layers: dict | None) -> dict:
    """The config fields of ``layers``, later ones winning; their ``generator_overrides`` merged."""
    out: dict = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            out[k] = {**out.get(k, {}), **v} if k == "generator_overrides" else v
    return out


def train_once(name: str, cfg, root: Path, progress: bool) -> tuple[Path, float]:
    """Train ``cfg`` (an image, flow or distillation config) into ``root/name`` unless a finished run of
    the same config is there; return (model dir, training seconds)."""
    d = root / name
    done = d / "peer.json"
    want = jsonable(asdict(cfg))
    # a config written before a field existed or was renamed reads as today's (fill_defaults)
    if done.is_file():
        rec = json.loads(done.read_text())
        if fill_defaults(rec["config"], jsonable(asdict(type(cfg)()))) == want:
            return d / "model", rec["train_seconds"]
    resume = (d / "checkpoint.pt").is_file()
    if isinstance(cfg, ImageTrainConfig):
        run = train_images(cfg, d, progress=progress, resume=resume)
        secs = run.history["time"][-1]
    elif isinstance(cfg, DistillConfig):
        secs = distill(cfg, d, progress=progress, resume=resume)["train_seconds"]
    else:
        secs = train_flow(cfg, d, progress=progress, resume=resume)["train_seconds"]
    done.write_text(json.dumps({"config": want, "train_seconds": secs}))
    return d / "model", secs


def _timed(fn) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    imgs = fn()
    return imgs, time.perf_counter() - t0


def run_peers(out: str | Path, *, preset: str = "cpu", steps: int | None = None,
              flow_steps: int | None = None, minutes: float | None = None, flow: dict | None = None,
              meanflow: dict | None = None, methods=("drifting", "mmd", "flow"), eval_n: int = 1000,
              euler_steps=EULER_STEPS,
              metrics=("fid", "prdc", "classifier"), seed: int = 1, train_seed: int | None = None,
              inception: str | Path | None = None, progress: bool = True, **overrides) -> dict:
    """Train (or reuse) the generators of ``methods`` (of :data:`METHODS`) under ``out``, sample ``eval_n``
    images from each (from flow matching at every K in ``euler_steps``, from MeanFlow at 1 and 2 steps),
    score them; write ``OUT/peers.json``. ``seed`` seeds the sampling noise, ``train_seed`` (default: the
    preset's) the training of every method."""
    if any(not isinstance(k, int) or k < 1 for k in euler_steps):
        raise ValueError(f"euler_steps must be integers >= 1, got {euler_steps!r}")
    root = Path(out)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"methods: choose from {', '.join(METHODS)}; got {list(methods)!r}")
    if train_seed is not None:
        overrides["seed"] = train_seed
    cfgs = peer_configs(preset=preset, steps=steps, flow_steps=flow_steps, minutes=minutes, flow=flow,
                        meanflow=meanflow, **overrides)
    cfgs = {k: v for k, v in cfgs.items() if k in methods}
    data = next(iter(cfgs.values())).data
    ref = f"{data}:test"
    trained = {name: train_once(name, cfg, root, progress) for name, cfg in cfgs.items()}
    K = load_dataset(data, "train").num_classes
    labels = torch.arange(eval_n) % K

    def one_step(name):
        model, tok = load_generator(trained[name][0])
        return lambda: generate(model, labels, 1.0, seed=seed, tokenizer=tok)

    def euler(name, k):
        flow_model = load_flow_model(trained[name][0])
        return lambda: flow_generate(flow_model, labels, k, seed=seed)

    jobs = [(label, 1, name, one_step(name))
            for label, name in (("drifting", "drifting"), ("MMD (C.2)", "mmd"))
            if name in cfgs]
    if "meanflow" in cfgs:
        jobs += [(f"MeanFlow, {k} step{'s' if k > 1 else ''}", k, "meanflow", euler("meanflow", k))
                 for k in MEANFLOW_STEPS]
    if "flow" in cfgs:
        jobs += [(f"flow matching, Euler {k}", k, "flow", euler("flow", k)) for k in euler_steps]
    rows = []
    for label, nfe, name, sample in jobs:
        imgs, secs = _timed(sample)
        path = (root / "samples"
                / f"{label.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=imgs, labels=labels.numpy().astype(np.int64))
        res = evaluate(path, ref, metrics=metrics, n_ref=eval_n, inception=inception, progress=progress)
        clf = res.get("classifier", {})
        rows.append({"method": label, "nfe": nfe, "fid": res.get("fid"), "precision": res.get("precision"),
                     "recall": res.get("recall"), "accuracy": clf.get("accuracy"),
                     "classifier_fid": clf.get("classifier_fid"), "train_seconds": trained[name][1],
                     "train_steps": _steps_done(root / name),
                     "images_per_second": eval_n / secs, "samples": str(path)})
    result = {"preset": preset, "minutes": minutes, "eval_n": eval_n, "ref": ref, "rows": rows,
              "configs": {k: jsonable(asdict(c)) for k, c in cfgs.items()}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "peers.json").write_text(json.dumps(result, indent=2))
    write_peers_grid(result, root / "peers.png")
    return result


def _steps_done(run_dir: Path) -> int | None:
    """The steps a finished run trained (its history), or None when it has none."""
    h = run_dir / "history.json"
    if not h.is_file():
        return None
    steps = json.loads(h.read_text()).get("step") or []
    return int(steps[-1]) if steps else None


def write_peers_grid(res: dict, path: str | Path, per_class: int = 2) -> None:
    """One row per method of ``res`` (a :func:`run_peers` result): ``per_class`` samples of every class."""
    rows = []
    for r in res["rows"]:
        z = np.load(r["samples"])
        labels = z["labels"]
        idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        rows.append(z["images"][idx])  # [K * per_class, H, W, C]
    write_grid(np.concatenate(rows), rows[0].shape[0], path)


def format_peers(res: dict) -> str:
    """The side-by-side Markdown table."""
    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    budget = f", {res['minutes']:g} min of training each" if res.get("minutes") else ""
    lines = [f"{res['eval_n']} samples per method vs the first {res['eval_n']} images "
             f"of {res['ref']}, no guidance{budget}",
             "", "| method | NFE | FID | precision | recall | classifier acc. | classifier FID | train s | "
                 "train steps | sampling img/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {r['nfe']} | {f(r['fid'], '{:.1f}')} "
                     f"| {f(r['precision'], '{:.3f}')} | {f(r['recall'], '{:.3f}')} "
                     f"| {f(r['accuracy'], '{:.3f}')} | {f(r['classifier_fid'], '{:.1f}')} "
                     f"| {r['train_seconds']:.0f} | {f(r.get('train_steps'), '{:d}')} "
                     f"| {r['images_per_second']:.0f} |")
    return "\n".join(lines)

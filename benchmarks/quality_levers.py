"""Image quality per CPU-minute: each lever of the main job at equal wall time (issue 15).

Every variant is a preset (``--preset``, default ``cpu-v1``: the main job before issue 15, which the table in
docs/results.md started from) with a few fields changed, trained for the same wall-time budget
(``--minutes``, the generator's training only; the MAE is pre-trained once per MAE setting and cached,
and its pre-training time is reported apart), then scored on ``--eval-n`` one-step samples at alpha 1
with the in-domain classifier: accuracy, classifier-feature FID to the 10k test images, and the
train-vs-test floor at the same sample size. The metrics classifier is never a training signal.

    python benchmarks/quality_levers.py --list
    python benchmarks/quality_levers.py --only default,cls-ft --minutes 10 --threads 1
    python benchmarks/quality_levers.py --only default --seed 1     # seed noise of a row

Results accumulate in the JSON (one entry per variant and seed); the table printed at the end holds
every entry measured so far. Run one job at a time with 2 threads, or two side by side with
``--threads 1`` each (then compare only rows measured the same way: the ``threads`` column).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, machine_info, markdown_table, setup_threads  # noqa: E402
from drifting.data.images import load_dataset  # noqa: E402
from drifting.models import convnet  # noqa: E402
from drifting.models.dit import PRESETS  # noqa: E402
from drifting.recipes.image_config import train_preset  # noqa: E402
from drifting.recipes.image_training import evaluate_generator, train_images  # noqa: E402
from drifting.recipes.mae_pretrain import cached_mae_dir  # noqa: E402

NAME = "quality_levers"

# name -> overrides of train_preset(PRESET, ...) ("mae": a dict of MAE fields; "dit": fields of the
# generator's DiTConfig changed from the preset's, registered as a DiT preset of the variant's name)
VARIANTS: dict[str, dict] = {
    "default": {},
    "conv-cpu": dict(generator="conv-cpu"),
    "dit-p4": dict(generator="cpu-p4"),
    "cls-ft": dict(mae=dict(cls_steps=400, cls_warmup=100)),
    "cls-ft-0.3": dict(mae=dict(cls_steps=800, cls_warmup=100, cls_lambda=0.3)),
    "no-style": dict(style_tokens=0),
    "n16": dict(n_gen=16, n_pos=16, n_uncond=16),
    "n32": dict(n_gen=32, n_pos=32, n_uncond=16),
    "pos32": dict(n_pos=32),
    "pos64": dict(n_pos=64),
    "tau0.2": dict(field_options=dict(temperatures=(0.2,))),
    "lr2e-3": dict(lr=2e-3),
    "lr4e-3": dict(lr=4e-3),
    "decay0.3": dict(lr_decay=0.3),
    "lr2e-3-decay0.5": dict(lr=2e-3, lr_decay=0.5),
    "no-cfg": dict(guidance="none", n_uncond=0),
    "p4-h128-d4": dict(dit=dict(patch_size=4, hidden=128, depth=4)),
    "p7-h128-d4": dict(dit=dict(hidden=128, depth=4)),
    "p4-h128-d6": dict(dit=dict(patch_size=4, hidden=128, depth=6)),
    "combo": dict(dit=dict(patch_size=4, hidden=128, depth=4, alpha_mlp=True),
                  n_pos=32, lr_decay=0.3, mae=dict(cls_steps=400, cls_warmup=100)),
    "loc16": dict(max_locations=16),
    "loc256": dict(max_locations=256),
    "no-vanilla": dict(vanilla=False),
    "ema0.99": dict(ema_decays=(0.99,)),
    # the encoder, on the U-Net main job (--preset cpu): a stronger label fine-tuning, a wider MAE
    "cls0.5": dict(mae=dict(cls_steps=800, cls_warmup=100, cls_lambda=0.5)),
    "mae16-cls0.5": dict(mae=dict(width=16, cls_steps=800, cls_warmup=100, cls_lambda=0.5)),
    "n16-u8": dict(n_gen=16, n_pos=16),
    "lr3e-3-decay0.5": dict(lr=3e-3, lr_decay=0.5),
    "decay0.5": dict(lr_decay=0.5),
    "lr3e-3-decay1": dict(lr=3e-3, lr_decay=1.0),
    "lr6e-3-decay0.5": dict(lr=6e-3, lr_decay=0.5),
    "lr3e-3": dict(lr=3e-3),
    "pos32-lr3e-3-decay0.5": dict(n_pos=32, lr=3e-3, lr_decay=0.5),
    "pos32-lr3e-3-decay0.5-mae16": dict(n_pos=32, lr=3e-3, lr_decay=0.5,
                                        mae=dict(width=16, cls_steps=800, cls_warmup=100, cls_lambda=0.5)),
    # session 5, on the session-4 preset (--preset cpu: P = 32, lr 3e-3, decay 0.5)
    "gen16": dict(n_gen=16),
    "gen32-u16": dict(n_gen=32, n_uncond=16),
    "cls0.5-800": dict(mae=dict(cls_steps=800, cls_lambda=0.5)),
    "cls1.0-800": dict(mae=dict(cls_steps=800, cls_lambda=1.0)),
    "loc-all": dict(max_locations=None),
    "lr5e-3": dict(lr=5e-3),
    "tau0.05-0.2": dict(field_options=dict(temperatures=(0.05, 0.2))),
    "steps1500": {},  # the preset at a larger --steps: how much longer training buys
    "unet-w16": dict(dit=dict(widths=(16, 64, 64))),  # level 0 (28x28) at 16 channels: cheaper steps
    "unet-w24-96": dict(dit=dict(widths=(24, 96, 96))),
    "unet-16-32-64": dict(dit=dict(widths=(16, 32, 64))),  # 0.33M parameters, 2.5x cheaper fwd+bwd
    "sets-ab": dict(feature_sets="ab"),
    "sets-ab-no-vanilla": dict(feature_sets="ab", vanilla=False),
    # session 6, on the session-5 preset: the throwaway prototype's recipe (a few tap maps, N = P = 32)
    "proto-groups": dict(groups="tap1.loc,tap2.loc,tap*.mean", vanilla=False, n_gen=32, n_pos=32, guidance="none",
                         n_uncond=0),
    "proto-groups-sq": dict(groups="tap1.loc,tap2.loc,tap*.mean,input.sq", n_gen=32, n_pos=32, guidance="none",
                            n_uncond=0),
    "proto-groups-sq-n16": dict(groups="tap1.loc,tap2.loc,tap*.mean,input.sq", n_gen=16, n_pos=32, guidance="none",
                                n_uncond=0),
    # sessions 7-8: a width-16 MAE whose fine-tuning is labels only (lambda 1), recon + cls steps
    "mae16-cls1-800+800": dict(mae=dict(width=16, cls_lambda=1.0, steps=800, cls_steps=800, cls_warmup=100)),
    "mae16-cls1-200+800": dict(mae=dict(width=16, cls_lambda=1.0, steps=200, cls_steps=800, cls_warmup=100)),
    "mae16-cls1-800+400": dict(mae=dict(width=16, cls_lambda=1.0, steps=800, cls_steps=400, cls_warmup=100)),
    "mae16-cls1-400+400": dict(mae=dict(width=16, cls_lambda=1.0, steps=400, cls_steps=400, cls_warmup=100)),
    "mae16-cls1-800+800-b64": dict(mae=dict(width=16, cls_lambda=1.0, steps=800, cls_steps=800, cls_warmup=100,
                                            batch=64)),
}


def _with_generator(name: str, overrides: dict, preset: str) -> dict:
    """``overrides`` with its ``dit`` changes registered as the DiT preset ``lever:NAME``."""
    over = dict(overrides)
    dit = over.pop("dit", None)
    if dit:
        base = over.get("generator") or train_preset(preset).generator
        family = convnet.PRESETS if base in convnet.PRESETS else PRESETS
        family[f"lever:{name}"] = replace(family[base], **dit).validate()
        over["generator"] = f"lever:{name}"
    return over


def run_variant(name: str, overrides: dict, minutes: float | None, eval_n: int, seed: int, out_root: Path,
                preset: str = "cpu-v1", steps: int | None = None) -> dict:
    """One row: a wall-time budget (``minutes``) or, with ``steps``, a step budget (the same work whatever else
    runs on the machine; its wall time is then compared through the step cost of a quiet machine)."""
    budget = dict(minutes=0, steps=steps) if steps else dict(minutes=minutes, steps=10**6)  # 0: no time budget
    cfg = train_preset(preset, seed=seed, mae=dict(seed=0), eval_samples=0, sample_every=10**9, ckpt_every=10**9,
                       **budget, **_with_generator(name, overrides, preset))
    ds = load_dataset(cfg.data, "train")
    t0 = time.perf_counter()
    mae_dir = cached_mae_dir(ds, cfg.mae, progress=False)
    mae_s = time.perf_counter() - t0
    out = out_root / f"{name}_s{seed}"
    run = train_images(cfg, out, progress=False)
    h = run.history
    t1 = time.perf_counter()
    m = evaluate_generator(run.ema.models[max(cfg.ema_decays)], cfg.data, eval_n, seed=seed + 1)
    return {
        "variant": name, "preset": preset, "seed": seed, "overrides": json.loads(json.dumps(overrides)),
        "minutes": None if steps else minutes, "step_budget": steps, "steps": h["step"][-1], "train_s": h["time"][-1], "mae_dir": str(mae_dir),
        "mae_s_this_call": mae_s, "eval_s": time.perf_counter() - t1, "V2_first": h["V2"][0],
        "V2_peak": max(h["V2"]), "V2_last": h["V2"][-1], "threads": torch.get_num_threads(), **m,
        "samples_png": str(out / "samples.png"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, NAME, timing=False)
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--only", default="default", help="comma-separated variant names (default: default)")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time per variant")
    p.add_argument("--steps", type=int, default=None,
                   help="a step budget instead of --minutes (robust to a busy machine; the rows then carry their "
                        "ms per step, to be compared with a quiet machine's step cost)")
    p.add_argument("--eval-n", type=int, default=2000, help="samples scored per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="cpu-v1", help="the training preset every variant starts from (default cpu-v1)")
    p.add_argument("--runs", default=None, help="where the runs go (default: a temporary directory)")
    a = p.parse_args(argv)
    if a.list:
        for k, v in VARIANTS.items():
            print(f"{k}: {v}")
        return 0
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--only: unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    if a.quick:
        a.minutes, a.eval_n = 0.1, 200
    setup_threads(a.threads)
    path = Path(a.out)
    record = json.loads(path.read_text()) if path.is_file() else {"machine": machine_info(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="levers_") as tmp:
        root = Path(a.runs) if a.runs else Path(tmp)
        for n in names:
            row = run_variant(n, VARIANTS[n], a.minutes, a.eval_n, a.seed, root, a.preset, steps=a.steps)
            row["cpu"] = machine_info()["cpu"]
            record["rows"] = [r for r in record["rows"] if not (r["variant"] == n and r["seed"] == a.seed
                                                                 and r["minutes"] == (None if a.steps else a.minutes)
                                                                 and r.get("step_budget") == a.steps
                                                                 and r.get("preset", "cpu-v1") == a.preset)] + [row]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2))
            print(f"{n} seed {a.seed}: acc {row['accuracy']:.3f}, FID {row['classifier_fid']:.2f} "
                  f"(floor {row['floor_classifier_fid']:.2f}), {row['steps']} steps", flush=True)
    head = ["variant", "seed", "min", "threads", "steps", "accuracy", "classifier FID", "floor", "V2 peak / last"]
    rows = [[r["variant"], r["seed"], r["minutes"] or "-", r["threads"], r["steps"], f"{r['accuracy']:.3f}",
             f"{r['classifier_fid']:.2f}", f"{r['floor_classifier_fid']:.2f}",
             f"{r['V2_peak'] / max(r['V2_last'], 1e-12):.2f}"] for r in record["rows"]]
    print(f"CPU: {record['machine']['cpu']}")
    print(markdown_table(head, rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

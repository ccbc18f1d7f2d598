"""``drifting train-flow``: class-conditional flow matching, the multi-step peer and the Drift-RAE
teacher (:mod:`drifting.recipes.flow`)."""

from __future__ import annotations

import argparse

from ..models.generators import generator_names
from ..recipes.flow import OBJECTIVES, TIME_SAMPLING, FlowTrainConfig, train_flow
from .args import (
    add_deprecated_alias,
    add_resume_options,
    add_threads_option,
    positive_float,
    positive_int,
    resume_flag,
)


def cmd_train_flow(a: argparse.Namespace) -> int:
    overrides = {k: getattr(a, k)
                 for k in ("data", "generator", "steps", "minutes", "batch", "lr", "lr_decay", "warmup",
                           "label_dropout", "time_sampling", "sample_steps", "sample_guidance", "seed",
                           "tokenizer", "objective", "meanflow_ratio", "meanflow_p",
                           "eval_every", "eval_samples")
                 if getattr(a, k) is not None}
    if a.ema_decay is not None:
        overrides["ema_decays"] = (a.ema_decay,)
    if a.meanflow_time is not None:
        overrides["meanflow_time"] = tuple(a.meanflow_time)
    if a.eval_euler_steps is not None:
        overrides["eval_euler_steps"] = tuple(a.eval_euler_steps)
    dit = {k: getattr(a, k) for k in ("patch_size", "depth", "hidden") if getattr(a, k) is not None}
    if dit:
        overrides["generator_overrides"] = dit
    cfg = FlowTrainConfig(**overrides).validate()
    res = train_flow(cfg, a.out, progress=not a.no_progress, resume=resume_flag(a, a.out), device=a.device)
    kind = "MeanFlow" if cfg.objective == "meanflow" else "flow-matching"
    print(f"trained {res['steps']} {kind} steps in {res['train_seconds']:.0f}s "
          f"({res['steps_per_second']:.2f} step/s); final loss {res['final_loss']:.4f}")
    print(f"wrote {res['model_dir']}/ (EMA velocity network), {res['samples']} (one row per class, "
          f"{cfg.sample_steps} Euler steps), log.jsonl, checkpoint.pt")
    return 0


def add_flow_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting train-flow --out DIR ...`` on ``subparsers`` (from ``add_subparsers``)."""
    f = subparsers.add_parser(
        "train-flow",
        help="train a class-conditional flow-matching DiT (multi-step baseline / Drift-RAE teacher)",
        description="Flow matching (Drift-RAE Eq. 1-4) on the DiT backbone with a timestep embedder and "
        "classifier-free guidance by label dropout. Options left out keep FlowTrainConfig's defaults. "
        "Running again with the same --out resumes its checkpoint.")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--data", default=None,
                   help="fashion-mnist (default), mnist:<dir>, an IDX dir, .npz or image folder")
    f.add_argument("--generator", default=None,
                   help=f"generator preset (default cpu-small): {', '.join(generator_names())}")
    f.add_argument("--steps", type=positive_int, default=None, help="training steps (default 1000)")
    f.add_argument("--minutes", type=positive_float, default=None,
                   help="wall-time budget in minutes: stop at the first step past it (default: --steps only)")
    f.add_argument("--batch", type=positive_int, default=None, help="images per step (default 80)")
    f.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    f.add_argument("--lr-decay", type=float, default=None,
                   help="the last fraction of training (of --steps or --minutes) ramps the lr linearly to 0 "
                   "(default 0: constant after the warm-up)")
    f.add_argument("--warmup", type=int, default=None, help="linear lr warm-up steps (default 100)")
    f.add_argument("--ema-decay", type=float, default=None,
                   help="EMA decay of the exported network (default 0.999)")
    f.add_argument("--eval-every", type=positive_int, default=None,
                   help="a learning curve: classifier metrics every N steps and at the end, OUT/curve.json")
    f.add_argument("--eval-samples", type=positive_int, default=None,
                   help="samples per learning-curve point (default 2000)")
    f.add_argument("--eval-euler-steps", type=positive_int, nargs="+", default=None,
                   help="Euler step counts of each learning-curve point (default 16)")
    f.add_argument("--label-dropout", type=float, default=None, help="P(label -> null class) (default 0.1)")
    f.add_argument("--time-sampling", choices=TIME_SAMPLING, default=None,
                   help="t distribution (default uniform)")
    f.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="flow: flow matching (default); meanflow: MeanFlow's average velocity, a one-step "
                   "generator from scratch (sample it with --euler-steps 1)")
    f.add_argument("--meanflow-time", type=float, nargs=2, metavar=("MU", "SIGMA"), default=None,
                   help="MeanFlow: (r, t) are two sorted logit-normal(MU, SIGMA) times (default -0.4 1.0)")
    f.add_argument("--meanflow-ratio", type=float, default=None,
                   help="MeanFlow: the fraction of pairs with r != t (default 0.25; the rest: flow matching)")
    f.add_argument("--meanflow-p", type=float, default=None,
                   help="MeanFlow: the adaptive loss weight's power p (default 1.0; 0 = plain L2)")
    f.add_argument("--sample-steps", type=positive_int, default=None,
                   help="Euler steps of the grids (default 50)")
    f.add_argument("--sample-guidance", type=float, default=None,
                   help="guidance scale of the grids (default 1)")
    add_deprecated_alias(f, "--sample-cfg", "--sample-guidance", "sample_guidance", type=float)
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--tokenizer", default=None,
                   help="train in a latent space: rae:DIR, autoencoderkl:DIR, "
                   "autoencoder-rae:DIR (default: pixels)")
    f.add_argument("--patch-size", type=positive_int, default=None,
                   help="DiT patch size (must divide the input side)")
    f.add_argument("--depth", type=positive_int, default=None, help="DiT blocks (default: the preset's)")
    f.add_argument("--hidden", type=positive_int, default=None,
                   help="DiT token width (default: the preset's)")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_threads_option(f)
    add_resume_options(f)
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_train_flow)
    return f

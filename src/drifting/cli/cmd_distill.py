"""``drifting distill``: Drift-RAE one-step distillation of a flow model (:mod:`drifting.recipes.distill`)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..recipes.distill import FEATURES, INITS, PRESETS, DistillConfig, distill, distill_preset
from .args import add_resume_options, add_threads_option, count, positive_int, resume_flag, temperatures


def cmd_distill(a: argparse.Namespace) -> int:
    overrides = {k: getattr(a, k) for k in ("data", "init", "features", "steps", "ckpt_every",
                                            "classes_per_step", "n_pos", "n_neg", "n_extra_neg", "lr",
                                            "lr_final", "seed")
                 if getattr(a, k) is not None}
    if a.temperatures:
        overrides["temperatures"] = a.temperatures
    if a.y_softmax is not None:
        overrides["y_softmax"] = a.y_softmax
    if a.perturb is not None:
        overrides["perturb"] = a.perturb
    cfg = (distill_preset(a.preset, a.teacher, **overrides) if a.preset
           else replace(DistillConfig(teacher=a.teacher), **overrides).validate())
    res = distill(cfg, a.out, progress=not a.no_progress, resume=resume_flag(a, a.out), device=a.device)
    if "rank" in res:  # a rank > 0 of a torchrun job: rank 0 reports
        return 0
    print(f"distilled {res['steps']} steps in {res['train_seconds']:.0f}s ({res['steps_per_second']:.2f} "
          f"step/s); final loss {res['final_loss']:.4f}")
    print(f"wrote {res['model_dir']}/ (EMA one-step student: flow_generate(model, labels, "
          f"1)), {res['samples']}, log.jsonl, checkpoint.pt")
    return 0


def add_distill_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting distill --teacher DIR --out DIR ...`` on ``subparsers``."""
    f = subparsers.add_parser(
        "distill",
        help="Drift-RAE: distil a flow model into a one-step generator with a per-token drifting field",
        description="Drift-RAE (Zhang et al. 2026, §3.3): the student G(z) = z - v(z, 1) starts from "
        "the teacher and is trained with the per-token drifting loss (Eq. 10-12) in the teacher's "
        "latent space. Options left out keep the preset's (or DistillConfig's) values. Running again "
        "with the same --out resumes.")
    f.add_argument("--teacher", required=True, help="flow model directory (drifting train-flow's OUT/model)")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="Table 3's rows A (baseline), B (+perturbation -y-softmax), C (+pos, +detached "
                   "neg), at CPU size; table8: the paper's counts")
    f.add_argument("--data", default=None, help="real data (default fashion-mnist)")
    f.add_argument("--init", choices=INITS, default=None, help="teacher (distillation) or scratch (App. C)")
    f.add_argument("--features", choices=FEATURES, default=None,
                   help="latent (Eq. 10) or decode-encode (App. C)")
    f.add_argument("--steps", type=positive_int, default=None)
    f.add_argument("--ckpt-every", type=positive_int, default=None,
                   help="steps between checkpoints (default: the preset's)")
    f.add_argument("--classes-per-step", type=positive_int, default=None, help="N_c")
    f.add_argument("--n-pos", type=positive_int, default=None, help="N_pos real latents per class")
    f.add_argument("--n-neg", type=positive_int, default=None,
                   help="N_neg gradient-carrying samples per class")
    f.add_argument("--n-extra-neg", type=count, default=None, help="N_extra_neg detached negatives per class")
    f.add_argument("--temperatures", type=temperatures, default=None,
                   help="comma-separated taus (default 0.02,0.05,0.2)")
    f.add_argument("--y-softmax", action=argparse.BooleanOptionalAction, default=None,
                   help="Alg. 2's two softmaxes (baseline) instead of Eq. 11's single softmax")
    f.add_argument("--perturb", action=argparse.BooleanOptionalAction, default=None,
                   help="Eq. 12 input perturbation")
    f.add_argument("--lr", type=float, default=None, help="initial learning rate (default 3e-5)")
    f.add_argument("--lr-final", type=float, default=None, help="final learning rate (default 3e-7)")
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    add_threads_option(f)
    add_resume_options(f)
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_distill)
    return f

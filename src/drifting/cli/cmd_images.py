"""``drifting train``, ``train-mae`` and ``sample``: the image generator
(:mod:`drifting.recipes.image_training`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .args import (
    add_deprecated_alias,
    add_resume_options,
    add_threads_option,
    count,
    positive_int,
    resume_flag,
    temperatures,
    time_budget,
)

# the main job's preset: `cpu-wide` (its width-16 MAE ships too) beat `cpu` at 2 free threads in both seeds of
# session 17 (accuracy 0.843 / 0.848 against 0.843 / 0.809, classifier FID 23.4 / 18.9 against 27.8 / 28.5)
DEFAULT_PRESET = "cpu-wide"


def cmd_train(a: argparse.Namespace) -> int:
    from ..recipes.image_config import train_preset
    from ..recipes.image_training import train_images
    resume = resume_flag(a, a.out)  # a missing or unreadable checkpoint with --resume is reported now
    cfg = train_preset(
        a.preset, data=a.data, generator=a.generator, encoder=a.encoder, mae_dir=a.mae,
        mae=dict(encoder=a.mae_preset, steps=a.mae_steps, batch=a.mae_batch, cls_steps=a.mae_cls_steps,
                 cls_lambda=a.mae_cls_lambda, cls_warmup=a.mae_cls_warmup, width=a.mae_width,
                 seed=a.mae_seed),
        steps=a.steps, seed=a.seed, guidance=a.guidance,
        n_uncond=a.n_uncond, sampler=a.sampler, lr=a.lr, classes_per_step=a.classes_per_step, n_gen=a.n_gen,
        n_pos=a.n_pos, neg_queue=a.neg_queue, n_extra_neg=a.n_extra_neg, max_locations=a.max_locations,
        groups=a.groups, vanilla=a.vanilla, field_options=dict(temperatures=a.temperatures),
        lr_decay=a.lr_decay, minutes=a.minutes, job_minutes=a.job_minutes,
        precision=a.precision, tokenizer=a.tokenizer, encoder_space=a.encoder_space,
        eval_samples=a.eval_samples, eval_every=a.eval_every,
    )
    run = train_images(cfg, a.out, progress=not a.no_progress, resume=resume, device=a.device,
                       tensorboard=a.tensorboard, ranks_per_class=a.ranks_per_class,
                       compile_field=a.compile_field)
    if run.out is None:  # a rank > 0 of a torchrun job: rank 0 reports
        return 0
    h = run.history
    print(f"trained {h['step'][-1]} steps in {h['time'][-1]:.0f}s "
          f"({h['step'][-1] / max(h['time'][-1], 1e-9):.2f} step/s); final raw drift norm {h['V2'][-1]:.4g}")
    if run.metrics:
        m = run.metrics
        print(f"\n{m['n_samples']} samples (alpha 1), in-domain classifier "
              f"(test accuracy {m['classifier_test_accuracy']:.3f}):")
        print("| accuracy | classifier-feature FID to test | real train-vs-test floor |")
        print("| --- | --- | --- |")
        print(f"| {m['accuracy']:.3f} | {m['classifier_fid']:.2f} | {m['floor_classifier_fid']:.2f} |")
    print(f"wrote {Path(a.out) / 'model'}/ (EMA generator), {Path(a.out) / 'samples.png'} (one row per "
          "class), log.jsonl, checkpoint.pt" + (", metrics.json" if run.metrics else ""))
    return 0


def cmd_train_mae(a: argparse.Namespace) -> int:
    import shutil

    from ..data.images import load_dataset
    from ..recipes.mae_pretrain import MAEConfig, cached_mae_dir, pretrain_mae, ship_mae

    if a.train_preset is not None:  # the very MAE a `drifting train --preset P` run pre-trains (or finds)
        from ..recipes.image_config import train_preset

        cfg = train_preset(a.train_preset).mae
        ds = load_dataset(a.data, "train")
        d = ship_mae(ds, cfg, progress=not a.no_progress) if a.ship else cached_mae_dir(
            ds, cfg, progress=not a.no_progress)
        if a.out:
            shutil.copytree(d, a.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
        print(f"the ResNet-MAE of the {a.train_preset!r} preset on {a.data}: {d}"
              + (" (shipped with the package)" if a.ship else "")
              + (f", copied to {a.out}/" if a.out else ""))
        return 0
    if a.ship:
        raise ValueError("--ship: only with --train-preset (a shipped MAE is found by its preset's config)")
    if not a.out:
        raise ValueError("--out: the directory of the export is required (or give --train-preset)")
    cfg = MAEConfig(encoder=a.preset, width=a.width, steps=a.steps, seed=a.seed, cls_steps=a.cls_steps,
                    cls_lambda=a.cls_lambda, cls_warmup=a.cls_warmup,
                    **({"batch": a.batch} if a.batch else {}))
    cfg.validate()  # before the dataset is read
    resume = resume_flag(a, a.out)
    pretrain_mae(load_dataset(a.data, "train"), cfg, a.out, progress=not a.no_progress, resume=resume)
    print(f"wrote the ResNet-MAE (EMA) to {a.out}/"
          + (" (with its classification head)" if a.cls_steps else ""))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..recipes.image_sampling import generate, load_generator, write_grid

    model, tokenizer = load_generator(a.model)
    # a velocity network of `drifting train-flow`
    flow_model = bool(getattr(model.config, "time_cond", False))
    K = model.config.num_classes - (1 if flow_model else 0)  # a flow model's last class is its null class
    if flow_model and a.euler_steps is None:
        raise ValueError(f"--euler-steps: {a.model} is a flow-matching model (drifting train-flow); give the "
                         "number of Euler steps of its sampler, e.g. --euler-steps 16")
    if not flow_model and a.euler_steps is not None:
        raise ValueError(f"--euler-steps: only for a flow-matching model; {a.model} is a one-step generator")
    if a.labels:
        labels = torch.tensor([int(v) for v in a.labels.split(",")])
        if (labels < 0).any() or (labels >= K).any():
            raise ValueError(f"--labels must be class indices in [0, {K})")
        labels = labels.repeat(math.ceil(a.num / len(labels)))[: a.num]
    else:
        labels = torch.arange(a.num) % K
    if flow_model:
        from ..recipes.flow import flow_generate

        if a.guidance < 0:
            raise ValueError(f"--guidance (a flow model's guidance scale) must be >= 0, got {a.guidance}")
        imgs = flow_generate(model, labels, a.euler_steps, guidance_scale=a.guidance, seed=a.seed,
                             tokenizer=tokenizer)
    else:
        if a.guidance < 1:
            raise ValueError(f"--guidance (alpha) must be >= 1, got {a.guidance}")
        imgs = generate(model, labels, a.guidance, seed=a.seed, tokenizer=tokenizer)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=imgs, labels=labels.numpy().astype(np.int64))
    order = np.argsort(labels.numpy(), kind="stable")[: min(a.num, 10 * K)]
    write_grid(imgs[order], min(10, a.num), out.with_suffix(".png"))
    print(f"wrote {out} (images {imgs.shape} uint8, labels) and {out.with_suffix('.png')}")
    return 0


def add_image_parsers(subparsers) -> None:
    """Register ``drifting train``, ``drifting train-mae`` and ``drifting sample`` on ``subparsers``."""
    _add_train_parser(subparsers)
    _add_train_mae_parser(subparsers)
    _add_sample_parser(subparsers)


def _add_train_parser(subparsers) -> None:
    """``drifting train``: its options in four groups (what is trained, the encoder, the step, the run)."""
    tr = subparsers.add_parser(
        "train", help="train a class-conditional image generator (DiT + ResNet-MAE features)",
        description="Train a one-step class-conditional generator. With no option but --out: the "
        f"{DEFAULT_PRESET!r} preset on Fashion-MNIST, at most 15 min on 2 CPU cores in all (its MAE ships "
        "with the package; the metrics' classifier is trained the first time, within the budget). Options "
        "left out keep the preset's values.")
    tr.add_argument("--out", required=True)
    _train_model_options(tr.add_argument_group("data and networks"))
    _train_mae_options(tr.add_argument_group("the ResNet-MAE feature encoder (A.3)"))
    _train_step_options(tr.add_argument_group("the drifting step"))
    _train_run_options(tr.add_argument_group("the run"))
    add_threads_option(tr)
    tr.set_defaults(func=cmd_train)


def _train_model_options(g) -> None:
    g.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"training preset: {DEFAULT_PRESET} (default: the main job), cpu (its narrower "
                   "encoder), cpu-long (60 min), cpu-dit, cpu-v1, cpu-tiny, or Table 8's ablation, B/2, L/2, "
                   "B/16, L/16")
    g.add_argument("--data", default=None,
                   help="fashion-mnist, mnist:<dir>, an IDX dir, .npz or image folder")
    g.add_argument("--generator", default=None,
                   help="DiT preset (cpu-tiny, cpu-small, B/2, L/2, B/16, L/16)")
    g.add_argument("--encoder", default=None, help="feature encoder(s), '+'-joined: mae (default), "
                   "mae:DIR, resnet50:W.pth[@RES] (torchvision / MoCo / SimCLR), "
                   "timm:convnextv2_atto:W.safetensors[@RES]")


def _train_mae_options(g) -> None:
    g.add_argument("--mae", default=None,
                   help="pretrained ResNet-MAE dir (default: pre-train, cached between runs)")
    g.add_argument("--tokenizer", default=None,
                   help="latent space: sd-vae:DIR or autoencoderkl:DIR (a local "
                   "diffusers AutoencoderKL); default: pixel space")
    g.add_argument("--encoder-space", choices=("latent", "pixel"), default=None,
                   help="with --tokenizer: features of latents (latent-MAE, default) or of decoded pixels")
    g.add_argument("--mae-preset", default=None,
                   help="ResNet-MAE preset to pre-train (cpu-tiny, cpu-small, ...)")
    g.add_argument("--mae-steps", type=positive_int, default=None)
    g.add_argument("--mae-batch", type=positive_int, default=None)
    g.add_argument("--mae-cls-steps", type=count, default=None,
                   help="steps of A.3's classification fine-tuning of the MAE (0: none)")
    g.add_argument("--mae-cls-lambda", type=float, default=None,
                   help="the fine-tuning's final lambda in lambda L_cls + (1 - lambda) L_recon (A.3: 0.1)")
    g.add_argument("--mae-cls-warmup", type=count, default=None, help="steps of lambda's warm-up from 0")
    g.add_argument("--mae-width", type=positive_int, default=None,
                   help="the MAE's base width C (default: its preset's)")


def _train_step_options(g) -> None:
    g.add_argument("--classes-per-step", type=positive_int, default=None, help="Nc")
    g.add_argument("--n-gen", type=positive_int, default=None, help="N generated samples per class")
    g.add_argument("--n-pos", type=positive_int, default=None, help="P positives per class")
    g.add_argument("--n-uncond", type=count, default=None,
                   help="N_unc unconditional negatives (default: the CFG preset's)")
    g.add_argument("--neg-queue", type=count, default=None,
                   help="Q: the features of the last Q generated samples per class are extra, detached "
                   "negatives (0: off, the default)")
    g.add_argument("--n-extra-neg", type=count, default=None,
                   help="E: E more samples per class of the current generator, made and encoded without "
                   "gradient, are extra negatives at weight 1 (Drift-RAE's detached negatives; 0: off, the "
                   "default)")
    g.add_argument("--max-locations", type=positive_int, default=None,
                   help="drift at most this many random locations per feature map and step")
    g.add_argument("--groups", default=None,
                   help="keep only the feature groups matching these comma-separated patterns, "
                   "e.g. 'tap1.loc,tap2.loc,tap*.mean' (default: all of A.5's)")
    g.add_argument("--vanilla", action=argparse.BooleanOptionalAction, default=None,
                   help="also drift the raw generator output (default: the preset's)")
    g.add_argument("--temperatures", type=temperatures, default=None,
                   help="the field's taus, comma-separated (A.6; default: the preset's, 0.02,0.05,0.2)")


def _train_run_options(g) -> None:
    g.add_argument("--steps", type=positive_int, default=None)
    g.add_argument("--eval-samples", type=count, default=None,
                   help="samples for the final in-domain classifier metrics (default 1000; 0 skips)")
    g.add_argument("--eval-every", type=count, default=None,
                   help="a learning curve: the same metrics every this many steps, "
                   "OUT/curve.json (default 0: off)")
    g.add_argument("--guidance", default=None,
                   help="classifier-free guidance preset for training (ablation, B/2, L/2, none, ...)")
    add_deprecated_alias(g, "--cfg", "--guidance", "guidance")
    g.add_argument("--sampler", choices=("queue", "balanced"), default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--lr-decay", type=float, default=None,
                   help="the last fraction of training ramps the lr linearly to 0 (0: constant)")
    g.add_argument("--minutes", type=time_budget, default=None,
                   help="a wall-time budget for the generator's training (stops at --steps or after this "
                   "long; replaces the preset's job budget unless --job-minutes is given too; 0: none, "
                   "--steps only)")
    g.add_argument("--job-minutes", type=time_budget, default=None,
                   help="a wall-time budget for the whole job: the generator trains for what the "
                   "preparation (the metrics' classifier the first time) leaves, less 0.5 min for the "
                   "end (the cpu preset's: 14.5; 0: none)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="bf16 autocast of the networks: auto (CUDA only, default), fp32, "
                   "bf16 (also on the CPU)")
    g.add_argument("--seed", type=int, default=None,
                   help="the generator's training seed (default: the preset's, 0); the encoder keeps its "
                   "own (--mae-seed), so that the shipped MAE serves every seed")
    g.add_argument("--mae-seed", type=int, default=None,
                   help="seed of the MAE's pre-training (default: the preset's, 0; another one trains a "
                   "new MAE)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard under OUT/tb")
    g.add_argument("--ranks-per-class", type=positive_int, default=1,
                   help="under torchrun: ranks that share each class (1: classes sharded over "
                   "ranks; the world size: every rank holds part of every class, with positives "
                   "and negatives gathered)")
    g.add_argument("--compile-field", action="store_true",
                   help="torch.compile the drifting field's elementwise work")
    add_resume_options(g)
    g.add_argument("--no-progress", action="store_true")


def _add_train_mae_parser(subparsers) -> None:
    tm = subparsers.add_parser(
        "train-mae", help="pre-train the ResNet-MAE feature encoder (A.3)",
        description="Pre-train a ResNet-MAE into --out, or with --train-preset the MAE of a training preset "
        "(into the cache, as `drifting train` would; --ship: afresh, into the package, where every later run "
        "finds it: `drifting train-mae --train-preset cpu --ship` made the one the main job uses).")
    tm.add_argument("--out", default=None, help="directory of the export (required without --train-preset)")
    tm.add_argument("--train-preset", default=None,
                    help="pre-train the MAE of this training preset (its MAE options; the other options "
                    "here but --data are ignored)")
    tm.add_argument("--ship", action="store_true",
                    help="with --train-preset: train afresh and store it in the package (drifting/weights)")
    tm.add_argument("--data", default="fashion-mnist")
    tm.add_argument("--preset", default="cpu-small")
    tm.add_argument("--steps", type=positive_int, default=1500)
    tm.add_argument("--width", type=positive_int, default=None,
                    help="the base width C (default: the preset's)")
    tm.add_argument("--batch", type=positive_int, default=None, help="images a step (default 128)")
    tm.add_argument("--cls-steps", type=int, default=0, help="then this many steps of A.3's classification "
                    "fine-tuning, lambda L_cls + (1 - lambda) L_recon (default 0: none; the paper: 3000)")
    tm.add_argument("--cls-lambda", type=float, default=0.1, help="the final lambda (default 0.1, A.3)")
    tm.add_argument("--cls-warmup", type=int, default=1000,
                    help="steps of lambda's linear warm-up from 0 (default 1000)")
    tm.add_argument("--seed", type=int, default=0)
    tm.add_argument("--no-progress", action="store_true")
    add_resume_options(tm)
    add_threads_option(tm)
    tm.set_defaults(func=cmd_train_mae)


def _add_sample_parser(subparsers) -> None:
    sp = subparsers.add_parser("sample", help="one-step samples from a trained generator, as .npz + PNG grid")
    sp.add_argument("model", help="a model directory written by `drifting train` (OUT/model), or by "
                    "`drifting train-flow` (then with --euler-steps)")
    sp.add_argument("--num", type=positive_int, default=100)
    add_deprecated_alias(sp, "--cfg", "--guidance", "guidance", type=float)
    sp.add_argument("--guidance", type=float, default=1.0,
                    help="CFG scale alpha >= 1 (free at inference); for a flow model its guidance scale >= 0")
    sp.add_argument("--euler-steps", type=positive_int, default=None,
                    help="a flow-matching model's Euler steps (required for one; not for a one-step "
                    "generator)")
    sp.add_argument("--labels", default=None,
                    help="comma-separated class indices (default: all classes in turn)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="output .npz (images uint8 [N,H,W,C], labels int64 [N])")
    add_threads_option(sp)
    sp.set_defaults(func=cmd_sample)

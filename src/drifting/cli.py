"""The ``drifting`` command line: thin wrappers that build a config and call a recipe."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import __version__
from .data.points import TARGETS
from .field import NORMALIZE_CHOICES


def _temps(s: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperatures must be comma-separated numbers, got {s!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--temperatures must be positive, got {s!r}")
    return vals


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s}")
    return v


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, default=4000, help="training steps (default 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_positive_int, default=256, help="generated samples N per step (default 256)")
    p.add_argument("--n-pos", type=_positive_int, default=256, help="positive samples P per step (default 256)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperatures", type=_temps, default=(0.02, 0.05, 0.2), help="comma-separated tau values")
    p.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="both",
                   help="kernel normalization: both (Alg. 2), y, none (Table 11), separate (Eq. 8-10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _summary_table(m: dict) -> str:
    s, f = m["samples_vs_heldout"], m["data_vs_heldout"]
    rows = [
        ("", "energy distance", "MMD^2"),
        ("samples vs held-out", f"{s['energy_distance']:.3e}", f"{s['mmd2']:.3e}"),
        ("data vs held-out (floor)", f"{f['energy_distance']:.3e}", f"{f['mmd2']:.3e}"),
        ("ratio", f"{m['energy_ratio_to_floor']:.2f}x", f"{s['mmd2'] / max(f['mmd2'], 1e-30):.2f}x"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def cmd_fit_points(a: argparse.Namespace) -> int:
    from .recipes.points import PointsConfig, fit_points

    cfg = PointsConfig(
        data=a.data, steps=a.steps, seed=a.seed, batch=a.batch, n_pos=a.n_pos, lr=a.lr,
        temperatures=a.temperatures, normalize=a.normalize, n_samples=a.samples,
    )
    res = fit_points(cfg, a.out, progress=not a.no_progress, resume=a.resume)
    out = Path(a.out)
    print(_summary_table(res.metrics))
    print(f"trained {cfg.steps} steps in {res.metrics['train_seconds']:.1f}s on {res.metrics['data']} (d={res.metrics['dim']})")
    written = ["samples.npy", "metrics.json", "curves.png"] + (["evolution.png"] if res.metrics["dim"] == 2 else [])
    print("wrote " + ", ".join(str(out / w) for w in written) + f", {out / 'model'}/")
    return 0


def cmd_toy(a: argparse.Namespace) -> int:
    from .recipes import toy

    if a.study == "fig3":
        res = toy.figure3(a.out, steps=a.steps or 3000, seed=a.seed, progress=not a.no_progress)
    elif a.study == "fig4":
        res = toy.figure4(a.out, steps=a.steps or 4000, seed=a.seed, progress=not a.no_progress)
    else:
        res = toy.ablation(a.out, target=a.target, steps=a.steps or 2000, seed=a.seed, progress=not a.no_progress)
    print(res["table"])
    print("wrote " + ", ".join(res["files"]))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .recipes.images import train_images, train_preset

    cfg = train_preset(
        a.preset, data=a.data, generator=a.generator, encoder=a.encoder, mae_dir=a.mae, mae_encoder=a.mae_preset,
        mae_steps=a.mae_steps, mae_batch=a.mae_batch, mae_cls_steps=a.mae_cls_steps, mae_seed=a.seed,
        steps=a.steps, seed=a.seed, cfg=a.cfg,
        n_uncond=a.n_uncond, sampler=a.sampler, lr=a.lr, classes_per_step=a.classes_per_step, n_gen=a.n_gen,
        n_pos=a.n_pos, max_locations=a.max_locations, lr_decay=a.lr_decay, minutes=a.minutes, precision=a.precision,
        tokenizer=a.tokenizer, encoder_space=a.encoder_space,
        eval_samples=a.eval_samples, eval_every=a.eval_every,
    )
    run = train_images(cfg, a.out, progress=not a.no_progress, resume=a.resume, device=a.device,
                       tensorboard=a.tensorboard, ranks_per_class=a.ranks_per_class, compile_field=a.compile_field)
    if run.out is None:  # a rank > 0 of a torchrun job: rank 0 reports
        return 0
    h = run.history
    print(f"trained {h['step'][-1]} steps in {h['time'][-1]:.0f}s ({h['step'][-1] / max(h['time'][-1], 1e-9):.2f} step/s); "
          f"final raw drift norm {h['V2'][-1]:.4g}")
    if run.metrics:
        m = run.metrics
        print(f"\n{m['n_samples']} samples (alpha 1), in-domain classifier (test accuracy {m['classifier_test_accuracy']:.3f}):")
        print("| accuracy | classifier-feature FID to test | real train-vs-test floor |")
        print("| --- | --- | --- |")
        print(f"| {m['accuracy']:.3f} | {m['classifier_fid']:.2f} | {m['floor_classifier_fid']:.2f} |")
    print(f"wrote {Path(a.out) / 'model'}/ (EMA generator), {Path(a.out) / 'samples.png'} (one row per class), "
          f"log.jsonl, checkpoint.pt" + (", metrics.json" if run.metrics else ""))
    return 0


def cmd_train_mae(a: argparse.Namespace) -> int:
    from .data.images import load_dataset
    from .recipes.images import MAEConfig, pretrain_mae

    cfg = MAEConfig(encoder=a.preset, steps=a.steps, seed=a.seed, cls_steps=a.cls_steps, cls_lambda=a.cls_lambda,
                    cls_warmup=a.cls_warmup)
    cfg.validate()  # before the dataset is read
    pretrain_mae(load_dataset(a.data, "train"), cfg, a.out, progress=not a.no_progress)
    print(f"wrote the ResNet-MAE (EMA) to {a.out}/" + (" (with its classification head)" if a.cls_steps else ""))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .recipes.images import generate, load_generator, write_grid

    model, tokenizer = load_generator(a.model)
    K = model.config.num_classes
    if a.labels:
        labels = torch.tensor([int(v) for v in a.labels.split(",")])
        if (labels < 0).any() or (labels >= K).any():
            raise ValueError(f"--labels must be class indices in [0, {K})")
        labels = labels.repeat(math.ceil(a.num / len(labels)))[: a.num]
    else:
        labels = torch.arange(a.num) % K
    if a.cfg < 1:
        raise ValueError(f"--cfg (alpha) must be >= 1, got {a.cfg}")
    imgs = generate(model, labels, a.cfg, seed=a.seed, tokenizer=tokenizer)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=imgs, labels=labels.numpy().astype(np.int64))
    order = np.argsort(labels.numpy(), kind="stable")[: min(a.num, 10 * K)]
    write_grid(imgs[order], min(10, a.num), out.with_suffix(".png"))
    print(f"wrote {out} (images {imgs.shape} uint8, labels) and {out.with_suffix('.png')}")
    return 0


def cmd_eval_classifier(a: argparse.Namespace) -> int:
    from .data.images import load_dataset
    from .models.classifier import SmallCNN
    from .recipes.classify import cached_classifier, classifier_report, train_classifier

    from .recipes.evaluate import load_samples

    # every input is checked before the (minutes-long) classifier training
    images, labels = load_samples(a.samples)
    if labels is None:
        raise ValueError(f"{a.samples}: eval-classifier needs 'labels' ([N] integers, the conditioning classes)")
    train, test = load_dataset(a.data, "train"), load_dataset(a.data, "test")
    if images.shape[1:] != train.shape:
        raise ValueError(f"{a.samples}: images of shape {images.shape[1:]} do not match {a.data}'s {train.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= train.num_classes):
        raise ValueError(f"{a.samples}: labels must lie in [0, {train.num_classes}) for {a.data}, "
                         f"got [{labels.min()}, {labels.max()}]")
    if a.classifier is None:
        model = cached_classifier(train, steps=a.steps, progress=not a.no_progress)
    elif (Path(a.classifier) / "model.safetensors").is_file():
        model = SmallCNN.from_pretrained(a.classifier)
    else:
        model = train_classifier(train, steps=a.steps, progress=not a.no_progress)
        model.save_pretrained(a.classifier)
    rep = classifier_report(model, images, labels, test, train)
    for k, v in rep.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drifting", description="One-step generative models trained with a drifting field.")
    p.add_argument("--version", action="version", version=f"drifting {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fit-points", help="fit a point cloud (built-in 2-D target or a .npy/.csv [n, d] file)",
        description="Train an MLP generator with the drifting loss on DATA and write samples, metrics and figures.",
    )
    f.add_argument("data", metavar="DATA", help=f"a .npy/.csv file of shape [n, d], or one of: {', '.join(TARGETS)}")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--samples", type=_positive_int, default=5000, help="points to generate (default 5000)")
    f.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _add_fit_args(f)
    add_threads_option(f)
    f.set_defaults(func=cmd_fit_points)

    t = sub.add_parser("toy", help="the paper's toy studies: fig3, fig4, ablation (Tables 1, 11, A.6)")
    t.add_argument("study", choices=("fig3", "fig4", "ablation"))
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--steps", type=_positive_int, default=None, help="training steps per run")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target", default="checkerboard", help=f"ablation target, one of: {', '.join(TARGETS)}")
    t.add_argument("--no-progress", action="store_true")
    add_threads_option(t)
    t.set_defaults(func=cmd_toy)

    tr = sub.add_parser("train", help="train a class-conditional image generator (DiT + ResNet-MAE features)",
                        description="Train a one-step class-conditional generator. With no option but --out: the "
                        "'cpu' preset on Fashion-MNIST, ~15 min on 2 CPU cores including the MAE pre-training "
                        "(cached between runs). Options left out keep the preset's values.")
    tr.add_argument("--out", required=True)
    tr.add_argument("--preset", default="cpu", help="training preset: cpu (default), cpu-tiny, or Table 8's "
                    "ablation, B/2, L/2, B/16, L/16")
    tr.add_argument("--data", default=None, help="fashion-mnist, mnist:<dir>, an IDX dir, .npz or image folder")
    tr.add_argument("--generator", default=None, help="DiT preset (cpu-tiny, cpu-small, B/2, L/2, B/16, L/16)")
    tr.add_argument("--encoder", default=None, help="feature encoder(s), '+'-joined: mae (default), mae:DIR, "
                    "resnet50:W.pth[@RES] (torchvision / MoCo / SimCLR), timm:convnextv2_atto:W.safetensors[@RES]")
    tr.add_argument("--mae", default=None, help="pretrained ResNet-MAE dir (default: pre-train, cached between runs)")
    tr.add_argument("--tokenizer", default=None, help="latent space: sd-vae:DIR or autoencoderkl:DIR (a local "
                    "diffusers AutoencoderKL); default: pixel space")
    tr.add_argument("--encoder-space", choices=("latent", "pixel"), default=None,
                    help="with --tokenizer: features of latents (latent-MAE, default) or of decoded pixels")
    tr.add_argument("--mae-preset", default=None, help="ResNet-MAE preset to pre-train (cpu-tiny, cpu-small, ...)")
    tr.add_argument("--mae-steps", type=_positive_int, default=None)
    tr.add_argument("--mae-batch", type=_positive_int, default=None)
    tr.add_argument("--mae-cls-steps", type=int, default=None,
                    help="steps of A.3's classification fine-tuning of the MAE (0: none)")
    tr.add_argument("--classes-per-step", type=_positive_int, default=None, help="Nc")
    tr.add_argument("--n-gen", type=_positive_int, default=None, help="N generated samples per class")
    tr.add_argument("--n-pos", type=_positive_int, default=None, help="P positives per class")
    tr.add_argument("--n-uncond", type=int, default=None, help="N_unc unconditional negatives (default: the CFG preset's)")
    tr.add_argument("--max-locations", type=_positive_int, default=None,
                    help="drift at most this many random locations per feature map and step")
    tr.add_argument("--steps", type=_positive_int, default=None)
    tr.add_argument("--eval-samples", type=int, default=None,
                    help="samples for the final in-domain classifier metrics (default 1000; 0 skips)")
    tr.add_argument("--eval-every", type=int, default=None,
                    help="a learning curve: the same metrics every this many steps, OUT/curve.json (default 0: off)")
    tr.add_argument("--cfg", default=None, help="CFG preset for training (ablation, B/2, L/2, none, ...)")
    tr.add_argument("--sampler", choices=("queue", "balanced"), default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--lr-decay", type=float, default=None,
                    help="the last fraction of training ramps the lr linearly to 0 (0: constant)")
    tr.add_argument("--minutes", type=_positive_float, default=None,
                    help="a wall-time budget for the generator's training (stops at --steps or after this long)")
    tr.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                    help="bf16 autocast of the networks: auto (CUDA only, default), fp32, bf16 (also on the CPU)")
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    tr.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard under OUT/tb")
    tr.add_argument("--ranks-per-class", type=_positive_int, default=1,
                    help="under torchrun: ranks that share each class (1: classes sharded over ranks; the world "
                    "size: every rank holds part of every class, with positives and negatives gathered)")
    tr.add_argument("--compile-field", action="store_true", help="torch.compile the drifting field's elementwise work")
    tr.add_argument("--resume", action="store_true")
    tr.add_argument("--no-progress", action="store_true")
    add_threads_option(tr)
    tr.set_defaults(func=cmd_train)

    tm = sub.add_parser("train-mae", help="pre-train the ResNet-MAE feature encoder (A.3)")
    tm.add_argument("--out", required=True)
    tm.add_argument("--data", default="fashion-mnist")
    tm.add_argument("--preset", default="cpu-small")
    tm.add_argument("--steps", type=_positive_int, default=1500)
    tm.add_argument("--cls-steps", type=int, default=0, help="then this many steps of A.3's classification "
                    "fine-tuning, lambda L_cls + (1 - lambda) L_recon (default 0: none; the paper: 3000)")
    tm.add_argument("--cls-lambda", type=float, default=0.1, help="the final lambda (default 0.1, A.3)")
    tm.add_argument("--cls-warmup", type=int, default=1000, help="steps of lambda's linear warm-up from 0 (default 1000)")
    tm.add_argument("--seed", type=int, default=0)
    tm.add_argument("--no-progress", action="store_true")
    add_threads_option(tm)
    tm.set_defaults(func=cmd_train_mae)

    sp = sub.add_parser("sample", help="one-step samples from a trained generator, as .npz + PNG grid")
    sp.add_argument("model", help="a model directory written by `drifting train` (OUT/model)")
    sp.add_argument("--num", type=_positive_int, default=100)
    sp.add_argument("--cfg", type=float, default=1.0, help="CFG scale alpha >= 1 (free at inference)")
    sp.add_argument("--labels", default=None, help="comma-separated class indices (default: all classes in turn)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="output .npz (images uint8 [N,H,W,C], labels int64 [N])")
    add_threads_option(sp)
    sp.set_defaults(func=cmd_sample)

    ec = sub.add_parser("eval-classifier", help="accuracy and classifier-feature FID of class-conditional samples")
    ec.add_argument("samples", help=".npz from `drifting sample` (images uint8 [N,H,W,C], labels [N])")
    ec.add_argument("--data", default="fashion-mnist", help="the dataset the samples imitate (train and test splits)")
    ec.add_argument("--classifier", default=None, help="a classifier dir (trained there if absent; default: the on-disk cache)")
    ec.add_argument("--steps", type=_positive_int, default=1500, help="classifier training steps when training one")
    ec.add_argument("--json", default=None, help="also write the report here")
    ec.add_argument("--no-progress", action="store_true")
    add_threads_option(ec)
    ec.set_defaults(func=cmd_eval_classifier)

    from .recipes.evaluate import add_eval_parser

    add_eval_parser(sub)  # drifting eval SAMPLES.npz --ref REF: FID, precision/recall, density/coverage
    from .recipes.ablations import add_ablate_parser

    add_ablate_parser(sub)  # drifting ablate NAME --out DIR: a paper ablation table at CPU scale
    from .recipes.flow import add_flow_parser

    add_flow_parser(sub)  # drifting train-flow: class-conditional flow matching (peer / Drift-RAE teacher)
    from .recipes.autoencoders import add_autoencoder_parsers

    add_autoencoder_parsers(sub)  # drifting train-rae / train-vae: Drift-RAE's latent spaces
    from .recipes.drift_rae import add_distill_parser

    add_distill_parser(sub)  # drifting distill: Drift-RAE one-step distillation of a flow model
    from .recipes.latent_stats import add_latent_stats_parser

    add_latent_stats_parser(sub)  # drifting latent-stats: Drift-RAE Tables 1-2 (isotropy, dispersion), curvature
    from .recipes.policy import add_policy_parser

    add_policy_parser(sub)  # drifting policy collect|train|eval|compare: Drifting Policy vs Diffusion Policy
    from .recipes.peers import add_peers_parser

    add_peers_parser(sub)  # drifting peers: drifting vs flow matching vs MMD, side by side

    from .recipes.analysis import add_analysis_parsers

    add_analysis_parsers(sub)  # drifting cfg-sweep (Fig. 5), drifting neighbours (Fig. 6)
    return p


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for this command (applied by :func:`main`)."""
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's, one per core); on a CPU shared with another busy "
                        "job, 1 can be several times faster than 2")


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        rc = args.func(args)
        if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun: all ranks leave the group together
            from .distributed import shutdown

            shutdown()
        return rc
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as e:
        print(f"drifting {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)


if __name__ == "__main__":
    sys.exit(main())

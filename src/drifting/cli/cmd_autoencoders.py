"""``drifting train-rae`` and ``drifting train-vae``: Drift-RAE's latent spaces
(:mod:`drifting.recipes.autoencoders`)."""

from __future__ import annotations

import argparse

from ..recipes.autoencoders import RAETrainConfig, VAETrainConfig, train_rae, train_vae
from .args import add_resume_options, add_threads_option, positive_int, resume_flag


def _print_metrics(m: dict, out: str) -> None:
    for k in ("train_seconds", "recon_mse_test", "recon_psnr_test", "params", "latent_shape"):
        v = m[k]
        print(f"{k:18s} {v:.4g}" if isinstance(v, float) else f"{k:18s} {v}")
    print(f"wrote {out}/ (export, recon.png, metrics.json)")


def cmd_train_rae(a: argparse.Namespace) -> int:
    over = {k: getattr(a, k)
            for k in ("data", "steps", "batch", "lr", "noise_tau", "stage", "seed", "decoder_width",
                      "mae_dir") if getattr(a, k, None) is not None}
    m = train_rae(RAETrainConfig(**over).validate(), a.out, progress=not a.no_progress,
                  resume=resume_flag(a, a.out))
    _print_metrics(m, a.out)
    return 0


def cmd_train_vae(a: argparse.Namespace) -> int:
    over = {k: getattr(a, k) for k in ("data", "steps", "batch", "lr", "kl_weight", "latent_channels", "seed")
            if getattr(a, k, None) is not None}
    m = train_vae(VAETrainConfig(**over).validate(), a.out, progress=not a.no_progress,
                  resume=resume_flag(a, a.out))
    _print_metrics(m, a.out)
    return 0


def add_autoencoder_parsers(subparsers) -> None:
    """Register ``drifting train-rae`` and ``drifting train-vae`` on ``subparsers`` (from
    ``add_subparsers``)."""
    r = subparsers.add_parser(
        "train-rae",
        help="train a small representation autoencoder (frozen ResNet-MAE encoder + conv decoder)",
        description="Drift-RAE / RAE at CPU scale: the ResNet-MAE feature encoder (pre-trained and cached "
        "as for `drifting train`) stays frozen; its stage-3 token grid, normalized per channel, is the "
        "latent and a conv decoder learns to map it back to pixels (noise-augmented). Writes OUT/ (load "
        "with --tokenizer rae:OUT), OUT/recon.png and OUT/metrics.json. Options left out keep "
        "RAETrainConfig's defaults.")
    r.add_argument("--out", required=True, help="output directory (the RAETokenizer export)")
    r.add_argument("--data", default=None,
                   help="fashion-mnist (default), mnist:<dir>, an IDX dir, .npz or image folder")
    r.add_argument("--mae-dir", default=None,
                   help="an existing ResNet-MAE export (default: pre-train, cached)")
    r.add_argument("--stage", type=int, choices=(1, 2, 3, 4), default=None,
                   help="encoder stage of the latent (default 3)")
    r.add_argument("--decoder-width", type=positive_int, default=None, help="decoder channels (default 64)")
    r.add_argument("--steps", type=positive_int, default=None, help="decoder training steps (default 800)")
    r.add_argument("--batch", type=positive_int, default=None, help="images per step (default 64)")
    r.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    r.add_argument("--noise-tau", type=float, default=None,
                   help="latent noise sigma ~ U[0, tau] (default 0.5)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--no-progress", action="store_true")
    add_resume_options(r)
    add_threads_option(r)
    r.set_defaults(func=cmd_train_rae)

    v = subparsers.add_parser(
        "train-vae", help="train a small reconstruction VAE (diffusers AutoencoderKL, 28x28 -> 7x7x4)",
        description="The SD-VAE recipe at CPU scale: L1 + MSE reconstruction + a weak KL term, then "
        "scaling_factor = 1 / std of the latents. Writes OUT/ (load with --tokenizer autoencoderkl:OUT), "
        "OUT/recon.png and OUT/metrics.json. Options left out keep VAETrainConfig's defaults.")
    v.add_argument("--out", required=True, help="output directory (diffusers save_pretrained layout)")
    v.add_argument("--data", default=None,
                   help="fashion-mnist (default), mnist:<dir>, an IDX dir, .npz or image folder")
    v.add_argument("--latent-channels", type=positive_int, default=None, help="latent channels (default 4)")
    v.add_argument("--kl-weight", type=float, default=None, help="weight of the per-pixel KL (default 1e-4)")
    v.add_argument("--steps", type=positive_int, default=None, help="training steps (default 600)")
    v.add_argument("--batch", type=positive_int, default=None, help="images per step (default 64)")
    v.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    v.add_argument("--seed", type=int, default=None)
    v.add_argument("--no-progress", action="store_true")
    add_resume_options(v)
    add_threads_option(v)
    v.set_defaults(func=cmd_train_vae)

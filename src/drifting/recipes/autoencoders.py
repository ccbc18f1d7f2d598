"""Training the latent spaces: a small representation autoencoder (RAE) and a small reconstruction VAE.

Paper context: Zhang et al. 2026, "Drift-RAE" (drift-rae-distillation), Sec. 1 and 3.2: an RAE
keeps a FROZEN pretrained representation encoder and trains only a pixel decoder (RAE, Zheng et
al. 2025); a reconstruction VAE (SD-VAE, Rombach et al. 2022) trains encoder and decoder together
for reconstruction with a weak KL term. Sec. 3.2 / Table 1-2 contrast their geometry (RAE latents
are semantically concentrated, VAE latents scattered); these two trainers make CPU-sized versions of
both on the same data, so the library's latent-space pipelines (``build_tokenizer("rae:DIR")``,
``build_tokenizer("autoencoderkl:DIR")``) can compare them.

* :func:`train_rae`: the frozen encoder is the ResNet-MAE the image generator uses
  (:func:`drifting.recipes.mae_pretrain.cached_mae_dir` with the same :class:`MAEConfig`), its stage-3
  output ``[32, 7, 7]`` (Fashion-MNIST) is the latent, normalized per channel with statistics of
  the training set, and a conv decoder is trained with noise-augmented latents
  ``z + sigma * eps``, ``sigma ~ U[0, noise_tau]`` per sample (RAE's noise-augmented decoding).
* :func:`train_vae`: a diffusers ``AutoencoderKL`` with 3 blocks (28x28 -> 7x7x4), trained with
  reconstruction + ``kl_weight`` x KL, then ``scaling_factor = 1 / std`` of the posterior-mean
  latents (as for SD-VAE's 0.18215) and saved with ``save_pretrained``.

Both use L1 + MSE reconstruction only: RAE and SD-VAE also use a perceptual (LPIPS) loss and a
GAN loss, which need pretrained weights (VGG / LPIPS) this library cannot fetch; at 28x28
grayscale the pixel losses give recognisable reconstructions (slightly blurry).

Both write ``OUT/recon.png`` (top row: test originals; bottom row: their reconstructions) and
``OUT/metrics.json``, and return ``{"train_seconds", "recon_mse_test", "recon_psnr_test",
"params", "latent_shape", ...}``. MSE is in the library's ``[-1, 1]`` pixel units on clamped
reconstructions; PSNR is ``10 log10(2^2 / MSE)``, the same as on ``[0, 1]`` pixels.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..cache import cached_dir, content_key
from ..data.images import ImageDataset, load_dataset
from ..models.rae import RAETokenizer, channel_stats
from ..models.tokenizer import Tokenizer
from ..training.checkpoint import jsonable
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.rng import step_generator
from .image_sampling import to_uint8, write_grid
from .mae_pretrain import MAEConfig, cached_mae_dir

__all__ = [
    "RAETrainConfig",
    "VAETrainConfig",
    "train_rae",
    "train_vae",
    "cached_rae_dir",
    "cached_vae_dir",
]

RECON_IMAGES = 16  # test images shown in recon.png
HOLDOUT_MAX = 1000  # held-out images when the data has no test split (.npz, image folder)


def _need(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_common(cfg, prefix: str) -> None:
    _need(isinstance(cfg.data, str) and bool(cfg.data.strip()), f"{prefix}.data",
          f"must be a dataset spec such as 'fashion-mnist' or a .npz path, got {cfg.data!r}")
    for name in ("steps", "batch"):
        _need(_pos_int(getattr(cfg, name)), f"{prefix}.{name}",
              f"must be an integer >= 1, got {getattr(cfg, name)!r}")
    _need(isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0, f"{prefix}.lr",
          f"must be a finite number > 0, got {cfg.lr!r}")
    _need(isinstance(cfg.weight_decay, (int, float)) and cfg.weight_decay >= 0, f"{prefix}.weight_decay",
          f"must be >= 0, got {cfg.weight_decay!r}")
    _need(isinstance(cfg.warmup, int) and not isinstance(cfg.warmup, bool) and cfg.warmup >= 0,
          f"{prefix}.warmup", f"must be an integer >= 0, got {cfg.warmup!r}")
    _need(cfg.ema_decay is None or (isinstance(cfg.ema_decay, (int, float)) and 0.0 <= cfg.ema_decay < 1.0),
          f"{prefix}.ema_decay", f"must be None (no EMA) or in [0, 1), got {cfg.ema_decay!r}")
    _need(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool), f"{prefix}.seed",
          f"must be an integer, got {cfg.seed!r}")


# --------------------------------------------------------------------------- configs
@dataclass
class RAETrainConfig:
    """Training of the small-scale RAE decoder (:func:`train_rae`); CPU-sized defaults.

    ``mae`` is the ResNet-MAE pre-training config: the frozen encoder is
    ``images.cached_mae_dir(train set, mae)``, the very encoder an image run with the same
    ``MAEConfig`` uses (or ``mae_dir``, an existing export). ``steps`` (default 800, batch 64)
    took 254 s for features + decoder on Fashion-MNIST with 1 torch thread on 2 cores shared
    with another job (see ``train_seconds``), plus the MAE pre-training the first time (cached).
    ``noise_tau`` 0.5 on the unit-variance normalized latents (RAE's ``sigma ~ U[0, tau]``).
    """

    data: str = "fashion-mnist"
    mae: MAEConfig = field(default_factory=MAEConfig)
    mae_dir: str | None = None  # an existing ResNet-MAE export; None: cached_mae_dir(train set, mae)
    stage: int = 3  # encoder stage whose output is the latent (28x28 -> 7x7 tokens of 4C channels)
    decoder_width: int = 64
    decoder_blocks: int = 2
    steps: int = 800
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 50
    noise_tau: float = 0.5  # RAE noise augmentation: sigma ~ U[0, noise_tau] on the normalized latents
    ema_decay: float | None = 0.995  # EMA of the decoder weights (None: off)
    seed: int = 0

    def validate(self) -> "RAETrainConfig":
        """Raise ``ValueError`` naming the offending field; return self."""
        _check_common(self, "RAETrainConfig")
        _need(isinstance(self.mae, MAEConfig), "RAETrainConfig.mae",
              f"must be a MAEConfig, got {type(self.mae).__name__}")
        _need(self.mae_dir is None or isinstance(self.mae_dir, str), "RAETrainConfig.mae_dir",
              f"must be None or a directory path string, got {self.mae_dir!r}")
        _need(self.stage in (1, 2, 3, 4) and not isinstance(self.stage, bool), "RAETrainConfig.stage",
              f"must be one of 1, 2, 3, 4, got {self.stage!r}")
        for name in ("decoder_width", "decoder_blocks"):
            _need(_pos_int(getattr(self, name)), f"RAETrainConfig.{name}",
                  f"must be an integer >= 1, got {getattr(self, name)!r}")
        _need(isinstance(self.noise_tau, (int, float)) and math.isfinite(self.noise_tau)
              and self.noise_tau >= 0, "RAETrainConfig.noise_tau",
              f"must be a finite number >= 0, got {self.noise_tau!r}")
        return self


@dataclass
class VAETrainConfig:
    """Training of a small reconstruction VAE, a diffusers ``AutoencoderKL`` (:func:`train_vae`).

    Three blocks (``block_out_channels``) downsample by 4: 28x28 -> 7x7 with ``latent_channels``
    4 (the SD-VAE layout at CPU scale: 196 latent numbers per image against the RAE's 1568).
    ``kl_weight`` multiplies the KL divergence per pixel, i.e. both terms are sums over the
    image divided by its pixel count, as in the LDM loss (``nll + kl_weight * kl``, both per
    image; SD-VAE uses 1e-6 there). The default 1e-4 is deliberately SD-VAE-like weak: on
    Fashion-MNIST (600 steps) the KL term ends at ~0.2% of the loss, the latents' spread is
    ~2.3 and the posterior std ~0.02 (median), so the latent is bounded and, after
    ``scaling_factor``, of unit scale, while reconstructions stay as sharp as without it; this is
    the "reconstruction-based VAE" that Drift-RAE Sec. 3.2 contrasts with RAE latents. Larger
    weights trade reconstruction for a smoother, more Gaussian latent. Default ``steps`` (600,
    batch 64) took 309 s with 1 torch thread on 2 cores shared with another job (~4-5 min).
    The default widths (16, 32, 32) give ~0.24M parameters, the size of the RAE's decoder.
    """

    data: str = "fashion-mnist"
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    steps: int = 600
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 50
    kl_weight: float = 1e-4
    ema_decay: float | None = 0.995  # EMA of the VAE weights (None: off)
    scale_samples: int = 10000  # training images whose posterior means set scaling_factor (all if fewer)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.block_out_channels, list):
            self.block_out_channels = tuple(self.block_out_channels)

    def validate(self) -> "VAETrainConfig":
        """Raise ``ValueError`` naming the offending field; return self."""
        _check_common(self, "VAETrainConfig")
        b = self.block_out_channels
        _need(isinstance(b, tuple) and len(b) >= 1 and all(_pos_int(c) for c in b),
              "VAETrainConfig.block_out_channels", f"must be a non-empty tuple of integers >= 1, got {b!r}")
        for name in ("layers_per_block", "latent_channels", "norm_num_groups", "scale_samples"):
            _need(_pos_int(getattr(self, name)), f"VAETrainConfig.{name}",
                  f"must be an integer >= 1, got {getattr(self, name)!r}")
        bad = [c for c in b if c % self.norm_num_groups]
        _need(not bad, "VAETrainConfig.norm_num_groups",
              f"{self.norm_num_groups} must divide every block_out_channels entry, but not {bad}")
        _need(isinstance(self.kl_weight, (int, float)) and math.isfinite(self.kl_weight)
              and self.kl_weight >= 0, "VAETrainConfig.kl_weight",
              f"must be a finite number >= 0, got {self.kl_weight!r}")
        return self


# --------------------------------------------------------------------------- shared helpers
def _splits(data: str, seed: int) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """``(full train split, images to train on, test images)``. Without a test split (an .npz or an
    image folder) a random 10% of the training images (at most 1000) is held out for the metrics."""
    full = load_dataset(data, "train")
    try:
        test = load_dataset(data, "test")
        return full, full, test
    except (ValueError, FileNotFoundError):
        pass
    n = len(full)
    k = min(HOLDOUT_MAX, n // 10)
    if k < 1:
        raise ValueError(f"data: {data!r} has no test split and too few images ({n}) to hold "
                         "10% out for the metrics")
    perm = np.random.default_rng(seed).permutation(n)
    return full, full.subset(np.sort(perm[k:])), full.subset(np.sort(perm[:k]))


def _lr(cfg, step: int) -> float:
    """Linear warm-up then cosine decay to 0 (as the MAE pre-training)."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


def _trainer(out: Path, kind: str, cfg, model, opt, ema, progress: bool, resume: bool) -> Trainer:
    """The shared loop for the RAE decoder and the VAE: warm-up + cosine lr (:func:`_lr`), checkpoints in
    ``out`` every tenth of the run (a killed run resumes there with ``resume``), the log every 10 steps."""
    return Trainer(out, kind, jsonable(asdict(cfg)), model, opt, ema=ema, steps=cfg.steps, resume=resume,
                   progress=progress, desc=f"train-{kind}", lr_at=lambda i, _: _lr(cfg, i), log_every=10,
                   ckpt_every=max(50, cfg.steps // 10), history_keys=("kl",) if kind == "vae" else (),
                   show=("rec", "kl"), defaults=jsonable(asdict(type(cfg)())))


def _recon_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE per pixel (RAE / SD-VAE add LPIPS and a GAN loss, which need weights we cannot have)."""
    d = x_hat.float() - x.float()
    return d.abs().mean() + d.square().mean()


@torch.no_grad()
def _evaluate(tok: Tokenizer, test: ImageDataset, out: Path, batch: int = 500) -> dict:
    """Test-set reconstruction MSE / PSNR of ``decode(encode(x))`` (clamped) and ``out/recon.png``."""
    se, n = 0.0, 0
    first = None
    for s in range(0, len(test), batch):
        x = test.to_tensor(np.arange(s, min(s + batch, len(test))))  # [b, C, H, W]
        y = tok.decode(tok.encode(x), clamp=True)  # [b, C, H, W]
        se += (y - x).double().square().sum().item()
        n += x.numel()
        if first is None:
            first = (x[:RECON_IMAGES], y[:RECON_IMAGES])
    mse = se / n
    x, y = first
    write_grid(np.concatenate([to_uint8(x), to_uint8(y)]), len(x), out / "recon.png")
    return {"recon_mse_test": mse, "recon_psnr_test": 10 * math.log10(4.0 / max(mse, 1e-12))}


# --------------------------------------------------------------------------- RAE
def train_rae(cfg: RAETrainConfig, out: str | Path, progress: bool = True, resume: bool = True) -> dict:
    """Train the small-scale RAE's pixel decoder on a frozen ResNet-MAE encoder; export to ``out``.

    Drift-RAE Sec. 1 / RAE: the representation encoder stays frozen; only the decoder learns.
    Steps: (1) the ResNet-MAE export (``cfg.mae_dir`` or ``cached_mae_dir(train, cfg.mae)``);
    (2) the stage-``cfg.stage`` features ``[N, D, h, w]`` of all training images, once; (3) the
    per-channel mean / std over samples and positions -> normalized latents ``z``; (4)
    ``cfg.steps`` AdamW steps on ``L1 + MSE(decoder(z + sigma eps), x)`` with ``sigma ~ U[0,
    noise_tau]`` per sample (RAE's noise-augmented decoding, so the decoder tolerates the
    imperfect latents a generator makes), warm-up + cosine learning rate, EMA; (5) the export
    (``RAETokenizer.save_pretrained``: config.json + model.safetensors), ``recon.png`` and
    ``metrics.json``. RAE also trains with LPIPS and a GAN loss; they need pretrained weights
    (VGG / a discriminator's features) that we cannot have here, so this uses L1 + MSE only.

    Returns ``{"train_seconds" (features + decoder training, without the MAE pre-training),
    "recon_mse_test", "recon_psnr_test", "params" (encoder + decoder), "decoder_params",
    "latent_shape" [D, h, w], "mae_dir", "final_loss"}``.
    """
    cfg.validate()
    out = Path(out)
    full, train, test = _splits(cfg.data, cfg.seed)
    H, W, C = full.shape
    mae_dir = Path(cfg.mae_dir) if cfg.mae_dir else cached_mae_dir(full, cfg.mae, progress=progress)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tok = RAETokenizer.from_mae(mae_dir, stage=cfg.stage, image_size=(H, W), decoder_width=cfg.decoder_width,
                                decoder_blocks=cfg.decoder_blocks)
    if tok.pixel_channels != C:
        raise ValueError(f"mae_dir: the ResNet-MAE at {mae_dir} takes {tok.pixel_channels} channels, "
                         f"but {cfg.data!r} has {C}")
    feats = tok.encode_dataset(train.images, batch=500, progress=progress, raw=True)  # [N, D, h, w]
    mean, std = channel_stats(feats)
    tok.set_normalization(mean, std)
    lat = feats.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))  # [N, D, h, w], in place
    feature_seconds = time.perf_counter() - t0

    dec = copy.deepcopy(tok.decoder).requires_grad_(True).train()
    opt = torch.optim.AdamW(dec.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(dec, (cfg.ema_decay,), warmup_steps=max(1, cfg.steps // 10)) if cfg.ema_decay else None
    run = _trainer(out, "rae", cfg, dec, opt, ema, progress, resume)

    def step(i: int):
        g = step_generator(cfg.seed, i, stream=5)
        idx = torch.randint(len(train), (cfg.batch,), generator=g)
        z = lat[idx]  # [B, D, h, w]
        if cfg.noise_tau > 0:  # RAE's noise-augmented decoding
            sigma = cfg.noise_tau * torch.rand(cfg.batch, 1, 1, 1, generator=g)  # [B, 1, 1, 1]
            z = z + sigma * torch.randn(z.shape, generator=g)
        return _recon_loss(dec(z), train.to_tensor(idx.numpy())), {}

    run.fit(step)
    lat = feats = None  # free the latents before the evaluation
    final = ema.models[cfg.ema_decay] if ema is not None else dec
    tok.decoder.load_state_dict(final.state_dict())
    train_seconds = feature_seconds + run.train_seconds
    tok.save_pretrained(out)
    metrics = {
        "train_seconds": train_seconds,
        **_evaluate(tok, test, out),
        "params": sum(p.numel() for p in tok.parameters()),
        "decoder_params": sum(p.numel() for p in tok.decoder.parameters()),
        "latent_shape": list(tok.latent_shape(C, H, W)),
        "mae_dir": str(mae_dir),
        "final_loss": run.history["loss"][-1],
        "test_images": len(test),
    }
    (out / "metrics.json").write_text(
        json.dumps({"config": jsonable(asdict(cfg)), **metrics}, indent=2) + "\n")
    return metrics


# --------------------------------------------------------------------------- VAE
def build_vae(cfg: VAETrainConfig, in_channels: int, image_size: int):
    """The randomly initialised diffusers ``AutoencoderKL`` of ``cfg`` (seeded by ``cfg.seed``)."""
    from ..models.tokenizer import _import_autoencoder_kl

    AutoencoderKL = _import_autoencoder_kl()
    n = len(cfg.block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=image_size,
        )
    return vae


def train_vae(cfg: VAETrainConfig, out: str | Path, progress: bool = True, resume: bool = True) -> dict:
    """Train a small reconstruction VAE (``AutoencoderKL``) and save it where ``autoencoderkl:OUT`` loads it.

    The SD-VAE recipe at CPU scale (Sec. 4 "Tokenizer" of Deng et al.; the "reconstruction-based
    VAE" of Drift-RAE Sec. 3.2): encoder and decoder train together on ``L1 + MSE(decode(z), x)
    + kl_weight * KL(q(z|x) || N(0, I)) / (C H W)`` with ``z`` a posterior sample, AdamW,
    warm-up + cosine learning rate, EMA. SD-VAE also uses LPIPS and a patch-GAN loss (pretrained
    weights we cannot have). Afterwards ``scaling_factor = 1 / std`` of the posterior means of
    (up to ``scale_samples``) training images — SD-VAE's 0.18215 was chosen the same way — is
    written into the config (``register_to_config``) and the model saved with
    ``save_pretrained(out, safe_serialization=True)``. The metrics are computed through
    ``build_tokenizer("autoencoderkl:OUT")``, i.e. on what was saved.

    Returns ``{"train_seconds", "recon_mse_test", "recon_psnr_test", "params", "latent_shape"
    [c, h, w], "scaling_factor", "final_loss", "final_kl"}``.
    """
    cfg.validate()
    out = Path(out)
    full, train, test = _splits(cfg.data, cfg.seed)
    H, W, C = full.shape
    f = 2 ** (len(cfg.block_out_channels) - 1)
    if H % f or W % f:
        raise ValueError(f"block_out_channels: {len(cfg.block_out_channels)} blocks downsample by {f}, which "
                         f"must divide the image size {H}x{W} of {cfg.data!r}")
    vae = build_vae(cfg, C, H).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(vae, (cfg.ema_decay,), warmup_steps=max(1, cfg.steps // 10)) if cfg.ema_decay else None
    run = _trainer(out, "vae", cfg, vae, opt, ema, progress, resume)

    def step(i: int):
        g = step_generator(cfg.seed, i, stream=6)
        idx = torch.randint(len(train), (cfg.batch,), generator=g)
        x = train.to_tensor(idx.numpy())  # [B, C, H, W]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)  # [B, c, h, w]
        rec = _recon_loss(vae.decode(z).sample, x)
        kl = post.kl().mean() / (C * H * W)  # per pixel, as the reconstruction terms
        return rec + cfg.kl_weight * kl, {"rec": rec.detach(), "kl": kl.detach()}

    run.fit(step)
    final = (ema.models[cfg.ema_decay] if ema is not None else vae).eval()

    # scaling_factor = 1 / std of the posterior means (SD-VAE), over up to scale_samples training images
    n = min(cfg.scale_samples, len(train))
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(train), size=n, replace=False))
    with torch.no_grad():
        means = torch.cat([final.encode(train.to_tensor(pick[s:s + 500])).latent_dist.mean
                           for s in range(0, n, 500)])  # [n, c, h, w]
    std = means.double().std().item()
    if not (math.isfinite(std) and std > 0):
        raise FloatingPointError(f"the VAE's posterior means have std {std}; the run "
                                 "diverged (try a lower lr)")
    final.register_to_config(scaling_factor=1.0 / std)
    train_seconds = run.train_seconds
    final.save_pretrained(str(out), safe_serialization=True)

    from ..models.tokenizers import build_tokenizer

    tok = build_tokenizer(f"autoencoderkl:{out}", pixel_channels=C)
    metrics = {
        "train_seconds": train_seconds,
        **_evaluate(tok, test, out),
        "params": sum(p.numel() for p in final.parameters()),
        "latent_shape": list(tok.latent_shape(C, H, W)),
        "scaling_factor": 1.0 / std,
        "final_loss": run.history["loss"][-1],
        "final_kl": run.history["kl"][-1],
        "test_images": len(test),
    }
    (out / "metrics.json").write_text(
        json.dumps({"config": jsonable(asdict(cfg)), **metrics}, indent=2) + "\n")
    return metrics


# --------------------------------------------------------------------------- cache
def _cached(kind: str, cfg, train_fn, progress: bool) -> Path:
    ds = load_dataset(cfg.data, "train")
    key = content_key(jsonable(asdict(cfg)), ds.images, ds.labels)
    return cached_dir(kind, key, lambda d: train_fn(cfg, d, progress=progress))


def cached_rae_dir(data: str | None = None, cfg: RAETrainConfig | None = None, progress: bool = True) -> Path:
    """The export directory of the RAE trained with ``cfg`` (default ``RAETrainConfig()``; ``data``, when
    given, overrides ``cfg.data``), from the on-disk cache or trained now. Keyed by the config and the
    training images and labels (:mod:`drifting.cache`), like
    :func:`drifting.recipes.mae_pretrain.cached_mae_dir`."""
    cfg = _with_data(RAETrainConfig() if cfg is None else cfg, data)
    return _cached("rae", cfg.validate(), train_rae, progress)


def cached_vae_dir(data: str | None = None, cfg: VAETrainConfig | None = None, progress: bool = True) -> Path:
    """As :func:`cached_rae_dir`, for the reconstruction VAE of :func:`train_vae` (an ``autoencoderkl:``
    dir)."""
    cfg = _with_data(VAETrainConfig() if cfg is None else cfg, data)
    return _cached("vae", cfg.validate(), train_vae, progress)


def _with_data(cfg, data: str | None):
    return cfg if data is None else replace(cfg, data=data)

"""Pre-training of the ResNet-MAE feature encoder of the image generator (paper A.3), and its cache.

:class:`MAEConfig` configures it, :func:`pretrain_mae` trains and exports one, and
:func:`cached_mae_dir` finds the one pre-trained with a config on a dataset (or trains it now).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cache import cached_dir, content_key, shipped_root
from ..data.images import ImageDataset
from ..models.resnet_mae import ResNetMAE, cls_lambda, mae_loss, random_resized_crop, resnet_mae_config
from ..models.tokenizer import Tokenizer
from ..training.checkpoint import jsonable
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.rng import step_generator


@dataclass
class MAEConfig:
    """Pre-training of the ResNet-MAE feature encoder (A.3), CPU-sized defaults."""

    encoder: str = "cpu-tiny"
    width: int | None = None  # override the preset's base width C (Table 3's width trend)
    steps: int = 800
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    ema_decay: float = 0.995
    crop_scale: tuple[float, float] = (0.5, 1.0)
    seed: int = 0
    # A.3 "Classification fine-tuning": after the MAE steps, cls_steps more steps of all parameters with a
    # linear head on the pooled last map and the loss lambda L_cls + (1 - lambda) L_recon, lambda warmed
    # linearly 0 -> cls_lambda over cls_warmup steps (the paper: 3k steps, 1k warm-up, 0.1). 0 = off.
    cls_steps: int = 0
    cls_lambda: float = 0.1
    cls_warmup: int = 1000

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"mae.steps must be >= 1, got {self.steps}")
        if self.cls_steps < 0:
            raise ValueError("mae.cls_steps must be >= 0 (0 = no classification fine-tuning), "
                             f"got {self.cls_steps}")
        if not 0.0 <= self.cls_lambda <= 1.0:
            raise ValueError(f"mae.cls_lambda must be in [0, 1], got {self.cls_lambda}")
        if self.cls_warmup < 0:
            raise ValueError(f"mae.cls_warmup must be >= 0, got {self.cls_warmup}")


def pretrain_mae(ds: ImageDataset, cfg: MAEConfig, out_dir: str | Path, *, progress: bool = True,
                 tokenizer: Tokenizer | None = None, resume: bool = True) -> ResNetMAE:
    """Train the ResNet-MAE (A.3: 2x2 zero-masking at 50%, loss on masked pixels, random resized
    crops, AdamW, EMA) and save the EMA model to ``out_dir`` (config.json + model.safetensors).

    With ``cfg.cls_steps > 0`` a second phase fine-tunes all parameters with a linear head on the
    dataset's labels (A.3 "Classification fine-tuning": ``lambda L_cls + (1 - lambda) L_recon``,
    lambda from :func:`cls_lambda`); each phase has its own cosine learning rate (the MAE phase
    after a 100-step warm-up; the fine-tuning ramps lambda instead), and the EMA carries through
    both. The exported model then has ``num_classes`` and its head.

    With a ``tokenizer`` it is a latent-MAE: the crops are made on the images and then encoded
    ("images are augmented before being passed through the VAE encoder", A.3).

    The two phases are one run of the shared :class:`~drifting.training.loop.Trainer`: ``out_dir`` gets
    ``checkpoint.pt`` and ``log.jsonl``, and a killed pre-training resumes there (``resume``)."""
    cfg.validate()
    H, W, C = ds.shape
    c, h, _ = tokenizer.latent_shape(C, H, W) if tokenizer is not None else (C, H, W)
    torch.manual_seed(cfg.seed)
    width = {} if cfg.width is None else {"base_width": cfg.width}
    heads = {"num_classes": ds.num_classes} if cfg.cls_steps > 0 else {}
    model = ResNetMAE(resnet_mae_config(cfg.encoder, in_channels=c, input_size=h, **width, **heads))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(model, (cfg.ema_decay,))
    labels_all = torch.from_numpy(ds.labels).long()
    run = Trainer(out_dir, "mae", jsonable(asdict(cfg)), model, opt, ema=ema, steps=cfg.steps + cfg.cls_steps,
                  resume=resume, progress=progress, desc="train-mae", lr_at=lambda i, _: _mae_lr(cfg, i),
                  log_every=10, ckpt_every=max(100, (cfg.steps + cfg.cls_steps) // 10), show=("acc",),
                  defaults=jsonable(asdict(MAEConfig())))

    def step(i: int):  # the global step: the (seed, step) stream continues across the phases
        g = step_generator(cfg.seed, i, stream=1)
        idx = torch.randint(len(ds), (cfg.batch,), generator=g)
        x = random_resized_crop(ds.to_tensor(idx.numpy()), g, scale=cfg.crop_scale)  # [B, C, H, W]
        if tokenizer is not None:
            with torch.no_grad():
                x = tokenizer.encode(x)  # [B, c, h, w]
        if i < cfg.steps:
            return mae_loss(model, x, g)
        return mae_loss(model, x, g, labels=labels_all[idx],
                        cls_weight=cls_lambda(i - cfg.steps, cfg.cls_warmup, cfg.cls_lambda))

    run.fit(step)
    best = ema.models[cfg.ema_decay]
    best.save_pretrained(out_dir)
    return best


def _mae_lr(cfg: MAEConfig, i: int) -> float:
    """Each phase's cosine learning rate at global step ``i``: the MAE phase after a 100-step warm-up, the
    classification fine-tuning without one (lambda's ramp is its warm-up)."""
    if i < cfg.steps:
        return cfg.lr * min(1.0, (i + 1) / 100) * 0.5 * (1 + math.cos(math.pi * i / cfg.steps))
    j = i - cfg.steps
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * j / cfg.cls_steps))


def mae_key(ds: ImageDataset, cfg: MAEConfig, tokenizer_spec: str | None = None) -> str:
    """The cache key of the ResNet-MAE pre-trained with ``cfg`` on ``ds``: a hash of the MAE config, the
    dataset's pixels and labels (and the tokenizer of a latent-MAE)."""
    return content_key(jsonable(asdict(cfg)), ds.images, ds.labels, tokenizer_spec)


def cached_mae_dir(ds: ImageDataset, cfg: MAEConfig, *, progress: bool = True,
                   tokenizer: Tokenizer | None = None, tokenizer_spec: str | None = None,
                   rebuild: bool = False) -> Path:
    """The directory of the ResNet-MAE pre-trained with ``cfg`` on exactly these images: the one shipped
    with the package, or the cache's, or trained now (always, with ``rebuild``).

    The key (:func:`mae_key`) hashes the MAE config and the dataset's pixels and labels, so a changed
    dataset or config never reuses a stale encoder (see :mod:`drifting.cache`).
    """
    key = mae_key(ds, cfg, tokenizer_spec if tokenizer is not None else None)
    return cached_dir("mae", key, lambda d: pretrain_mae(ds, cfg, d, progress=progress, tokenizer=tokenizer),
                      rebuild=rebuild)


def ship_mae(ds: ImageDataset, cfg: MAEConfig, *, progress: bool = True) -> Path:
    """Pre-train the ResNet-MAE of ``cfg`` on ``ds`` afresh and copy its export (config.json +
    model.safetensors) into the package (``drifting/weights/mae/<key>``), where :func:`cached_mae_dir`
    finds it before the cache. Returns the shipped directory."""
    built = cached_mae_dir(ds, cfg, progress=progress, rebuild=True)
    dest = shipped_root() / "mae" / mae_key(ds, cfg)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(built / name, dest / name)
    return dest

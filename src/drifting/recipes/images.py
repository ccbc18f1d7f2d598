"""Class-conditional image generation with the drifting loss in a ResNet-MAE feature space
(paper §3.4-4, A.2-A.9).

One training step (A.9): sample ``Nc`` classes and a CFG scale alpha per class; generate
``N`` samples per class with the DiT ``f(eps, c, alpha)``; draw ``P`` positives per class and
``N_unc`` unconditional real samples per class from the sample queue (A.8); extract the
multi-scale features of A.5 (plus the raw output, the "vanilla" loss) with the frozen encoder;
compute the drifting loss with the unconditional negatives weighted by ``w(alpha)`` (A.7);
backpropagate through the encoder into the generator; AdamW step; EMA update.

All randomness of step ``t`` comes from a generator seeded by ``(seed, t)``; together with the
saved sampler state this makes a resumed run repeat an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..cache import cached_dir, content_key
from ..data.images import ImageDataset, load_dataset
from ..data.queue import make_sampler
from ..distributed import barrier, init_from_env
from ..features import group_by_class, sample_locations, take_locations, vanilla_group
from ..guidance import CFG_PRESETS, sample_alpha, uncond_neg_weights
from ..field import NORMALIZE_CHOICES
from ..loss import DEFAULT_TEMPERATURES, KERNELS, drifting_loss
from ..models.generators import build_generator, generator_config, load_generator_model
from ..models.onestep import OneStepGenerator
from ..models.encoders import build_encoder, encode_groups
from ..models.tokenizer import Tokenizer
from ..models.tokenizers import build_tokenizer
from ..models.resnet_mae import ResNetMAE, cls_lambda, mae_loss, random_resized_crop, resnet_mae_config
from ..training.checkpoint import fill_defaults, jsonable, load_state, save_state
from ..training.rng import step_generator
from ..training.ema import EMA
from ..training.interrupt import stop_on_sigint
from ..training.loop import JsonlLogger as _Logger, progress_bar as _bar, truncate_log as _truncate_log
from ..training.precision import PRECISIONS, autocast as precision_autocast
from ..training.schedules import warmup_lr


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
            raise ValueError(f"mae.cls_steps must be >= 0 (0 = no classification fine-tuning), got {self.cls_steps}")
        if not 0.0 <= self.cls_lambda <= 1.0:
            raise ValueError(f"mae.cls_lambda must be in [0, 1], got {self.cls_lambda}")
        if self.cls_warmup < 0:
            raise ValueError(f"mae.cls_warmup must be >= 0, got {self.cls_warmup}")


@dataclass
class ImageTrainConfig:
    """Everything an image run depends on (saved beside its checkpoints and export)."""

    data: str = "fashion-mnist"
    generator: str = "cpu-small"  # generator preset: a DiT (models.dit.PRESETS) or a U-Net (models.convnet.PRESETS)
    # feature encoder(s) (models.encoders.build_encoder spec); "mae" is the ResNet-MAE of mae_dir, else
    # pre-trained with `mae` (cached between runs). "mae+timm:convnextv2_atto:W.safetensors@64": Table 9.
    encoder: str = "mae"
    mae_dir: str | None = None  # a pretrained ResNet-MAE export; None: pre-train (cached), copy to OUT/mae
    # latent space (optional): a models.tokenizers.build_tokenizer spec such as "sd-vae:/path/to/sd-vae";
    # the generator then works on latents. encoder_space: where the feature encoder looks, "latent"
    # (latent-MAE, Table 8's latent presets) or "pixel" (generated latents are decoded first, with
    # gradients through the decoder, as for MoCo / SimCLR / pixel-MAE features on a latent generator).
    tokenizer: str | None = None
    encoder_space: str = "latent"
    mae: MAEConfig = field(default_factory=MAEConfig)
    steps: int = 1000
    # a wall-time budget for the generator's training (MAE pre-training and evaluation excluded): stop at the
    # first step boundary after this many minutes, or at `steps`, whichever comes first (None: steps only).
    # For comparisons at equal wall time (benchmarks/quality_levers.py); a step budget repeats exactly.
    minutes: float | None = None
    classes_per_step: int = 10  # Nc
    n_gen: int = 8  # N generated per class (also the generated negatives)
    n_pos: int = 8  # P positives per class
    cfg: str = "ablation"  # CFG preset (guidance.CFG_PRESETS): alpha distribution and N_unc
    n_uncond: int | None = 8  # override the preset's N_unc (None: the preset's)
    sampler: str = "queue"  # "queue" (A.8) or "balanced"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    # the last lr_decay fraction of training (of `steps`, or of `minutes` with a time budget) ramps the lr
    # linearly down to 0 (0 = constant after the warm-up, as the paper's Table 8)
    lr_decay: float = 0.0
    grad_clip: float = 2.0
    ema_decays: tuple[float, ...] = (0.99, 0.999)
    # EMA warm-up (Drift-RAE Table 8's formula; 0 = off as in the drifting paper). On for short CPU
    # runs: without it a 0.999 EMA still holds 82% of the zero-output init after 200 steps.
    ema_warmup: int = 1000
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    feature_sets: str = "abcd"  # A.5 ablation: ab | abc | abcd
    # drift at most this many random locations per feature group and step (None: all). Each
    # location is its own problem, so a random subset is an unbiased, cheaper estimate.
    max_locations: int | None = 64
    vanilla: bool = True  # also drift the raw generator output
    # the field (ablations and the MMD peer): Alg. 2's "laplace" kernel or C.2's "mmd" (loss.KERNELS),
    # kernel normalization (Table 11: both | y | none), a V+ - r V- (Table 1), drift normalization (A.6)
    kernel: str = "laplace"
    normalize: str = "both"
    attraction: float = 1.0
    repulsion: float = 1.0
    normalize_drift: bool = True
    style_tokens: int | None = None  # override the generator preset's style tokens (A.2; 0 = off)
    seed: int = 0
    # bf16 autocast of the generator and encoder (training.precision): "auto" (on CUDA only), "fp32" or
    # "bf16" (also on the CPU). The field and the loss are fp32 either way.
    precision: str = "auto"
    log_every: int = 10
    sample_every: int = 250
    # at the end: accuracy of an in-domain classifier on this many samples and a classifier-feature
    # FID to the test split, with the train-vs-test floor (OUT/metrics.json; 0 = skip)
    eval_samples: int = 1000
    # a learning curve: every eval_every steps (0 = off) the same metrics on eval_samples samples of the EMA
    # generator, against the training time so far (the evaluation's own time excluded); OUT/curve.json
    eval_every: int = 0
    ckpt_every: int = 250

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.eval_every >= 0, f"eval_every must be >= 0 (0 = no learning curve), got {self.eval_every}")
        need(self.eval_every == 0 or self.eval_samples > 0,
             f"eval_every={self.eval_every} needs eval_samples > 0, got {self.eval_samples}")
        need(self.minutes is None or self.minutes > 0, f"minutes must be None or > 0, got {self.minutes}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.classes_per_step >= 1, f"classes_per_step must be >= 1, got {self.classes_per_step}")
        need(self.n_gen >= 2, f"n_gen must be >= 2 (generated samples are also negatives), got {self.n_gen}")
        need(self.n_pos >= 1, f"n_pos must be >= 1, got {self.n_pos}")
        need(self.cfg in CFG_PRESETS, f"cfg must be one of {sorted(CFG_PRESETS)}, got {self.cfg!r}")
        need(self.sampler in ("queue", "balanced"), f"sampler must be 'queue' or 'balanced', got {self.sampler!r}")
        need(self.feature_sets in ("ab", "abc", "abcd"), f"feature_sets must be ab, abc or abcd, got {self.feature_sets!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0.0 <= self.lr_decay <= 1.0, f"lr_decay must be in [0, 1], got {self.lr_decay}")
        need(self.encoder_space in ("latent", "pixel"),
             f"encoder_space must be 'latent' or 'pixel', got {self.encoder_space!r}")
        need(self.kernel in KERNELS, f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        need(self.normalize in NORMALIZE_CHOICES, f"normalize must be one of {NORMALIZE_CHOICES}, got {self.normalize!r}")
        need(self.attraction >= 0 and self.repulsion >= 0,
             f"attraction and repulsion must be >= 0, got {self.attraction}, {self.repulsion}")
        need(self.style_tokens is None or self.style_tokens >= 0, f"style_tokens must be None or >= 0, got {self.style_tokens}")
        need(self.mae.width is None or self.mae.width >= 1, f"mae.width must be None or >= 1, got {self.mae.width}")
        self.mae.validate()
        need(self.max_locations is None or self.max_locations >= 1,
             f"max_locations must be None or >= 1, got {self.max_locations}")

    @property
    def cfg_config(self):
        c = CFG_PRESETS[self.cfg]
        if self.n_uncond is not None:
            c = replace(c, n_uncond=self.n_uncond)
        return c





def _imagenet_preset(generator: str, encoder: str, mae_epochs: int, **kw) -> dict:
    """Table 8 (ImageNet 256x256, 1.28M images): the MAE uses lr 4e-3, batch 8192, EMA 0.9995 (A.3)."""
    mae = MAEConfig(encoder=encoder, steps=round(mae_epochs * 1_281_167 / 8192), batch=8192, lr=4e-3,
                    ema_decay=0.9995, crop_scale=(0.2, 1.0))
    base = dict(generator=generator, mae=mae, grad_clip=2.0, n_gen=64, n_uncond=None, max_locations=None, ema_warmup=0,
                ema_decays=(0.999, 0.9995, 0.9998, 0.9999), sample_every=5000, ckpt_every=2000, log_every=50)
    return {**base, **kw}


# Named training configurations (``drifting train --preset NAME``); fields left out keep the
# ImageTrainConfig defaults. The ImageNet rows are Table 8's columns; they expect ImageNet as an
# image folder (``--data DIR``) and, for the latent presets, SD-VAE latents (``--tokenizer``).
TRAIN_PRESETS: dict[str, dict] = {
    # the README's main job: Fashion-MNIST, under 15 minutes on 2 CPU cores with the MAE pre-training. Chosen by
    # the lever study of docs/results.md (issue 15): the conv-cpu U-Net generator (models.convnet), A.3's
    # classification fine-tuning of the MAE (400 steps, lambda 0.1 after a 100-step warm-up), 1000 steps (the
    # U-Net's steps cost 1.7x the DiT's on 2 cores), metrics on 2000 samples.
    # Session 4's lever table (600 steps each): P = 32 positives, lr 3e-3 and the last half of training ramping the
    # lr to 0 took classifier FID 57 -> 40 and accuracy 0.74 -> 0.80 at equal steps.
    "cpu": dict(generator="conv-cpu", mae=MAEConfig(cls_steps=400, cls_warmup=100), steps=1000, eval_samples=2000,
                n_pos=32, lr=3e-3, lr_decay=0.5),
    # issue 15 item 3: the main job for about an hour on 2 cores (8000 steps at 2.5 steps/s), with a learning curve
    # (accuracy and classifier FID every 1000 steps against the training time, OUT/curve.json)
    "cpu-long": dict(generator="conv-cpu", mae=MAEConfig(cls_steps=400, cls_warmup=100), steps=8000, eval_samples=2000,
                     eval_every=1000, n_pos=32, lr=3e-3, lr_decay=0.5),
    # the main job with the paper's DiT generator instead (the cpu-p4 DiT; the default before the U-Net)
    "cpu-dit": dict(generator="cpu-p4", mae=MAEConfig(cls_steps=400, cls_warmup=100), steps=1500, eval_samples=2000),
    # the main job before issue 15 (the ImageTrainConfig defaults: cpu-small DiT, plain MAE, 1000 steps): the
    # preset of the ablation and peer tables in docs/results.md measured before it
    "cpu-v1": {},
    "cpu-tiny": dict(generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=30, batch=32), steps=20,
                     classes_per_step=4, n_gen=4, n_pos=4, n_uncond=4, max_locations=16, warmup=5,
                     ema_warmup=10, sample_every=10, ckpt_every=10, log_every=5),  # smoke tests, seconds
    "ablation": _imagenet_preset("B/2", "latent-256", 192, steps=30_000, lr=2e-4, weight_decay=0.01, warmup=5000,
                                 classes_per_step=64, n_pos=64, cfg="ablation", ema_decays=(0.999,)),
    "B/2": _imagenet_preset("B/2", "latent-640", 1280, steps=200_000, lr=4e-4, weight_decay=0.0, warmup=10_000,
                            classes_per_step=128, n_pos=128, cfg="B/2"),
    "L/2": _imagenet_preset("L/2", "latent-640", 1280, steps=200_000, lr=4e-4, weight_decay=0.01, warmup=10_000,
                            classes_per_step=128, n_pos=64, cfg="L/2"),
    "B/16": _imagenet_preset("B/16", "pixel-640", 1280, steps=100_000, lr=2e-4, weight_decay=0.01, warmup=10_000,
                             classes_per_step=128, n_pos=128, cfg="B/16"),
    "L/16": _imagenet_preset("L/16", "pixel-640", 1280, steps=100_000, lr=4e-4, weight_decay=0.01, warmup=10_000,
                             classes_per_step=128, n_pos=128, cfg="L/16"),
}


def train_preset(name: str, **overrides) -> ImageTrainConfig:
    """``ImageTrainConfig`` of the preset ``name`` with ``overrides`` (None values are ignored)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"preset: unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    cfg = ImageTrainConfig(**TRAIN_PRESETS[name])
    mae_over = {k[4:]: v for k, v in overrides.items() if k.startswith("mae_") and k != "mae_dir" and v is not None}
    if mae_over:
        cfg.mae = replace(cfg.mae, **mae_over)
    rest = {k: v for k, v in overrides.items() if (not k.startswith("mae_") or k == "mae_dir") and v is not None}
    cfg = replace(cfg, **rest)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- MAE pre-training
def pretrain_mae(ds: ImageDataset, cfg: MAEConfig, out_dir: str | Path, *, progress: bool = True,
                 tokenizer: Tokenizer | None = None) -> ResNetMAE:
    """Train the ResNet-MAE (A.3: 2x2 zero-masking at 50%, loss on masked pixels, random resized
    crops, AdamW, EMA) and save the EMA model to ``out_dir`` (config.json + model.safetensors).

    With ``cfg.cls_steps > 0`` a second phase fine-tunes all parameters with a linear head on the
    dataset's labels (A.3 "Classification fine-tuning": ``lambda L_cls + (1 - lambda) L_recon``,
    lambda from :func:`cls_lambda`); each phase has its own cosine learning rate (the MAE phase
    after a 100-step warm-up; the fine-tuning ramps lambda instead), and the EMA carries through
    both. The exported model then has ``num_classes`` and its head.

    With a ``tokenizer`` it is a latent-MAE: the crops are made on the images and then encoded
    ("images are augmented before being passed through the VAE encoder", A.3)."""
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
    phases = [("train-mae", cfg.steps, False), ("mae cls ft", cfg.cls_steps, True)]
    step = 0  # the global step: the (seed, step) stream continues across phases
    for desc, n, classify in phases:
        bar = _bar(n, desc, progress) if n > 0 else None
        for i in range(n):
            g = step_generator(cfg.seed, step, stream=1)
            idx = torch.randint(len(ds), (cfg.batch,), generator=g)
            x = random_resized_crop(ds.to_tensor(idx.numpy()), g, scale=cfg.crop_scale)  # [B, C, H, W]
            if tokenizer is not None:
                with torch.no_grad():
                    x = tokenizer.encode(x)  # [B, c, h, w]
            warm = 1.0 if classify else min(1.0, (i + 1) / 100)  # fine-tuning: lambda's warm-up is the ramp
            for group in opt.param_groups:
                group["lr"] = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * i / n))
            if classify:
                loss, stats = mae_loss(model, x, g, labels=labels_all[idx],
                                       cls_weight=cls_lambda(i, cfg.cls_warmup, cfg.cls_lambda))
            else:
                loss, stats = mae_loss(model, x, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(model)
            step += 1
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    post = {"loss": f"{loss.item():.4f}"}
                    if "acc" in stats:
                        post["acc"] = f"{stats['acc'].item():.2f}"
                    bar.set_postfix(**post)
        if bar is not None:
            bar.close()
    best = ema.models[cfg.ema_decay]
    best.save_pretrained(out_dir)
    return best


# --------------------------------------------------------------------------- features
def feature_encoder(cfg: ImageTrainConfig, ds: ImageDataset, out: Path | None, progress: bool = True,
                    tokenizer: Tokenizer | None = None):
    """The frozen encoder(s) of ``cfg.encoder``; a bare ``mae`` part is the ResNet-MAE of ``cfg.mae_dir``,
    or of ``OUT/mae``, or pre-trained with ``cfg.mae`` (cached between runs, see :func:`cached_mae`)."""
    parts = [p.strip() for p in cfg.encoder.split("+")]
    if "mae" in parts:
        if cfg.mae_dir:
            if not (Path(cfg.mae_dir) / "model.safetensors").is_file():
                raise FileNotFoundError(f"mae_dir {cfg.mae_dir} holds no ResNet-MAE export (config.json + model.safetensors)")
            mae_dir = Path(cfg.mae_dir)
        elif out is not None and (out / "mae" / "model.safetensors").is_file():
            mae_dir = out / "mae"
        else:
            latent = tokenizer is not None and cfg.tokenizer and cfg.encoder_space == "latent"
            mae_dir = cached_mae_dir(ds, cfg.mae, progress=progress, tokenizer=tokenizer if latent else None,
                                     tokenizer_spec=cfg.tokenizer if latent else None)
            if out is not None:
                shutil.copytree(mae_dir, out / "mae", dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
        parts = [f"mae:{mae_dir}" if p == "mae" else p for p in parts]
    C = ds.shape[2]
    if tokenizer is not None and cfg.tokenizer and cfg.encoder_space == "latent":
        C = tokenizer.latent_shape(*_chw(ds))[0]
    return build_encoder("+".join(parts), in_channels=C)


def _chw(ds: ImageDataset) -> tuple[int, int, int]:
    H, W, C = ds.shape
    return C, H, W


def encode(encoder, x: torch.Tensor, sets: str, vanilla: bool, raw: torch.Tensor | None = None
           ) -> dict[str, torch.Tensor]:
    """Per-sample feature groups ``{name: [B, L, C]}`` (A.5) of the encoder input ``x``, plus the raw
    generator-space sample ``raw`` (default ``x``) as the "vanilla" group."""
    feats = encode_groups(encoder, x, sets)
    if vanilla:
        feats["vanilla"] = vanilla_group(x if raw is None else raw)
    return feats


# --------------------------------------------------------------------------- training
@dataclass
class ImageRun:
    generator: OneStepGenerator
    ema: EMA
    dataset: ImageDataset
    history: dict
    out: Path | None
    metrics: dict | None = None


def train_images(cfg: ImageTrainConfig, out_dir: str | Path | None, *, progress: bool = True,
                 resume: bool = False, device: str | torch.device | None = None,
                 tensorboard: bool = False, ranks_per_class: int = 1, compile_field: bool = False) -> ImageRun:
    """Train a class-conditional drifting generator; see the module docstring for one step.

    ``device`` defaults to CUDA when available (then the generator and encoder run under bf16
    autocast; the field and loss are computed in fp32), else CPU. All random draws are made on
    the CPU, so a run's randomness does not depend on the device. Each ``log_every`` steps a
    line goes to ``OUT/log.jsonl`` (and to TensorBoard under ``OUT/tb`` with ``tensorboard``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the step's global batch is split over the ranks as
    :mod:`drifting.distributed` describes (``ranks_per_class`` ranks share each class), the generator
    is wrapped in DistributedDataParallel, and rank 0 alone logs, samples, checkpoints and evaluates.
    Every draw of a step depends on ``(seed, step)`` and the class slot only, never on the world size,
    so a run resumed on another number of ranks trains on exactly the batches it would have seen.
    ``compile_field``: ``torch.compile`` the field's elementwise work.
    """
    cfg.validate()
    if device is None and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dev = torch.device(device if device is not None else "cpu")
    layout, comm = init_from_env(ranks_per_class, dev)
    main = layout.rank == 0
    autocast = precision_autocast(dev, cfg.precision)
    ds = load_dataset(cfg.data, "train")
    H, W, C = ds.shape
    K = ds.num_classes
    if cfg.classes_per_step > K:
        raise ValueError(f"classes_per_step={cfg.classes_per_step} exceeds the {K} classes of {cfg.data}")
    out = Path(out_dir) if out_dir is not None else None
    cfgc = cfg.cfg_config
    U = cfgc.n_uncond
    layout.check(cfg.classes_per_step, cfg.n_gen, cfg.n_pos, U)

    tok = build_tokenizer(cfg.tokenizer, pixel_channels=C).to(dev)
    c, h, w_ = tok.latent_shape(C, H, W)  # the generator's space: [c, h, w_] (= [C, H, W] in pixel space)
    decode_first = cfg.tokenizer is not None and cfg.encoder_space == "pixel"
    if not main:
        barrier()  # rank 0 pre-trains (or finds) the cached MAE first; the others then load it
    encoder = feature_encoder(cfg, ds, out, progress and main, tokenizer=tok).to(dev)
    if main:
        barrier()

    torch.manual_seed(cfg.seed)
    style_over = {} if cfg.style_tokens is None else {"style_tokens": cfg.style_tokens}
    G = build_generator(generator_config(cfg.generator, input_size=h, in_channels=c, num_classes=K, **style_over)).to(dev)
    G_ddp = G if comm is None else torch.nn.parallel.DistributedDataParallel(G, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(G.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(G, cfg.ema_decays, warmup_steps=cfg.ema_warmup)
    sampler = make_sampler(cfg.sampler, ds.labels, K)
    history: dict = {"step": [], "loss": [], "V2": [], "time": []}
    start = 0
    ckpt = out / "checkpoint.pt" if out is not None else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise FileNotFoundError(f"resume requested but there is no checkpoint at {ckpt}")
        state = load_state(ckpt)
        # a checkpoint written before an option existed holds its default (the run behaved that way)
        if fill_defaults(state["config"], _config_defaults()) != jsonable(asdict(cfg)):
            raise ValueError(f"{ckpt} was written with a different configuration; use a new --out")
        G.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        history = json.loads(state["history"])
        start = int(state["step"])
        _truncate_log(out / "log.jsonl", start)  # drop lines of steps after the checkpoint
    else:
        sampler.warm_up(ds.labels, generator=step_generator(cfg.seed, -1, stream=2))

    def save(step: int) -> None:
        if ckpt is not None and main:
            save_state(ckpt, {
                "model": G.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                "sampler": sampler.state_dict(), "step": step, "config": jsonable(asdict(cfg)),
                "history": json.dumps(history),
            })

    if not main:
        out = None  # rank 0 alone writes logs, pictures and the export
    log = _Logger(out, tensorboard) if out is not None else None
    bar = _bar(cfg.steps, "train", progress and main, initial=start)
    t0 = time.perf_counter() - (history["time"][-1] if history["time"] else 0.0)
    paused = [0.0]  # seconds of learning-curve evaluation in this session, left out of the training time

    def elapsed() -> float:
        return time.perf_counter() - t0 - paused[0]

    Nc_all, N_all, P_all = cfg.classes_per_step, cfg.n_gen, cfg.n_pos
    cls_slots = layout.classes(Nc_all)  # this rank's class slots of the step
    Nc, N, P, U_loc = len(range(Nc_all)[cls_slots]), N_all // layout.ranks_per_class, P_all // layout.ranks_per_class, U // layout.ranks_per_class
    with stop_on_sigint() as interrupted:  # Ctrl-C: finish the current step, write a checkpoint, then stop
        try:
            for step in range(start, cfg.steps):
                # the step's global batch: the same draws on every rank, whatever the world size
                g = step_generator(cfg.seed, step)
                classes_all = torch.randperm(K, generator=g)[:Nc_all]  # [Nc_all]
                alpha_all = sample_alpha(Nc_all, cfgc, generator=g)  # [Nc_all]
                sampler.refill(ds.labels, generator=g)
                pos_all = sampler.sample_positives(classes_all, P_all, generator=g)  # [Nc_all, P_all]
                unc_all = sampler.sample_unconditional(Nc_all, U, generator=g) if U > 0 else None  # [Nc_all, U]
                # this rank's share: its class slots, and its rows of each class
                classes, alpha = classes_all[cls_slots], alpha_all[cls_slots]  # [Nc]
                labels = classes.repeat_interleave(N)  # [Nc*N]
                rows = layout.rows(N_all)
                slot_noise = [_slot_noise(G, cfg.seed, step, k, N_all, (c, h, w_)) for k in range(Nc_all)[cls_slots]]
                noise = torch.cat([z[rows] for z, _ in slot_noise])  # [Nc*N, c, h, w]
                style = torch.cat([s[rows] for _, s in slot_noise])
                real_idx = [pos_all[cls_slots][:, layout.rows(P_all)].reshape(-1)]  # [Nc*P]
                if U > 0:
                    real_idx.append(unc_all[cls_slots][:, layout.rows(U)].reshape(-1))  # [Nc*U_loc]
                real = ds.to_tensor(torch.cat(real_idx).numpy()).to(dev)  # [Nc*(P+U_loc), C, H, W]
                noise, labels, style = noise.to(dev), labels.to(dev), style.to(dev)

                with autocast:
                    x = G_ddp(noise, labels, alpha.repeat_interleave(N).to(dev), style)  # [Nc*N, c, h, w]
                    with torch.no_grad():
                        real_z = tok.encode(real)  # [Nc*(P+U), c, h, w], the generator's space
                        f_real = encode(encoder, real if decode_first else real_z, cfg.feature_sets, cfg.vanilla, real_z)
                    f_gen = encode(encoder, tok.decode(x) if decode_first else x, cfg.feature_sets, cfg.vanilla, x)
                if not torch.isfinite(x).all():
                    raise FloatingPointError(f"the generator produced non-finite samples at step {step}; the last good "
                                             f"checkpoint is {ckpt} (resume with --resume, e.g. with a lower --lr)")
                subsets = sample_locations(f_gen, cfg.max_locations, g)
                f_gen, f_real = take_locations(f_gen, subsets), take_locations(f_real, subsets)
                gen = group_by_class(f_gen, Nc)  # {j: [Nc, N, L, C]}
                pos = group_by_class({k: v[: Nc * P] for k, v in f_real.items()}, Nc)  # {j: [Nc, P, L, C]}
                neg, w = None, None
                if U > 0:
                    neg = group_by_class({k: v[Nc * P:] for k, v in f_real.items()}, Nc)  # {j: [Nc, U_loc, L, C]}
                    w = uncond_neg_weights(alpha, N_all, U)[:, :U_loc].to(dev)  # [Nc, U_loc] (w depends on the global N, U)
                loss, stats = drifting_loss(gen, pos, neg, neg_weights=w, temperatures=cfg.temperatures, kernel=cfg.kernel,
                                            normalize=cfg.normalize, attraction=cfg.attraction, repulsion=cfg.repulsion,
                                            normalize_drift=cfg.normalize_drift, comm=comm, compile=compile_field)
                if comm is not None:  # the mean over ranks (the 1-rank loss): logged, and checked on every rank alike
                    loss_all = comm.mean(loss)
                else:
                    loss_all = loss.detach()
                if not torch.isfinite(loss_all):
                    raise FloatingPointError(
                        f"non-finite loss at step {step}; the last good checkpoint is {ckpt} (resume with --resume)")
                lr = warmup_lr(cfg.lr, step, cfg.warmup, decay=cfg.lr_decay,
                               progress=_progress(step, cfg, elapsed()))
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(G.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                opt.step()
                ema.update(G)
                done = step + 1
                if comm is not None:  # stop together: a Ctrl-C seen by any rank stops all after this step
                    flag = torch.tensor(float(interrupted["flag"]))
                    interrupted["flag"] = bool(comm.sum(flag) > 0)
                # the time budget (--minutes) ends the run like its last step: logged and checkpointed
                last = done == cfg.steps or (cfg.minutes is not None and
                                             _out_of_time(elapsed(), cfg.minutes, main, comm))
                if done % cfg.log_every == 0 or last:
                    v2 = sum(v.item() for k, v in stats.items() if "/V2@" in k)
                    history["step"].append(done)
                    history["loss"].append(loss_all.item())
                    history["V2"].append(v2)
                    history["time"].append(elapsed())
                    if log is not None:
                        log.write(done, {"loss": loss_all.item(), "V2": v2, "lr": lr, "grad_norm": gnorm.item(),
                                         "time": history["time"][-1]}, stats)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_all.item():.2f}", V2=f"{v2:.3g}")
                if bar is not None:
                    bar.update(1)
                if out is not None and (done % cfg.sample_every == 0 or done == cfg.steps):
                    save_grid(ema.models[max(cfg.ema_decays)], K, out / f"samples_{done:06d}.png", seed=cfg.seed,
                              tokenizer=tok)
                if cfg.eval_every and main and (done % cfg.eval_every == 0 or last):
                    t_eval = time.perf_counter()
                    point = evaluate_generator(ema.models[max(cfg.ema_decays)], cfg.data, cfg.eval_samples,
                                               tokenizer=tok, seed=cfg.seed + 1)
                    if point is not None:
                        history.setdefault("curve", []).append({"step": done, "time": elapsed(), **point})
                    paused[0] += time.perf_counter() - t_eval  # the curve's evaluations are not training time
                if ckpt is not None and (done % cfg.ckpt_every == 0 or last or interrupted["flag"]):
                    save(done)
                if interrupted["flag"]:
                    raise KeyboardInterrupt(f"interrupted after step {done}; resume from {ckpt} with --resume")
                if last:
                    break
        finally:
            if log is not None:
                log.close()
            if bar is not None:
                bar.close()
    if out is not None:
        best = ema.models[max(cfg.ema_decays)]
        best.save_pretrained(out / "model")
        save_grid(best, K, out / "samples.png", per_class=10, seed=cfg.seed, tokenizer=tok)  # one row per class
        (out / "model" / "train_config.json").write_text(json.dumps(jsonable(asdict(cfg)), indent=2))
        write_model_tokenizer(out / "model", cfg.tokenizer, C)  # how to decode its latents (load_generator)
        (out / "history.json").write_text(json.dumps(history))
        if history.get("curve"):
            (out / "curve.json").write_text(json.dumps(history["curve"], indent=2))
    metrics = None
    curve = history.get("curve") or []
    if curve and history["step"] and curve[-1]["step"] == history["step"][-1]:  # the curve ends at the final one
        metrics = {k: v for k, v in curve[-1].items() if k not in ("step", "time")}
    elif cfg.eval_samples > 0 and main:
        metrics = evaluate_generator(ema.models[max(cfg.ema_decays)], cfg.data, cfg.eval_samples, tokenizer=tok,
                                     seed=cfg.seed + 1, progress=progress)
    if metrics is not None:
        metrics["train_seconds"] = history["time"][-1] if history["time"] else None
        metrics["steps"] = history["step"][-1] if history["step"] else None
        metrics["steps_per_second"] = history["step"][-1] / max(history["time"][-1], 1e-9) if history["time"] else None
        if out is not None:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return ImageRun(G, ema, ds, history, out, metrics)


def _config_defaults() -> dict:
    """The defaults of every ImageTrainConfig field, the MAE config's included, as JSON."""
    return jsonable(asdict(ImageTrainConfig()))


def _progress(step: int, cfg: ImageTrainConfig, elapsed: float) -> float:
    """The fraction of training done before ``step``: of the steps, or of the time budget if it ends sooner."""
    done = step / cfg.steps
    if cfg.minutes is not None:
        done = max(done, elapsed / (60.0 * cfg.minutes))
    return min(done, 1.0)


def _out_of_time(elapsed: float, minutes: float, main: bool, comm) -> bool:
    """Whether the time budget is spent; under torchrun every rank follows rank 0's clock."""
    over = torch.tensor(float(main and elapsed >= 60.0 * minutes))
    if comm is not None:
        over = comm.sum(over)
    return bool(over > 0)


def _slot_noise(G: OneStepGenerator, seed: int, step: int, slot: int, n: int, shape: tuple[int, int, int]):
    """Noise ``[n, c, h, w]`` and style draws of class slot ``slot`` at ``step``, from their own stream
    ``(seed, step, slot)``: a rank draws only its slots, and no draw depends on the world size."""
    g = step_generator(seed, step, stream=1000 + slot)
    return torch.randn(n, *shape, generator=g), G.draw_style(n, generator=g)


def evaluate_generator(model: OneStepGenerator, data: str, n: int, *, tokenizer: Tokenizer | None = None, seed: int = 1,
                       progress: bool = False) -> dict | None:
    """In-domain classifier metrics of ``n`` one-step samples (labels cycling through the classes):
    accuracy, classifier-feature FID to the test split and the train-vs-test floor. None when the
    dataset has no test split (e.g. a user's image folder)."""
    from .classify import cached_classifier, classifier_report

    try:
        train, test = load_dataset(data, "train"), load_dataset(data, "test")
    except (FileNotFoundError, ValueError):
        return None
    labels = torch.arange(n) % model.config.num_classes
    imgs = generate(model, labels, 1.0, seed=seed, tokenizer=tokenizer)
    clf = cached_classifier(train, progress=progress)
    return classifier_report(clf, imgs, labels.numpy(), test, train)


def cached_mae_dir(ds: ImageDataset, cfg: MAEConfig, *, progress: bool = True,
                   tokenizer: Tokenizer | None = None, tokenizer_spec: str | None = None) -> Path:
    """The directory of the ResNet-MAE pre-trained with ``cfg`` on exactly these images, from the
    cache or trained now.

    The cache key hashes the MAE config and the dataset's pixels and labels, so a changed
    dataset or config never reuses a stale encoder (see :mod:`drifting.cache`).
    """
    key = content_key(jsonable(asdict(cfg)), ds.images, ds.labels,
                      tokenizer_spec if tokenizer is not None else None)  # a latent-MAE: keyed by the tokenizer too
    return cached_dir("mae", key, lambda d: pretrain_mae(ds, cfg, d, progress=progress, tokenizer=tokenizer))


# --------------------------------------------------------------------------- sampling
def write_model_tokenizer(model_dir: str | Path, spec: str | None, pixel_channels: int) -> None:
    """Record beside an exported latent-space model how to decode its latents (``tokenizer.json``);
    nothing for a pixel-space one (``spec`` None)."""
    if spec is not None:
        (Path(model_dir) / "tokenizer.json").write_text(json.dumps({"spec": spec, "pixel_channels": pixel_channels}))


def model_tokenizer(model_dir: str | Path) -> Tokenizer | None:
    """The tokenizer recorded by :func:`write_model_tokenizer` beside an exported model, or None."""
    tj = Path(model_dir) / "tokenizer.json"
    if not tj.is_file():
        return None
    t = json.loads(tj.read_text())
    return build_tokenizer(t["spec"], pixel_channels=int(t["pixel_channels"]))


def load_generator(model_dir: str | Path) -> tuple[OneStepGenerator, Tokenizer | None]:
    """A generator exported by :func:`train_images` (DiT or U-Net) and, for a latent-space one, its tokenizer."""
    return load_generator_model(model_dir), model_tokenizer(model_dir)


@torch.no_grad()
def generate(model: OneStepGenerator, labels: torch.Tensor, alpha: float = 1.0, *, seed: int = 0,
             batch: int = 500, tokenizer: Tokenizer | None = None) -> np.ndarray:
    """One-step samples as uint8 ``[n, H, W, C]`` for the given labels ``[n]`` at CFG scale alpha;
    a latent-space generator's samples are decoded by ``tokenizer``."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, labels.shape[0], batch):
        x = model.sample(labels[i: i + batch], alpha=alpha, generator=g)  # [b, c, h, w]
        out.append(to_uint8(x, tokenizer))
    return np.concatenate(out)


def to_uint8(x: torch.Tensor, tokenizer: Tokenizer | None = None) -> np.ndarray:
    """Pixels in ~[-1, 1], ``[B, C, H, W]`` -> uint8 images ``[B, H, W, C]`` (clamped, rounded);
    with a ``tokenizer``, ``x`` are latents ``[B, c, h, w]`` decoded first."""
    if tokenizer is not None:
        with torch.no_grad():
            x = tokenizer.decode(x)  # [B, C, H, W] pixels in ~[-1, 1]
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(model: OneStepGenerator, num_classes: int, path: str | Path, *, per_class: int = 8, alpha: float = 1.0,
              seed: int = 0, tokenizer: Tokenizer | None = None) -> None:
    """A class-by-class grid (one row per class) of one-step samples as PNG."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    imgs = generate(model, labels, alpha, seed=seed, tokenizer=tokenizer)  # [K*per_class, H, W, C]
    write_grid(imgs, per_class, path)


def write_grid(imgs: np.ndarray, ncol: int, path: str | Path, pad: int = 2) -> None:
    from PIL import Image

    n, H, W, C = imgs.shape
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (H + pad) + pad, ncol * (W + pad) + pad, C), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = imgs[i]
    Image.fromarray(canvas[..., 0] if C == 1 else canvas).resize(
        (canvas.shape[1] * 2, canvas.shape[0] * 2), Image.NEAREST).save(path)

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
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import ImageDataset, load_dataset
from ..data.queue import make_sampler
from ..features import feature_sets, group_by_class, vanilla_group
from ..guidance import CFG_PRESETS, sample_alpha, uncond_neg_weights
from ..loss import DEFAULT_TEMPERATURES, drifting_loss
from ..models.dit import DriftingDiT, dit_config
from ..models.resnet_mae import ResNetMAE, mae_loss, random_resized_crop, resnet_mae_config
from ..training.checkpoint import jsonable, load_state, save_state
from ..training.rng import step_generator
from ..training.ema import EMA


@dataclass
class MAEConfig:
    """Pre-training of the ResNet-MAE feature encoder (A.3), CPU-sized defaults."""

    encoder: str = "cpu-small"
    steps: int = 1500
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    ema_decay: float = 0.995
    crop_scale: tuple[float, float] = (0.5, 1.0)
    seed: int = 0


@dataclass
class ImageTrainConfig:
    """Everything an image run depends on (saved beside its checkpoints and export)."""

    data: str = "fashion-mnist"
    generator: str = "cpu-small"  # DiT preset (models.dit.PRESETS)
    mae_dir: str | None = None  # a pretrained ResNet-MAE export; None: pre-train into OUT/mae
    mae: MAEConfig = field(default_factory=MAEConfig)
    steps: int = 2000
    classes_per_step: int = 10  # Nc
    n_gen: int = 16  # N generated per class (also the generated negatives)
    n_pos: int = 16  # P positives per class
    cfg: str = "ablation"  # CFG preset (guidance.CFG_PRESETS): alpha distribution and N_unc
    n_uncond: int | None = None  # override the preset's N_unc
    sampler: str = "queue"  # "queue" (A.8) or "balanced"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 2.0
    ema_decays: tuple[float, ...] = (0.99, 0.999)
    # EMA warm-up (Drift-RAE Table 8's formula; 0 = off as in the drifting paper). On for short CPU
    # runs: without it a 0.999 EMA still holds 82% of the zero-output init after 200 steps.
    ema_warmup: int = 1000
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    feature_sets: str = "abcd"  # A.5 ablation: ab | abc | abcd
    vanilla: bool = True  # also drift the raw generator output
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 250

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.classes_per_step >= 1, f"classes_per_step must be >= 1, got {self.classes_per_step}")
        need(self.n_gen >= 2, f"n_gen must be >= 2 (generated samples are also negatives), got {self.n_gen}")
        need(self.n_pos >= 1, f"n_pos must be >= 1, got {self.n_pos}")
        need(self.cfg in CFG_PRESETS, f"cfg must be one of {sorted(CFG_PRESETS)}, got {self.cfg!r}")
        need(self.sampler in ("queue", "balanced"), f"sampler must be 'queue' or 'balanced', got {self.sampler!r}")
        need(self.feature_sets in ("ab", "abc", "abcd"), f"feature_sets must be ab, abc or abcd, got {self.feature_sets!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")

    @property
    def cfg_config(self):
        c = CFG_PRESETS[self.cfg]
        if self.n_uncond is not None:
            from dataclasses import replace

            c = replace(c, n_uncond=self.n_uncond)
        return c





# --------------------------------------------------------------------------- MAE pre-training
def pretrain_mae(ds: ImageDataset, cfg: MAEConfig, out_dir: str | Path, *, progress: bool = True) -> ResNetMAE:
    """Train the ResNet-MAE (A.3: 2x2 zero-masking at 50%, loss on masked pixels, random resized
    crops, AdamW, EMA) and save the EMA model to ``out_dir`` (config.json + model.safetensors)."""
    H, W, C = ds.shape
    torch.manual_seed(cfg.seed)
    model = ResNetMAE(resnet_mae_config(cfg.encoder, in_channels=C))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(model, (cfg.ema_decay,))
    bar = _bar(cfg.steps, "train-mae", progress)
    for step in range(cfg.steps):
        g = step_generator(cfg.seed, step, stream=1)
        idx = torch.randint(len(ds), (cfg.batch,), generator=g)
        x = random_resized_crop(ds.to_tensor(idx.numpy()), g, scale=cfg.crop_scale)  # [B, C, H, W]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        loss, _ = mae_loss(model, x, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    best = ema.models[cfg.ema_decay]
    best.save_pretrained(out_dir)
    return best


def _bar(total: int, desc: str, progress: bool, initial: int = 0):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


# --------------------------------------------------------------------------- features
def encode(encoder, x: torch.Tensor, sets: str, vanilla: bool) -> dict[str, torch.Tensor]:
    """Per-sample feature groups ``{name: [B, L, C]}`` (A.5) plus the raw output (vanilla)."""
    feats = feature_sets(encoder.forward_features(x), x, sets=sets)
    if vanilla:
        feats["vanilla"] = vanilla_group(x)
    return feats


# --------------------------------------------------------------------------- training
@dataclass
class ImageRun:
    generator: DriftingDiT
    ema: EMA
    dataset: ImageDataset
    history: dict
    out: Path | None


def train_images(cfg: ImageTrainConfig, out_dir: str | Path | None, *, progress: bool = True,
                 resume: bool = False) -> ImageRun:
    """Train a class-conditional drifting generator; see the module docstring for one step."""
    cfg.validate()
    ds = load_dataset(cfg.data, "train")
    H, W, C = ds.shape
    K = ds.num_classes
    if cfg.classes_per_step > K:
        raise ValueError(f"classes_per_step={cfg.classes_per_step} exceeds the {K} classes of {cfg.data}")
    out = Path(out_dir) if out_dir is not None else None
    cfgc = cfg.cfg_config
    U = cfgc.n_uncond

    # feature encoder: a given pretrained MAE, else one pre-trained now and cached in OUT/mae
    if cfg.mae_dir:
        if not (Path(cfg.mae_dir) / "model.safetensors").is_file():
            raise FileNotFoundError(f"mae_dir {cfg.mae_dir} holds no ResNet-MAE export (config.json + model.safetensors)")
        mae = ResNetMAE.from_pretrained(cfg.mae_dir)
    elif out is not None and (out / "mae" / "model.safetensors").is_file():
        mae = ResNetMAE.from_pretrained(out / "mae")
    elif out is not None:
        mae = pretrain_mae(ds, cfg.mae, out / "mae", progress=progress)
    else:
        mae = pretrain_mae_in_memory(ds, cfg.mae, progress)
    encoder = mae.encoder.eval().requires_grad_(False)

    torch.manual_seed(cfg.seed)
    G = DriftingDiT(dit_config(cfg.generator, input_size=H, in_channels=C, num_classes=K))
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
        if state["config"] != jsonable(asdict(cfg)):
            raise ValueError(f"{ckpt} was written with a different configuration; use a new --out")
        G.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        history = json.loads(state["history"])
        start = int(state["step"])
    else:
        sampler.warm_up(ds.labels, generator=step_generator(cfg.seed, -1, stream=2))

    def save(step: int) -> None:
        if ckpt is not None:
            save_state(ckpt, {
                "model": G.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                "sampler": sampler.state_dict(), "step": step, "config": jsonable(asdict(cfg)),
                "history": json.dumps(history),
            })

    bar = _bar(cfg.steps, "train", progress, initial=start)
    t0 = time.perf_counter() - (history["time"][-1] if history["time"] else 0.0)
    Nc, N, P = cfg.classes_per_step, cfg.n_gen, cfg.n_pos
    # Ctrl-C: finish the current step, write a checkpoint, then stop (never mid-update)
    interrupted = {"flag": False}
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.update(flag=True))
    try:
        for step in range(start, cfg.steps):
            g = step_generator(cfg.seed, step)
            classes = torch.randperm(K, generator=g)[:Nc]  # [Nc]
            alpha = sample_alpha(Nc, cfgc, generator=g)  # [Nc]
            labels = classes.repeat_interleave(N)  # [Nc*N]
            noise = torch.randn(Nc * N, C, H, W, generator=g)
            style = G.draw_style(Nc * N, generator=g)
            sampler.refill(ds.labels, generator=g)
            pos_idx = sampler.sample_positives(classes, P, generator=g)  # [Nc, P]
            real_idx = [pos_idx.reshape(-1)]
            if U > 0:
                real_idx.append(sampler.sample_unconditional(Nc, U, generator=g).reshape(-1))  # [Nc*U]
            real = ds.to_tensor(torch.cat(real_idx).numpy())  # [Nc*(P+U), C, H, W]

            x = G(noise, labels, alpha.repeat_interleave(N), style)  # [Nc*N, C, H, W]
            with torch.no_grad():
                f_real = encode(encoder, real, cfg.feature_sets, cfg.vanilla)
            f_gen = encode(encoder, x, cfg.feature_sets, cfg.vanilla)
            gen = group_by_class(f_gen, Nc)  # {j: [Nc, N, L, C]}
            pos = group_by_class({k: v[: Nc * P] for k, v in f_real.items()}, Nc)  # {j: [Nc, P, L, C]}
            neg, w = None, None
            if U > 0:
                neg = group_by_class({k: v[Nc * P:] for k, v in f_real.items()}, Nc)  # {j: [Nc, U, L, C]}
                w = uncond_neg_weights(alpha, N, U)  # [Nc, U]
            loss, stats = drifting_loss(gen, pos, neg, neg_weights=w, temperatures=cfg.temperatures)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at step {step}; the last good checkpoint is {ckpt} (resume with --resume)")
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(G.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(G)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                v2 = sum(v.item() for k, v in stats.items() if "/V2@" in k)
                history["step"].append(done)
                history["loss"].append(loss.item())
                history["V2"].append(v2)
                history["time"].append(time.perf_counter() - t0)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.2f}", V2=f"{v2:.3g}")
            if bar is not None:
                bar.update(1)
            if out is not None and (done % cfg.sample_every == 0 or done == cfg.steps):
                save_grid(ema.models[max(cfg.ema_decays)], K, out / f"samples_{done:06d}.png", seed=cfg.seed)
            if ckpt is not None and (done % cfg.ckpt_every == 0 or done == cfg.steps or interrupted["flag"]):
                save(done)
            if interrupted["flag"]:
                raise KeyboardInterrupt(f"interrupted after step {done}; resume from {ckpt} with --resume")
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        if bar is not None:
            bar.close()
    if out is not None:
        best = ema.models[max(cfg.ema_decays)]
        best.save_pretrained(out / "model")
        (out / "model" / "train_config.json").write_text(json.dumps(jsonable(asdict(cfg)), indent=2))
        (out / "history.json").write_text(json.dumps(history))
    return ImageRun(G, ema, ds, history, out)


def pretrain_mae_in_memory(ds: ImageDataset, cfg: MAEConfig, progress: bool) -> ResNetMAE:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return pretrain_mae(ds, cfg, d, progress=progress)


# --------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(model: DriftingDiT, labels: torch.Tensor, alpha: float = 1.0, *, seed: int = 0,
             batch: int = 500) -> np.ndarray:
    """One-step samples as uint8 ``[n, H, W, C]`` for the given labels ``[n]`` at CFG scale alpha."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, labels.shape[0], batch):
        x = model.sample(labels[i: i + batch], alpha=alpha, generator=g)  # [b, C, H, W] in ~[-1, 1]
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def save_grid(model: DriftingDiT, num_classes: int, path: str | Path, *, per_class: int = 8, alpha: float = 1.0,
              seed: int = 0) -> None:
    """A class-by-class grid (one row per class) of one-step samples as PNG."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    imgs = generate(model, labels, alpha, seed=seed)  # [K*per_class, H, W, C]
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

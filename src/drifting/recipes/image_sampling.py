"""One-step sampling of an image generator, sample grids, and an exported generator's files
(its tokenizer record, :func:`load_generator`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..models.generators import load_generator_model
from ..models.onestep import OneStepGenerator
from ..models.tokenizer import Tokenizer
from ..models.tokenizers import build_tokenizer


def write_model_tokenizer(model_dir: str | Path, spec: str | None, pixel_channels: int) -> None:
    """Record beside an exported latent-space model how to decode its latents (``tokenizer.json``);
    nothing for a pixel-space one (``spec`` None)."""
    if spec is not None:
        (Path(model_dir) / "tokenizer.json").write_text(json.dumps({"spec": spec,
                                                                    "pixel_channels": pixel_channels}))


def model_tokenizer(model_dir: str | Path) -> Tokenizer | None:
    """The tokenizer recorded by :func:`write_model_tokenizer` beside an exported model, or None."""
    tj = Path(model_dir) / "tokenizer.json"
    if not tj.is_file():
        return None
    t = json.loads(tj.read_text())
    return build_tokenizer(t["spec"], pixel_channels=int(t["pixel_channels"]))


def load_generator(model_dir: str | Path) -> tuple[OneStepGenerator, Tokenizer | None]:
    """A generator exported by :func:`~drifting.recipes.image_training.train_images` (DiT or U-Net) and,
    for a latent-space one, its tokenizer."""
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


def save_grid(model: OneStepGenerator, num_classes: int, path: str | Path, *, per_class: int = 8,
              alpha: float = 1.0, seed: int = 0, tokenizer: Tokenizer | None = None) -> None:
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
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H,
               pad + c * (W + pad): pad + c * (W + pad) + W] = imgs[i]
    Image.fromarray(canvas[..., 0] if C == 1 else canvas).resize(
        (canvas.shape[1] * 2, canvas.shape[0] * 2), Image.NEAREST).save(path)

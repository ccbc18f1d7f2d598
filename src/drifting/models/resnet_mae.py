"""ResNet-style MAE: the feature encoder phi of the drifting loss (paper A.3, Table 8).

Paper: Deng et al. 2026, "Generative Modeling via Drifting", A.3 "Implementation of
ResNet-style MAE", A.5 (which feature maps are tapped) and Table 8 (presets).

* **Encoder** (A.3): a 3x3 stem conv (stride 1) + GN + ReLU, then 4 stages of *basic* residual
  blocks (two 3x3 convs each, GroupNorm in place of BatchNorm), ``[3, 4, 6, 3]`` blocks as in
  ResNet-34, widths ``C, 2C, 4C, 8C``; stride 2 in the first block of stages 2-4
  (32 -> 16 -> 8 -> 4; 28 -> 14 -> 7 -> 4). For pixel-space (``input_patch = 8``) the
  ``256x256x3`` image is first patchified into ``32x32x192``.
  (Table 8's text extraction shows "bottleneck" in its block-type row, but A.3 states basic
  blocks and the authors' release uses basic blocks; we follow A.3.)
* **Decoder** (A.3): a 3x3 conv block on ``f4``, then 4 up-blocks (bilinear upsample to the
  skip's size -> concat skip -> GN -> two (3x3 conv, GN, ReLU)), a final 1x1 conv, and an
  unpatchify for pixel-space. The skips are ``f3, f2, f1`` and, for the 4th block, the stem
  output (A.3 names 4 up-blocks but only 3 coarser maps exist above ``f4``; the 4th block
  works at the input grid's resolution, so its "upsample" is the identity).
* **Masking** (A.3): non-overlapping ``2x2`` patches of the ResNet's input grid are zeroed,
  each independently with probability 0.5; the loss is the l2 error on the masked pixels.
* **Classification fine-tuning** (A.3): a linear head on the pooled last map and the loss
  ``lambda * L_cls + (1 - lambda) * L_recon`` with ``lambda`` warmed up 0 -> 0.1 over 1k steps.

Only ``ResNetMAE.encoder`` is used by the drifting loss: ``encoder.forward_features(x)`` gives
the tapped maps that :func:`drifting.features.feature_sets` turns into feature groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import preset
from .pretrained import PretrainedMixin

# -----------------------------------------------------------------------------
# Configuration


@dataclass
class ResNetMAEConfig:
    in_channels: int = 4  # C0 of the full-resolution input (4 for SD-VAE latents, 3 for RGB)
    base_width: int = 256  # C; the 4 stages have C, 2C, 4C, 8C channels
    blocks_per_stage: tuple[int, ...] = (3, 4, 6, 3)  # ResNet-34 layout (A.3)
    gn_groups: int = 32  # GroupNorm groups; each layer uses gcd(gn_groups, channels) so it divides
    input_patch: int = 1  # pixel-MAE patchify p: [C0, H, W] -> [C0*p*p, H/p, W/p]; 1 = none
    mask_patch: int = 2  # side of the square masking patches, on the ResNet's input grid
    mask_ratio: float = 0.5  # probability that each masking patch is zeroed
    num_classes: int = 0  # > 0 adds a linear classification head on the pooled last map
    input_size: int = 32  # nominal full-resolution side (defaults / docs only; the net is fully conv.)

    def __post_init__(self) -> None:
        self.blocks_per_stage = tuple(self.blocks_per_stage)  # JSON gives a list back

    @property
    def stage_widths(self) -> tuple[int, int, int, int]:
        C = self.base_width
        return (C, 2 * C, 4 * C, 8 * C)

    @property
    def resnet_in_channels(self) -> int:
        """Channels of the ResNet's input grid (after the pixel-MAE patchify)."""
        return self.in_channels * self.input_patch**2

    def validate(self) -> "ResNetMAEConfig":
        """Raise ``ValueError`` naming the offending field; return self when all is well."""

        def bad(field: str, why: str) -> None:
            raise ValueError(f"ResNetMAEConfig.{field}: {why}")

        for name in ("in_channels", "base_width", "gn_groups", "input_patch", "mask_patch", "input_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, f"must be an integer >= 1, got {v!r}")
        if (not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool)
                or self.num_classes < 0):
            bad("num_classes", f"must be an integer >= 0, got {self.num_classes!r}")
        b = self.blocks_per_stage
        if len(b) != 4 or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in b):
            bad("blocks_per_stage", f"must be 4 integers >= 1 (one per stage), got {b!r}")
        if not (0.0 <= float(self.mask_ratio) <= 1.0):
            bad("mask_ratio", f"must be in [0, 1], got {self.mask_ratio!r}")
        if self.input_size % self.input_patch != 0:
            bad("input_size", f"{self.input_size} is not divisible by input_patch={self.input_patch}")
        return self

    def grid_size(self, input_hw: tuple[int, int] | int | None = None) -> tuple[int, int]:
        """``(H, W)`` of the ResNet's input grid for a full-resolution input of ``input_hw``."""
        H, W = _hw(input_hw if input_hw is not None else self.input_size)
        p = self.input_patch
        if H % p or W % p:
            raise ValueError(f"input_hw: {(H, W)} is not divisible by input_patch={p}")
        return H // p, W // p

    def stage_shapes(self, input_hw: tuple[int, int] | int | None = None) -> list[tuple[int, int, int]]:
        """``(C_i, H_i, W_i)`` of the 4 stage outputs ``f1..f4``."""
        H, W = self.grid_size(input_hw)
        out = []
        for i, C in enumerate(self.stage_widths):
            if i > 0:  # 3x3 conv, stride 2, padding 1: ceil(H / 2)
                H, W = (H + 1) // 2, (W + 1) // 2
            out.append((C, H, W))
        return out

    def tap_shapes(self, input_hw: tuple[int, int] | int | None = None) -> list[tuple[int, int, int]]:
        """``(C_i, H_i, W_i)`` of every map :meth:`ResNetEncoder.forward_features` returns, in order."""
        shapes = self.stage_shapes(input_hw)
        return [shapes[s] for s, n in enumerate(self.blocks_per_stage) for _ in tap_blocks(n)]


def _hw(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    H, W = v
    return int(H), int(W)


def tap_blocks(n_blocks: int) -> list[int]:
    """1-based indices of the blocks of one stage whose outputs are tapped (A.5).

    A.5: "the output of every 2 residual blocks, together with the final output". The rule:
    every even block ``2, 4, ...`` plus the last block if it is odd. So 3 blocks -> ``[2, 3]``,
    4 -> ``[2, 4]``, 6 -> ``[2, 4, 6]``, 2 -> ``[2]``, 1 -> ``[1]``. For ``[3, 4, 6, 3]`` this
    gives 2 + 2 + 3 + 2 = 9 tapped maps.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks: must be >= 1, got {n_blocks}")
    taps = list(range(2, n_blocks + 1, 2))
    if n_blocks % 2 == 1:
        taps.append(n_blocks)
    return taps


def _imagenet(width: int, pixel: bool) -> ResNetMAEConfig:
    """Table 8: ResNet on a 32x32 grid, [3, 4, 6, 3] basic blocks, 50% masking of 2x2 patches."""
    if pixel:  # 256x256x3 -> patchify 8 -> 32x32x192
        return ResNetMAEConfig(in_channels=3, base_width=width, input_patch=8, input_size=256)
    return ResNetMAEConfig(in_channels=4, base_width=width, input_patch=1, input_size=32)


PRESETS: dict[str, ResNetMAEConfig] = {
    # Table 8: ablation default (latent-MAE, width 256), system-level latent / pixel (width 640).
    "latent-256": _imagenet(256, pixel=False),
    "latent-640": _imagenet(640, pixel=False),
    "pixel-640": _imagenet(640, pixel=True),
    # CPU sizes for 28x28x1 images (maps 28 -> 14 -> 7 -> 4; set num_classes=10 for the head).
    # Measured on 2 CPU cores, batch 512 of 28x28, fp32 (shared machine, best of 3): encoder
    # forward+backward ~0.3-0.45 s (tiny, 77k params) and ~1.1-1.4 s (small, 0.70M); a full MAE
    # step ~0.8 s / ~3 s. Width 16 with [3, 4, 6, 3] takes ~2.2 s for the encoder, width 32 with
    # [2, 2, 2, 2] ~5 s, so the CPU presets stay shallower than ResNet-34.
    "cpu-tiny": ResNetMAEConfig(in_channels=1, base_width=8, blocks_per_stage=(1, 1, 1, 1), gn_groups=4,
                                input_size=28),
    "cpu-small": ResNetMAEConfig(in_channels=1, base_width=16, blocks_per_stage=(2, 2, 2, 2), gn_groups=8,
                                 input_size=28),
}


def resnet_mae_config(name: str, **overrides) -> ResNetMAEConfig:
    """A validated copy of ``PRESETS[name]`` with ``overrides`` applied."""
    return preset(PRESETS, name, "ResNet-MAE", **overrides)


# -----------------------------------------------------------------------------
# Building blocks


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(groups, channels)`` groups, so the group count always divides."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C*p*p, H/p, W/p]`` (the pixel-MAE input, A.3)."""
    return x if p == 1 else F.pixel_unshuffle(x, p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, C*p*p, h, w] -> [B, C, h*p, w*p]``."""
    return x if p == 1 else F.pixel_shuffle(x, p)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with GroupNorm: two 3x3 convs + (projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = group_norm(cout, groups)
        self.shortcut = None
        if stride != 1 or cin != cout:  # projection shortcut when the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          group_norm(cout, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))  # [B, cout, H', W']
        h = self.norm2(self.conv2(h))  # [B, cout, H', W']
        s = x if self.shortcut is None else self.shortcut(x)  # [B, cout, H', W']
        return F.relu(h + s)


class ResNetEncoder(nn.Module):
    """The MAE encoder (A.3): ``x [B, C0, H, W] -> {f1, f2, f3, f4}``, plus the A.5 taps.

    ``x`` is the full-resolution input; the pixel-MAE patchify (``input_patch``) happens inside,
    so this module alone is the feature extractor phi for generated and real images.
    """

    def __init__(self, config: ResNetMAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        g, widths = config.gn_groups, config.stage_widths
        self.stem = nn.Sequential(
            nn.Conv2d(config.resnet_in_channels, widths[0], 3, 1, 1, bias=False), group_norm(widths[0], g),
            nn.ReLU()
        )
        stages, cin = [], widths[0]
        for s, (cout, n) in enumerate(zip(widths, config.blocks_per_stage)):
            blocks = [BasicBlock(cin if b == 0 else cout, cout, 2 if (s > 0 and b == 0) else 1, g)
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.taps = [tap_blocks(n) for n in config.blocks_per_stage]  # 1-based block indices per stage
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_taps(self) -> int:
        return sum(len(t) for t in self.taps)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x: expected [B, {c.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % c.input_patch or x.shape[-1] % c.input_patch:
            raise ValueError(f"x: H, W = {tuple(x.shape[-2:])} must be divisible by "
                             f"input_patch={c.input_patch}")

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """One pass: ``(stem [B, C, h, w], stage outputs f1..f4, tapped maps)``."""
        self._check(x)
        h = self.stem(patchify(x, self.config.input_patch))  # [B, C, h, w]
        stem, ends, taps = h, [], []
        for stage, tap in zip(self.stages, self.taps):
            for b, block in enumerate(stage, start=1):
                h = block(h)  # [B, C_i, H_i, W_i]
                if b in tap:
                    taps.append(h)
            ends.append(h)
        return stem, ends, taps

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The A.5 tap maps ``[B, C_i, H_i, W_i]``: per stage, the output of blocks
        :func:`tap_blocks` (every 2nd block and the last), in network order."""
        return self.run(x)[2]

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4 stage outputs ``f1..f4`` (A.3), ``[B, C_i, H_i, W_i]``."""
        return self.run(x)[1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)


class UpBlock(nn.Module):
    """A.3 decoder block: bilinear upsample to the skip -> concat -> GN -> 2 x (3x3 conv, GN, ReLU)."""

    def __init__(self, cin: int, cskip: int, cout: int, groups: int):
        super().__init__()
        self.norm_in = group_norm(cin + cskip, groups)
        self.body = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, 1, 1, bias=False), group_norm(cout, groups), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), group_norm(cout, groups), nn.ReLU(),
        )

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if h.shape[-2:] != skip.shape[-2:]:  # "2x2" upsampling; sized to the skip so 7 -> 4 -> 7 works
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        h = torch.cat([h, skip], dim=1)  # [B, cin + cskip, H, W]
        return self.body(self.norm_in(h))  # [B, cout, H, W]


class ResNetDecoder(nn.Module):
    """U-Net-style decoder (A.3): ``(stem, f1..f4) -> x_hat [B, C0, H, W]``."""

    def __init__(self, config: ResNetMAEConfig):
        super().__init__()
        g = config.gn_groups
        C1, C2, C3, C4 = config.stage_widths
        self.config = config
        self.mid = nn.Sequential(nn.Conv2d(C4, C4, 3, 1, 1, bias=False), group_norm(C4, g), nn.ReLU())
        self.ups = nn.ModuleList([
            UpBlock(C4, C3, C3, g),  # skip f3
            UpBlock(C3, C2, C2, g),  # skip f2
            UpBlock(C2, C1, C1, g),  # skip f1
            UpBlock(C1, C1, C1, g),  # skip: stem output (same grid as f1)
        ])
        self.out = nn.Conv2d(C1, config.resnet_in_channels, 1)

    def forward(self, stem: torch.Tensor, ends: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3, f4 = ends
        h = self.mid(f4)  # [B, 8C, H4, W4]
        for up, skip in zip(self.ups, (f3, f2, f1, stem)):
            h = up(h, skip)  # [B, C_skip, H_skip, W_skip]
        return unpatchify(self.out(h), self.config.input_patch)  # [B, C0, H, W]


# -----------------------------------------------------------------------------
# Masking, augmentation, losses


def random_patch_mask(
    batch: int, height: int, width: int, patch: int, ratio: float,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[B, 1, H, W]`` float mask (1 = masked) of non-overlapping ``patch x patch`` squares (A.3).

    Each square is masked independently with probability ``ratio``. Squares are aligned to
    multiples of ``patch``; when ``H`` or ``W`` is not a multiple, the last row/column of squares
    is cut at the border. Random numbers come from ``generator`` (on its own device).
    """
    if patch < 1:
        raise ValueError(f"patch: must be >= 1, got {patch}")
    if not (0.0 <= ratio <= 1.0):
        raise ValueError(f"ratio: must be in [0, 1], got {ratio}")
    gh, gw = -(-height // patch), -(-width // patch)
    dev = generator.device if generator is not None else device
    m = (torch.rand(batch, 1, gh, gw, generator=generator, device=dev) < ratio).float()  # [B, 1, gh, gw]
    m = m.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :height, :width]  # [B, 1, H, W]
    return m.to(device) if device is not None else m


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked pixels only (A.3): ``sum(m (pred - t)^2) / (sum(m) C)``.

    ``pred``, ``target`` ``[B, C, H, W]``; ``mask`` ``[B, 1, H, W]`` with 1 on masked pixels.
    Returns 0 (with a graph) when nothing is masked.
    """
    if pred.shape != target.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} differs from the "
                         f"prediction {tuple(pred.shape)}")
    err = (pred.float() - target.float()).square() * mask  # [B, C, H, W]
    return err.sum() / (mask.sum() * pred.shape[1]).clamp_min(1.0)


def cls_lambda(step: int, warmup: int = 1000, max_lambda: float = 0.1) -> float:
    """Classification weight lambda at ``step`` (A.3): linear 0 -> ``max_lambda`` over ``warmup`` steps."""
    if step < 0:
        raise ValueError(f"step: must be >= 0, got {step}")
    if warmup < 0:
        raise ValueError(f"warmup: must be >= 0, got {warmup}")
    if not (0.0 <= max_lambda <= 1.0):
        raise ValueError(f"max_lambda: must be in [0, 1], got {max_lambda}")
    if warmup == 0:
        return float(max_lambda)
    return float(max_lambda) * min(step / warmup, 1.0)


def random_resized_crop(
    x: torch.Tensor, generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crop of each image of ``x [B, C, H, W]``, resized back to ``H x W`` (A.3, as in MAE).

    Per sample: area fraction ``s ~ U(scale)``, aspect ``r ~ logU(ratio)``, crop width/height
    ``sqrt(s r)``, ``sqrt(s / r)`` of the image (clamped to 1 instead of torchvision's
    rejection loop), a uniform position inside the image, then bilinear resampling through
    ``affine_grid`` / ``grid_sample``. Deterministic given a seeded ``generator``.
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected [B, C, H, W], got {tuple(x.shape)}")
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale: must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio: must satisfy 0 < lo <= hi, got {ratio}")
    B = x.shape[0]
    dev = generator.device if generator is not None else x.device
    u = torch.rand(B, 4, generator=generator, device=dev, dtype=torch.float64).to(x.device)  # [B, 4]
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]  # area fraction
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = log_r.exp()
    w = (s * r).sqrt().clamp(max=1.0)  # crop width as a fraction of W
    h = (s / r).sqrt().clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates, crop stays inside
    cy = (u[:, 3] * 2 - 1) * (1 - h)
    theta = torch.zeros(B, 2, 3, dtype=torch.float64, device=x.device)  # [B, 2, 3]
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# -----------------------------------------------------------------------------
# The model


class ResNetMAE(PretrainedMixin, nn.Module):
    """ResNet-style MAE (A.3): ``.encoder`` (the feature extractor), ``.decoder``, ``.head`` (or None)."""

    config_class = ResNetMAEConfig

    def __init__(self, config: ResNetMAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = ResNetEncoder(config)
        self.decoder = ResNetDecoder(config)
        self.head = nn.Linear(config.stage_widths[-1], config.num_classes) if config.num_classes > 0 else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def draw_mask(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Full-resolution mask ``[B, 1, H, W]`` (1 = masked) for ``x [B, C0, H, W]``.

        Drawn on the ResNet's input grid (``mask_patch`` squares of grid cells) and expanded by
        ``input_patch``, so for pixel-MAE a masked square covers ``mask_patch * 8`` pixels.
        """
        c = self.config
        gh, gw = c.grid_size(tuple(x.shape[-2:]))
        m = random_patch_mask(x.shape[0], gh, gw, c.mask_patch, c.mask_ratio, generator, x.device)
        p = c.input_patch
        if p > 1:
            m = m.repeat_interleave(p, 2).repeat_interleave(p, 3)  # [B, 1, H, W]
        return m.to(x.dtype)

    def forward(self, x: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, C0, H, W]`` (zeroed where ``mask`` is 1) -> ``(x_hat [B, C0, H, W], logits [B, K] |
        None)``."""
        if mask is not None:
            x = x * (1 - mask)  # zero out masked patches (A.3: no token dropping)
        stem, ends, _ = self.encoder.run(x)
        x_hat = self.decoder(stem, ends)  # [B, C0, H, W]
        logits = None
        if self.head is not None:
            logits = self.head(ends[-1].mean(dim=(2, 3)))  # [B, K] from the pooled f4
        return x_hat, logits


def mae_loss(
    model: ResNetMAE, x: torch.Tensor, generator: torch.Generator | None = None, *,
    labels: torch.Tensor | None = None, cls_weight: float = 0.0, target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MAE training loss (A.3): masked-pixel MSE, optionally mixed with classification.

    Draws a mask with ``generator``, reconstructs ``x`` from its unmasked part and returns
    ``(loss, stats)`` with ``loss = cls_weight * CE + (1 - cls_weight) * recon`` ("Classification
    fine-tuning"; use :func:`cls_lambda` for the schedule). The head sees the same masked pass
    (one forward). ``target`` (default ``x``) is what is reconstructed; only its masked pixels
    matter. ``stats``: detached ``recon``, ``mask_frac`` and, with labels, ``cls`` and ``acc``.
    """
    if not (0.0 <= cls_weight <= 1.0):
        raise ValueError(f"cls_weight: must be in [0, 1], got {cls_weight}")
    if cls_weight > 0 and (labels is None or model.head is None):
        raise ValueError("labels: cls_weight > 0 needs labels and a model with num_classes > 0")
    mask = model.draw_mask(x, generator)  # [B, 1, H, W]
    x_hat, logits = model(x, mask)
    recon = masked_mse(x_hat, x if target is None else target, mask)
    stats = {"recon": recon.detach(), "mask_frac": mask.mean().detach()}
    loss = recon
    if labels is not None and logits is not None:
        ce = F.cross_entropy(logits.float(), labels)
        stats["cls"] = ce.detach()
        stats["acc"] = (logits.argmax(-1) == labels).float().mean().detach()
        loss = cls_weight * ce + (1 - cls_weight) * recon
    stats["loss"] = loss.detach()
    return loss, stats

"""A convolutional one-step generator ``f(noise, class, alpha) -> x`` for small images on CPUs.

The paper's generator is the DiT of A.2 (:mod:`drifting.models.dit`); the method does not depend
on it: the drifting loss only needs ``x = f(epsilon, c, alpha)``. At 28x28 on two CPU cores a small
U-Net learns far faster per minute than a DiT of the same cost (docs/results.md, issue 15: class
accuracy 0.77 against 0.68 and classifier-feature FID 53 against 84 at equal wall time), because its
3x3 convolutions see every pixel's neighbours from the first step and it has no patch grid to leave
seams. Same interface as :class:`~drifting.models.dit.DriftingDiT`: the noise has the sample's shape
``[B, C, H, W]``, the conditioning vector is built the same way (class embedding + learned alpha
embedding + the sum of ``style_tokens`` codebook vectors, A.2 / A.7), and with ``time_cond`` the same
network is a flow-matching velocity ``v(y_t, t, c)`` (the flow peer at the same backbone).

Read top to bottom:

    ConvGenConfig, PRESETS, conv_config    the configuration and the CPU presets
    ResBlock                               GN -> SiLU -> 3x3 conv -> FiLM(c) -> SiLU -> 3x3 conv (zero) + skip
    ConvGenerator                          stem -> down path (avg-pool 2) -> middle -> up path (nearest,
                                           concat skip) -> GN, SiLU, 3x3 conv (zero-initialised: f = 0
                                           at init)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import preset
from .dit import ALPHA_SCALE, TIME_SCALE, TimestepEmbedder
from .onestep import OneStepGenerator
from .pretrained import PretrainedMixin


@dataclass
class ConvGenConfig:
    input_size: int = 28  # H = W of the generated image / latent
    in_channels: int = 1  # C; the output has the noise's shape [C, H, W]
    num_classes: int = 10
    # channels per resolution level: level 0 at the input size, each next one average-pooled by 2
    # (ceil: 28 -> 14 -> 7 -> 4); the up path mirrors it with skip connections
    widths: tuple[int, ...] = (32, 64, 64)
    blocks: int = 1  # residual blocks per level on the way down (one on the way up)
    hidden: int = 128  # D, the width of the conditioning vector c
    gn_groups: int = 8  # GroupNorm groups (at most the channel count)
    style_tokens: int = 32  # A.2: this many codebook indices, their vectors summed into c (0 = off)
    codebook_size: int = 64
    alpha_mlp: bool = True  # a learned embedder of alpha (the DiT's alpha_mlp); False: alpha is ignored
    time_cond: bool = False  # flow matching: forward() takes t in [0, 1] and c gets a timestep embedding
    # MeanFlow (needs time_cond): forward() also takes the interval h = t - r in [0, 1], embedded like t
    interval_cond: bool = False
    time_scale: float = TIME_SCALE  # t and h are embedded as sincos(time_scale * t) (as the DiT's)
    # run the convolutions on channels-last (NHWC) activations: the same numbers up to float rounding, and on
    # CPUs (oneDNN) about 1.3x faster per training step of conv-cpu than NCHW (docs/performance.md)
    channels_last: bool = True

    def validate(self) -> "ConvGenConfig":
        """Raise ``ValueError`` naming the offending field; return self when all is well."""
        def bad(name: str, why: str) -> None:
            raise ValueError(f"ConvGenConfig.{name}: {why}, got {getattr(self, name)!r}")

        for name in ("input_size", "in_channels", "num_classes", "blocks", "hidden", "gn_groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be an integer >= 1")
        for name in ("style_tokens", "codebook_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be an integer >= 0")
        if self.style_tokens > 0 and self.codebook_size < 1:
            bad("codebook_size", "must be >= 1 when style_tokens > 0")
        w = tuple(self.widths)
        if not w or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in w):
            bad("widths", "must be a non-empty sequence of integers >= 1")
        if any(c % min(self.gn_groups, c) for c in w):
            bad("widths", f"each width must be divisible by min(gn_groups={self.gn_groups}, width)")
        if self.input_size < 2 ** (len(w) - 1):
            bad("input_size", f"must be >= {2 ** (len(w) - 1)} for {len(w)} resolution levels")
        for name in ("alpha_mlp", "time_cond", "interval_cond", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be True or False")
        if self.interval_cond and not self.time_cond:
            bad("interval_cond", "needs time_cond=True (MeanFlow's u(z, r, t) sees t and h = t - r)")
        if not (isinstance(self.time_scale, (int, float)) and self.time_scale > 0):
            bad("time_scale", f"must be a number > 0, got {self.time_scale!r}")
        self.widths = w
        return self


PRESETS: dict[str, ConvGenConfig] = {
    # the main job's generator (issue 15): 28 -> 14 -> 7 at widths 32/64/64, 0.52M parameters, about the
    # DiT cpu-p4's cost per step on two cores
    "conv-cpu": ConvGenConfig(),
    # the main job's generator since session 5: level 0 (28x28) at 16 channels and level 1 at 32, 0.33M
    # parameters; its forward and backward cost 0.4x conv-cpu's, which bought 1.5x the steps and
    # classifier FID 56 -> 41 at equal wall time (docs/results.md, "Levers on the U-Net (session 5)")
    "conv-small": ConvGenConfig(widths=(16, 32, 64)),
    # tests: seconds
    "conv-tiny": ConvGenConfig(widths=(8, 16), hidden=32, gn_groups=4, style_tokens=4, codebook_size=8),
}


def conv_config(name: str, **overrides) -> ConvGenConfig:
    """A validated copy of ``PRESETS[name]`` with ``overrides`` applied."""
    return preset(PRESETS, name, "conv generator", **overrides)


def _gn(channels: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, affine=affine)


class ResBlock(nn.Module):
    """``x + conv2(SiLU(FiLM_c(GN(conv1(SiLU(GN(x)))))))``; FiLM and conv2 start at zero (identity block)."""

    def __init__(self, cin: int, cout: int, config: ConvGenConfig):
        super().__init__()
        self.norm1 = _gn(cin, config.gn_groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _gn(cout, config.gn_groups, affine=False)
        self.film = nn.Linear(config.hidden, 2 * cout)  # c -> (scale, shift)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        for lin in (self.film, self.conv2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, cout, H, W]
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)  # [B, cout, 1, 1] each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class ConvGenerator(OneStepGenerator, PretrainedMixin, nn.Module):
    """A class-conditional U-Net ``f_theta: (epsilon, c, alpha) -> x`` (see the module docstring).

    ``c = MLP(class embedding + alpha embedding [+ t embedding] + sum of style vectors)`` drives every
    block by FiLM; the output convolution is zero-initialised, so ``f`` is exactly 0 at init (as the
    DiT's adaLN-Zero final layer)."""

    config_class = ConvGenConfig

    def __init__(self, config: ConvGenConfig):
        super().__init__()
        self.config = config.validate()
        W, D = config.widths, config.hidden
        self.class_embed = nn.Embedding(config.num_classes, D)
        self.alpha_embed = TimestepEmbedder(config) if config.alpha_mlp else None
        self.time_embed = TimestepEmbedder(config, config.time_scale) if config.time_cond else None
        self.interval_embed = TimestepEmbedder(config, config.time_scale) if config.interval_cond else None
        self.style_codebook = nn.Embedding(config.codebook_size, D) if config.style_tokens > 0 else None
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(D, D))
        self.stem = nn.Conv2d(config.in_channels, W[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.ModuleList(ResBlock(W[max(i - 1, 0)] if j == 0 else w, w, config)
                          for j in range(config.blocks))
            for i, w in enumerate(W))
        self.middle = ResBlock(W[-1], W[-1], config)
        self.up = nn.ModuleList(ResBlock(W[i + 1] + W[i], W[i], config) for i in reversed(range(len(W) - 1)))
        self.out_norm = _gn(W[0], config.gn_groups)
        self.out = nn.Conv2d(W[0], config.in_channels, 3, padding=1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # c starts at unit scale: FiLM sees the class at once
        nn.init.normal_(self.class_embed.weight, std=1.0)
        if self.style_codebook is not None:  # the sum of K style vectors at the class embedding's scale
            nn.init.normal_(self.style_codebook.weight, std=self.config.style_tokens ** -0.5)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor | float = 1.0,
                style: torch.Tensor | None = None, t: torch.Tensor | float | None = None,
                h: torch.Tensor | float | None = None) -> torch.Tensor:
        """``x = f(noise, labels, alpha, style)`` ``[B, C, H, W]``, or ``v(y_t, t, labels)`` with
        ``time_cond`` (``u(y_t, r = t - h, t, labels)`` with ``interval_cond``); arguments as
        :meth:`drifting.models.dit.DriftingDiT.forward`."""
        alpha = self._check_inputs(noise, labels, alpha, style)  # [B]
        t = self._check_time(t, noise.shape[0], noise.device)  # [B] or None
        h = self._check_interval(h, noise.shape[0], noise.device)  # [B] or None
        c = self.class_embed(labels)  # [B, D]
        if self.alpha_embed is not None:
            c = c + self.alpha_embed(alpha * (ALPHA_SCALE / TIME_SCALE))
        if self.time_embed is not None:
            c = c + self.time_embed(t)
        if self.interval_embed is not None:
            c = c + self.interval_embed(h)
        if self.style_codebook is not None:
            if style is None:
                style = self.draw_style(noise.shape[0])
            c = c + self.style_codebook(style).sum(dim=1)  # [B, K, D] -> [B, D]
        c = self.cond(c)  # [B, D]

        if self.config.channels_last:  # the layout propagates through every conv, norm, pool and concat
            noise = noise.contiguous(memory_format=torch.channels_last)
        h = self.stem(noise)  # [B, W0, H, W]
        skips = []
        for i, blocks in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)  # [B, W_i, ceil(H_{i-1}/2), ...]
            for block in blocks:
                h = block(h, c)
            skips.append(h)
        h = self.middle(h, c)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            # back to the skip's size (4 -> 7 works)
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), c)  # [B, W_i, H_i, W_i]
        return self.out(F.silu(self.out_norm(h))).contiguous()  # [B, C, H, W], NCHW again

"""Diffusion Policy's conditional 1-D temporal U-Net (Chi et al. 2023), the backbone shared by the
Diffusion Policy and the one-step Drifting Policy of paper §5.3 (Table 7).

The network maps an action sequence ``sample [B, T, action_dim]`` (T = prediction horizon) and a
global conditioning vector ``cond [B, cond_dim]`` (the flattened observation history) to a tensor of
the same shape as ``sample``: the noise / velocity prediction of Diffusion Policy, or directly the
generated actions of the Drifting Policy (which has no time input: ``time_embed_dim = 0``).

Layout (channels-first inside, ``[B, C, T]``), following ``ConditionalUnet1D`` of
real-stanford/diffusion_policy without its (unused there) local conditioning:

* conditioning embedding ``e = concat(time_mlp(sinusoidal(t)), cond)``, ``[B, time_embed_dim + cond_dim]``;
* residual block: ``Conv1d -> GroupNorm -> Mish``, FiLM from ``e`` (``scale * h + bias``, or
  ``h + bias``), ``Conv1d -> GroupNorm -> Mish``, plus a (1x1 conv) residual;
* down path: per level two residual blocks, then a stride-2 ``Conv1d`` (not after the last level);
* two mid blocks; up path: concat the skip, two residual blocks, ``ConvTranspose1d`` x2 upsampling;
* output: ``Conv1d -> GroupNorm -> Mish`` then a 1x1 ``Conv1d`` to ``action_dim``.

The horizon must be divisible by ``2 ** (len(down_dims) - 1)`` (Diffusion Policy: T = 16, 3 levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models.pretrained import PretrainedMixin


@dataclass
class UNet1DConfig:
    action_dim: int
    cond_dim: int  # global conditioning vector size (flattened observation history)
    # Diffusion Policy uses (256, 512, 1024); small default for CPU
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5  # odd, so that the convolutions keep the length
    n_groups: int = 8  # GroupNorm groups; must divide every entry of down_dims
    time_embed_dim: int = 64  # sinusoidal step embedding -> MLP; 0 = no time input (the drifting policy)
    cond_predict_scale: bool = True  # FiLM: scale and bias (True) or bias only

    def validate(self) -> UNet1DConfig:
        """Check the fields; returns ``self``. Raises ``ValueError`` naming the bad field."""
        self.down_dims = tuple(int(d) for d in self.down_dims)
        for name in ("action_dim", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.down_dims) < 1 or any(d < 1 for d in self.down_dims):
            raise ValueError(f"down_dims must be a non-empty tuple of positive ints, got {self.down_dims}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be a positive odd int (length-preserving), "
                             f"got {self.kernel_size}")
        if self.n_groups < 1 or any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"n_groups={self.n_groups} must divide every entry of "
                             f"down_dims={self.down_dims}")
        if self.time_embed_dim != 0 and (self.time_embed_dim < 4 or self.time_embed_dim % 2):
            raise ValueError(f"time_embed_dim must be 0 (no time input) or an even int >= 4, "
                             f"got {self.time_embed_dim}")
        return self

    @property
    def horizon_multiple(self) -> int:
        """The prediction horizon T must be a multiple of this (one halving per level but the last)."""
        return 2 ** (len(self.down_dims) - 1)

    @property
    def embed_dim(self) -> int:
        """Size of the conditioning embedding that drives FiLM: time embedding + ``cond``."""
        return self.time_embed_dim + self.cond_dim


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """``t [B]`` -> ``[B, dim]``: ``[sin(t w_k), cos(t w_k)]``, ``w_k = 10000^(-k/(dim/2 - 1))`` (DP / DDPM).

    ``t`` is used as given (Diffusion Policy feeds integer steps 0..99); scale continuous times
    in [0, 1] up before calling the model if the frequencies should span them.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                      * (-math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([args.sin(), args.cos()], dim=-1)  # [B, dim]


class Conv1dBlock(nn.Sequential):
    """``[B, C_in, T] -> [B, C_out, T]``: ``Conv1d (same padding) -> GroupNorm -> Mish``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(n_groups, c_out), nn.Mish())


class ConditionalResBlock1D(nn.Module):
    """``x [B, C_in, T], e [B, E] -> [B, C_out, T]``: two conv blocks, FiLM from ``e`` between them,
    plus a residual (1x1 conv when ``C_in != C_out``)."""

    def __init__(self, c_in: int, c_out: int, config: UNet1DConfig):
        super().__init__()
        k, g = config.kernel_size, config.n_groups
        self.block1 = Conv1dBlock(c_in, c_out, k, g)
        self.block2 = Conv1dBlock(c_out, c_out, k, g)
        self.scale_and_bias = config.cond_predict_scale
        self.film = nn.Sequential(nn.Mish(),
                                  nn.Linear(config.embed_dim, c_out * (2 if self.scale_and_bias else 1)))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.block1(x)  # [B, C_out, T]
        film = self.film(e).unsqueeze(-1)  # [B, C_out or 2 C_out, 1]
        if self.scale_and_bias:
            scale, bias = film.chunk(2, dim=1)  # [B, C_out, 1] each
            h = scale * h + bias
        else:
            h = h + film
        h = self.block2(h)  # [B, C_out, T]
        return h + self.residual(x)


class ConditionalUnet1D(PretrainedMixin, nn.Module):
    """Diffusion Policy's conditional temporal U-Net:
    ``(sample [B, T, action_dim], cond [B, cond_dim], timestep) -> [B, T, action_dim]``.

    Parameters use PyTorch's default initialisation (as in Diffusion Policy), so the output is not
    identically zero at init. ``save_pretrained`` / ``from_pretrained`` come from
    :class:`~drifting.models.pretrained.PretrainedMixin` (``config.json`` + ``model.safetensors``).
    """

    config_class = UNet1DConfig

    def __init__(self, config: UNet1DConfig):
        super().__init__()
        self.config = config.validate()
        D = config.time_embed_dim
        self.time_mlp: nn.Sequential | None = None
        if D > 0:  # sinusoidal(t) [B, D] -> [B, 4D] -> [B, D]
            self.time_mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.Mish(), nn.Linear(4 * D, D))

        dims = (config.action_dim, *config.down_dims)
        levels = list(zip(dims[:-1], dims[1:]))  # (c_in, c_out) per level
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            last = i == len(levels) - 1
            self.down.append(nn.ModuleList([
                ConditionalResBlock1D(c_in, c_out, config),
                ConditionalResBlock1D(c_out, c_out, config),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1),  # T -> T/2
            ]))
        mid = config.down_dims[-1]
        self.mid = nn.ModuleList([ConditionalResBlock1D(mid, mid, config) for _ in range(2)])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(levels[1:]):  # from the deepest level back to the first
            self.up.append(nn.ModuleList([
                ConditionalResBlock1D(2 * c_out, c_in, config),  # input: [x, skip] concatenated
                ConditionalResBlock1D(c_in, c_in, config),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),  # T/2 -> T
            ]))
        start = config.down_dims[0]
        self.final = nn.Sequential(Conv1dBlock(start, start, config.kernel_size, config.n_groups),
                                   nn.Conv1d(start, config.action_dim, 1))

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (all of them, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_inputs(self, sample: Tensor, cond: Tensor,
                      timestep: Tensor | int | float | None) -> Tensor | None:
        """Validate the arguments; returns the timestep as a float tensor ``[B]`` (None without time
        input)."""
        c = self.config
        if not isinstance(sample, Tensor) or sample.ndim != 3 or sample.shape[-1] != c.action_dim:
            got = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
            raise ValueError(f"sample must be [B, T, action_dim={c.action_dim}], got {got}")
        if not sample.is_floating_point():
            raise ValueError(f"sample must be a floating-point tensor, got dtype {sample.dtype}")
        B, T = sample.shape[:2]
        if T == 0 or T % c.horizon_multiple:
            raise ValueError(f"sample: horizon T={T} must be a positive multiple of {c.horizon_multiple} "
                             f"(2 ** (len(down_dims) - 1) for down_dims={c.down_dims})")
        if not isinstance(cond, Tensor) or cond.shape != (B, c.cond_dim):
            got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"cond must be [B={B}, cond_dim={c.cond_dim}], got {got}")
        if not cond.is_floating_point():
            raise ValueError(f"cond must be a floating-point tensor, got dtype {cond.dtype}")
        if self.time_mlp is None:
            if timestep is not None:
                raise ValueError("timestep must be None: this model has no time input (time_embed_dim=0)")
            return None
        if timestep is None:
            raise ValueError(f"timestep is required (time_embed_dim={c.time_embed_dim}); "
                             "pass [B] or a scalar")
        if isinstance(timestep, bool) or not isinstance(timestep, (Tensor, int, float)):
            raise ValueError("timestep must be a tensor [B], an int or a float, "
                             f"got {type(timestep).__name__}")
        t = torch.as_tensor(timestep, device=sample.device)
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"timestep must be real-valued (int or float), got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(B)
        elif t.shape != (B,):
            raise ValueError(f"timestep must be a scalar or [B={B}], got {tuple(t.shape)}")
        return t.float()

    def forward(self, sample: Tensor, cond: Tensor, timestep: Tensor | int | float | None = None) -> Tensor:
        """sample [B, T, action_dim] (T = prediction horizon), cond [B, cond_dim], timestep [B] or scalar
        or None (None only when time_embed_dim == 0) -> [B, T, action_dim]"""
        t = self._check_inputs(sample, cond, timestep)
        if self.time_mlp is not None:
            emb = sinusoidal_embedding(t, self.config.time_embed_dim)  # [B, D], fp32
            te = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))  # [B, D]
            e = torch.cat([te, cond], dim=-1)  # [B, D + cond_dim]
        else:
            e = cond  # [B, cond_dim]

        x = sample.transpose(1, 2)  # [B, action_dim, T]
        skips: list[Tensor] = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, e), e)  # [B, C_level, T_level]
            skips.append(x)
            x = downsample(x)  # [B, C_level, T_level / 2] (unchanged at the last level)
        for block in self.mid:
            x = block(x, e)  # [B, C_last, T / 2^(L-1)]
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)  # [B, 2 C_level, T_level]
            x = upsample(block2(block1(x, e), e))  # [B, C_{level-1}, 2 T_level]
        x = self.final(x)  # [B, action_dim, T]
        return x.transpose(1, 2)  # [B, T, action_dim]

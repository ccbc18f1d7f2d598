"""The one-step DiT generator ``f(noise, class, alpha) -> x`` of Drifting Models.

Paper: "Generative Modeling via Drifting", §4 (Architecture, CFG conditioning), A.2 (Generator
Architecture), A.7 (CFG) and Table 8 (presets). Read top to bottom:

    DiTConfig, PRESETS, dit_config      the configuration and the paper's / CPU presets
    RMSNorm, rope_*, sincos_*           small building blocks
    Attention, SwiGLU, Block            one transformer block with adaLN-Zero (Peebles & Xie)
    FinalLayer                          adaLN + linear to patches, zero-initialised
    TimestepEmbedder                    (time_cond only) t in [0, 1] -> [B, D], DiT's t-MLP
    DriftingDiT                         patchify -> [in-context tokens | patch tokens] -> blocks
                                        -> final layer -> unpatchify; draw_style, sample,
                                        save_pretrained / from_pretrained

Where the paper is terse we follow the authors' JAX release (see DESIGN.md) and say so where
it matters: 1-D RoPE over the whole token sequence, QK RMS-norm, attention in fp32, and the CFG
scale alpha entering as a sinusoidal embedding, RMS-normalized, scaled by 0.02 and added to the
class embedding.

With ``DiTConfig.time_cond`` the same backbone is a velocity network ``v(y_t, t, c)`` for flow
matching (Drift-RAE Eq. 1-4; the recipe is ``drifting.recipes.flow``): a DiT timestep embedder
adds ``MLP(sincos(1000 t))`` to the conditioning vector and ``forward`` takes ``t`` in [0, 1]
(t = 0 data, t = 1 noise, as in the paper's Eq. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import preset
from .onestep import OneStepGenerator
from .pretrained import PretrainedMixin

# -----------------------------------------------------------------------------
# Configuration


# The timestep embedder follows DiT (Peebles & Xie, 2023): t is scaled to DiT's discrete range
# [0, 1000] and embedded with TIME_FREQ_DIM sinusoids of frequencies 10000^(-k / (TIME_FREQ_DIM/2)),
# so the fastest one turns 1 rad per 0.001 of t and the slowest resolves the whole [0, 1].
TIME_SCALE = 1000.0


@dataclass
class DiTConfig:
    input_size: int = 28  # H = W of the generated image / latent
    in_channels: int = 1  # C; the output has the same shape as the noise, [C, H, W]
    patch_size: int = 4
    hidden: int = 64  # D, the token width
    depth: int = 2  # number of transformer blocks
    heads: int = 4
    # SwiGLU width F = int(2/3 * mlp_ratio * hidden) rounded UP to a multiple of `mlp_multiple`
    # (2/3 keeps the parameter count of a GELU MLP with ratio `mlp_ratio`; LightningDiT style).
    mlp_ratio: float = 4.0
    mlp_multiple: int = 8
    num_classes: int = 10
    # A.2: learnable tokens prepended to the sequence = projected conditioning + own pos. embed.
    in_context_tokens: int = 16
    # A.2: `style_tokens` random indices into a learnable codebook of `codebook_size` vectors,
    # summed and added to the conditioning vector. 0 disables style.
    style_tokens: int = 32
    codebook_size: int = 64
    qk_norm: bool = True
    rope_theta: float = 10000.0
    # A fixed 2-D sin-cos embedding added to the patch tokens (as in DiT / LightningDiT, which
    # A.2 follows). RoPE alone only gives relative positions; this gives absolute ones cheaply.
    pos_embed: bool = True
    # Release fact: alpha -> sinusoidal embedding -> RMS-normalize -> * 0.02 -> + class embedding.
    alpha_embed_scale: float = 0.02
    # A learned embedder of alpha as well (iMF's CFG conditioning, like DiT's timestep MLP): Linear -> SiLU ->
    # Linear of the sinusoidal embedding of alpha * ALPHA_SCALE, added to the conditioning vector. The fixed
    # embedding alone moves c by only ~0.1 between alpha 1 and 2.5 against a learned class embedding of
    # norm ~1, so a short run hardly reacts to alpha (docs/results.md). False: no module, same state dict.
    alpha_mlp: bool = False
    norm_eps: float = 1e-6
    # Flow matching (Drift-RAE Eq. 1-4): a timestep embedder, sinusoidal embedding of 1000 t
    # (TIME_FREQ_DIM frequencies) -> Linear -> SiLU -> Linear, added to the conditioning vector;
    # forward() then requires t in [0, 1]. False: no such module, the state dict is unchanged.
    time_cond: bool = False
    # MeanFlow (Geng et al. 2025; needs time_cond): a second timestep embedder, of the interval h = t - r,
    # added to c; forward() then requires h in [0, 1] as well. False: no such module, the state dict is
    # unchanged.
    interval_cond: bool = False
    # t and h are embedded as sincos(time_scale * t) (DiT's 1000; MeanFlow's target differentiates through
    # it, so a smaller scale gives a smoother d_t u)
    time_scale: float = TIME_SCALE

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_hidden(self) -> int:
        f = int(2 * self.mlp_ratio * self.hidden / 3)
        return -(-f // self.mlp_multiple) * self.mlp_multiple  # round up to a multiple

    def validate(self) -> "DiTConfig":
        """Raise ``ValueError`` naming the offending field(s); return self when all is well."""
        def bad(field: str, why: str) -> None:
            raise ValueError(f"DiTConfig.{field}: {why}")

        for name in ("input_size", "in_channels", "patch_size", "hidden", "depth", "heads", "num_classes",
                     "mlp_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, f"must be an integer >= 1, got {v!r}")
        for name in ("in_context_tokens", "style_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, f"must be an integer >= 0, got {v!r}")
        if self.style_tokens > 0 and (not isinstance(self.codebook_size, int) or self.codebook_size < 1):
            bad("codebook_size", f"must be an integer >= 1 when style_tokens > 0, got {self.codebook_size!r}")
        if self.input_size % self.patch_size != 0:
            bad("input_size", f"{self.input_size} is not divisible by patch_size={self.patch_size}")
        if self.hidden % self.heads != 0:
            bad("hidden", f"{self.hidden} is not divisible by heads={self.heads}")
        if self.head_dim % 2 != 0:
            bad("heads", f"head_dim = hidden/heads = {self.head_dim} must be even for RoPE")
        if self.pos_embed and self.hidden % 4 != 0:
            bad("hidden", f"{self.hidden} must be divisible by 4 for the 2-D sin-cos pos_embed")
        if not self.mlp_ratio > 0:
            bad("mlp_ratio", f"must be > 0, got {self.mlp_ratio!r}")
        if not self.rope_theta > 0:
            bad("rope_theta", f"must be > 0, got {self.rope_theta!r}")
        if not self.alpha_embed_scale >= 0:
            bad("alpha_embed_scale", f"must be >= 0, got {self.alpha_embed_scale!r}")
        if not self.norm_eps > 0:
            bad("norm_eps", f"must be > 0, got {self.norm_eps!r}")
        if not isinstance(self.alpha_mlp, bool):
            bad("alpha_mlp", f"must be True or False, got {self.alpha_mlp!r}")
        if not isinstance(self.time_cond, bool):
            bad("time_cond", f"must be True or False, got {self.time_cond!r}")
        if not isinstance(self.interval_cond, bool):
            bad("interval_cond", f"must be True or False, got {self.interval_cond!r}")
        if self.interval_cond and not self.time_cond:
            bad("interval_cond", "needs time_cond=True (MeanFlow's u(z, r, t) sees t and h = t - r)")
        if not (isinstance(self.time_scale, (int, float)) and self.time_scale > 0):
            bad("time_scale", f"must be a number > 0, got {self.time_scale!r}")
        return self


def _imagenet(hidden: int, depth: int, heads: int, latent: bool) -> DiTConfig:
    """Table 8: 16 in-context ("register") tokens, 32 style tokens, 1000 classes."""
    size, channels, patch = (32, 4, 2) if latent else (256, 3, 16)
    return DiTConfig(input_size=size, in_channels=channels, patch_size=patch, hidden=hidden, depth=depth,
                     heads=heads, num_classes=1000, in_context_tokens=16, style_tokens=32, codebook_size=64)


PRESETS: dict[str, DiTConfig] = {
    # Table 8 generators (256 patch tokens each): latent 32x32x4 / pixel 256x256x3.
    "B/2": _imagenet(768, 12, 12, latent=True),
    "L/2": _imagenet(1024, 24, 16, latent=True),
    "B/16": _imagenet(768, 12, 12, latent=False),
    "L/16": _imagenet(1024, 24, 16, latent=False),
    # CPU sizes for 28x28x1 images with 10 classes. cpu-tiny (tests): 7x7 = 49 patch tokens.
    # cpu-small (training on 2 cores): patch 7, the usual ViT-on-MNIST choice, gives a 4x4 grid
    # like the paper's 16x16-token grids scaled down; at patch 4 the same width/depth costs ~3x
    # the time, over the ~1 s per forward+backward of 256 samples that we budget on 2 cores.
    "cpu-tiny": DiTConfig(input_size=28, in_channels=1, patch_size=4, hidden=64, depth=2, heads=4,
                          num_classes=10, in_context_tokens=16, style_tokens=32),
    "cpu-small": DiTConfig(input_size=28, in_channels=1, patch_size=7, hidden=192, depth=6, heads=4,
                           num_classes=10, in_context_tokens=4, style_tokens=32),
    # the main job's generator (issue 15's lever study, docs/results.md): patch 4 (a 7x7 grid, no 7x7 blocks),
    # narrower and shallower than cpu-small at about its cost per step (1.26M parameters), and a learned
    # alpha embedder so that the CFG scale reaches the output within a short run.
    "cpu-p4": DiTConfig(input_size=28, in_channels=1, patch_size=4, hidden=128, depth=4, heads=4,
                        num_classes=10, in_context_tokens=4, style_tokens=32, alpha_mlp=True),
}


def dit_config(name: str, **overrides) -> DiTConfig:
    """A validated copy of ``PRESETS[name]`` with ``overrides`` applied (``dit_config("B/2", depth=6)``)."""
    return preset(PRESETS, name, "DiT", **overrides)


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, 2019), computed in fp32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[T, head_dim/2]`` for 1-D RoPE (Su et al., 2024) at positions 0..T-1."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [hd/2]
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, hd]`` pairwise (first half, second half) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)  # [B, H, T, hd/2] each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # [B, H, T, hd]


def sincos_1d(pos: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[..., dim]`` of real positions ``pos [...]`` (cos half, sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=pos.device) / half)
    args = pos.float()[..., None] * freqs  # [..., half]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)  # [..., 2*half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding ``[grid*grid, dim]`` in raster order: half rows, half columns."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # [g, g] each
    return torch.cat([sincos_1d(rows.flatten(), dim // 2), sincos_1d(cols.flatten(), dim // 2)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x [B, T, D]`` normalized, then scaled and shifted by per-sample ``[B, 1, D]``."""
    return x * (1 + scale) + shift


# -----------------------------------------------------------------------------
# Transformer


class Attention(nn.Module):
    """Multi-head self-attention with QK RMS-norm (Henry et al., 2020) and 1-D RoPE.

    The rotary positions run over the *whole* token sequence (in-context tokens first, then the
    patch tokens in raster order), as in the authors' release, rather than a 2-D RoPE over the
    patch grid. The attention itself (RoPE + softmax) runs in fp32 even under bf16 autocast.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.proj = nn.Linear(config.hidden, config.hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, hd]
        q, k = self.q_norm(q), self.k_norm(k)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # [B, H, T, hd]
            y = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, hd]
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return self.proj(y)


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer, 2020): ``W3 (silu(W1 x) * W2 x)`` with width ``config.mlp_hidden``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.w12 = nn.Linear(config.hidden, 2 * config.mlp_hidden)
        self.w3 = nn.Linear(config.mlp_hidden, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)  # [B, T, F] each
        return self.w3(F.silu(a) * b)  # [B, T, D]


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero (DiT): shift/scale/gate from the conditioning.

    The modulation layer is zero-initialised, so every block starts as the identity.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden, config.norm_eps, affine=False)
        self.attn = Attention(config)
        self.norm2 = RMSNorm(config.hidden, config.norm_eps, affine=False)
        self.mlp = SwiGLU(config)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden, 6 * config.hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None, :].chunk(6, dim=-1)  # [B, 1, D]
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin)  # [B, T, D]
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # [B, T, D]
        return x


class FinalLayer(nn.Module):
    """adaLN + linear to ``patch_size**2 * C`` values per token; all zero-initialised (DiT)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden, config.norm_eps, affine=False)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden, 2 * config.hidden))
        self.linear = nn.Linear(config.hidden, config.patch_size**2 * config.in_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c)[:, None, :].chunk(2, dim=-1)  # [B, 1, D]
        return self.linear(modulate(self.norm(x), shift, scale))  # [B, N, p*p*C]


TIME_FREQ_DIM = 256
# the learned alpha embedder reuses the timestep MLP on alpha * ALPHA_SCALE / TIME_SCALE, so a unit of alpha
# turns its fastest sinusoid by ALPHA_SCALE rad: alpha in [1, 4] spans the mid frequencies
ALPHA_SCALE = 100.0


class TimestepEmbedder(nn.Module):
    """``t [B]`` in [0, 1] -> ``[B, D]``: ``Linear(SiLU(Linear(sincos_1d(scale t, 256))))`` (DiT: 1000)."""

    def __init__(self, config: DiTConfig, scale: float = TIME_SCALE):
        super().__init__()
        self.scale = float(scale)
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        e = sincos_1d(t * self.scale, TIME_FREQ_DIM)  # [B, 256], fp32
        return self.mlp(e.to(self.mlp[0].weight.dtype))  # [B, D]


class DriftingDiT(OneStepGenerator, PretrainedMixin, nn.Module):
    """The generator ``f_theta: (epsilon, c, alpha) -> x`` of A.2 (Eq. 27), a DiT-style Transformer.

    * noise ``[B, C, H, W]`` is patchified (a strided conv) into ``N = (H/p)^2`` tokens, plus a
      fixed 2-D sin-cos position embedding (``config.pos_embed``);
    * the conditioning vector ``c [B, D]`` = class embedding + alpha embedding + style embedding
      (A.2, A.7); it drives adaLN-Zero in every block and the final layer (§4 "Architecture");
    * ``in_context_tokens`` tokens = ``Linear(c)`` + their own learnable position embeddings are
      prepended to the sequence (A.2 "In-context tokens") and dropped before the final layer;
    * blocks: RMSNorm, attention with QK-norm and 1-D RoPE, SwiGLU, adaLN-Zero (A.2 "Transformer");
    * the final adaLN layer + linear is zero-initialised, so ``f`` is exactly 0 at init.

    The CFG scale alpha (A.7) is embedded without an MLP, as in the release: sinusoidal embedding
    of alpha (frequencies ``10000^{-k/(D/2)}``) -> RMS-normalize -> ``* alpha_embed_scale``
    (0.02) -> added to the class embedding (also initialised with std 0.02). The learnable adaLN
    layers downstream decide how much it matters.

    With ``config.time_cond`` the model is a flow-matching velocity ``v(y_t, t, c)`` (Drift-RAE
    Eq. 3-4): ``c`` also gets ``TimestepEmbedder(t)`` and ``forward`` requires ``t`` in [0, 1],
    t = 1 (pure noise) included, so the one-step ``G(z) = z - v(z, 1)`` is one forward pass.
    """

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config.validate()
        D = config.hidden
        self.patch_embed = nn.Conv2d(config.in_channels, D, kernel_size=config.patch_size,
                                     stride=config.patch_size)
        self.class_embed = nn.Embedding(config.num_classes, D)
        self.style_codebook = nn.Embedding(config.codebook_size, D) if config.style_tokens > 0 else None
        # None (not registered) when time_cond is off: same state dict and same init RNG draws as before
        self.time_embed = TimestepEmbedder(config, config.time_scale) if config.time_cond else None
        self.interval_embed = TimestepEmbedder(config, config.time_scale) if config.interval_cond else None
        self.alpha_embed = TimestepEmbedder(config) if config.alpha_mlp else None
        if config.in_context_tokens > 0:
            self.context_proj = nn.Linear(D, D)
            self.context_pos = nn.Parameter(torch.zeros(config.in_context_tokens, D))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final = FinalLayer(config)

        # Fixed tables (not saved): 2-D patch position embedding and 1-D RoPE over all T tokens.
        if config.pos_embed:
            self.register_buffer("patch_pos", sincos_2d(config.grid_size, D), persistent=False)  # [N, D]
        cos, sin = rope_tables(config.in_context_tokens + config.num_patches, config.head_dim,
                               config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # [T, hd/2]
        self.register_buffer("rope_sin", sin, persistent=False)  # [T, hd/2]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DiT initialisation: xavier linears with zero bias, N(0, 0.02) embeddings, adaLN-Zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        if self.style_codebook is not None:
            # std 0.02/sqrt(K) so the sum of K style vectors starts at the class embedding's scale
            nn.init.normal_(self.style_codebook.weight, std=0.02 / self.config.style_tokens**0.5)
        if self.config.in_context_tokens > 0:
            nn.init.normal_(self.context_pos, std=0.02)
        for emb in (self.time_embed, self.alpha_embed):  # DiT: the timestep MLP's weights ~ N(0, 0.02)
            if emb is not None:
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for lin in (self.final.adaLN[-1], self.final.linear):  # and the output starts at exactly 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- helpers -------------------------------------------------------------------------

    def alpha_embedding(self, alpha: torch.Tensor) -> torch.Tensor:
        """``alpha [B] -> [B, D]``: sinusoidal, RMS-normalized, times ``alpha_embed_scale`` (release)."""
        e = sincos_1d(alpha, self.config.hidden)  # [B, D]
        e = e * torch.rsqrt(e.square().mean(-1, keepdim=True) + self.config.norm_eps)
        return self.config.alpha_embed_scale * e

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p*p*C] -> [B, C, H, W]`` (tokens in raster order, as the patch conv makes them)."""
        B, g, p, C = x.shape[0], self.config.grid_size, self.config.patch_size, self.config.in_channels
        x = x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # [B, C, g, p, g, p]
        return x.reshape(B, C, g * p, g * p)

    # ---- the generator -------------------------------------------------------------------

    def forward(self, noise: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor | float = 1.0,
                style: torch.Tensor | None = None, t: torch.Tensor | float | None = None,
                h: torch.Tensor | float | None = None) -> torch.Tensor:
        """``x = f(noise, labels, alpha, style)``, or ``v(y_t, t, labels)`` when ``config.time_cond``, or
        MeanFlow's average velocity ``u(y_t, r = t - h, t, labels)`` when also ``config.interval_cond``.

        noise ``[B, C, H, W]`` Gaussian (for a flow model: the point ``y_t`` on the path); labels
        ``[B]`` integer classes; alpha: the CFG scale (A.7), a float or ``[B]`` tensor, each >= 1;
        style ``[B, style_tokens]`` integer codebook indices, drawn uniformly with ``torch.randint``
        when None (A.2); t: the flow time (Drift-RAE Eq. 1; 0 = data, 1 = noise), a float or a
        ``[B]`` tensor in [0, 1], required when ``config.time_cond`` and an error otherwise; h: the
        interval ``t - r`` of MeanFlow, the same kinds of value, required exactly when
        ``config.interval_cond``.
        Returns ``[B, C, H, W]`` (bf16 under bf16 autocast: cast it to fp32 before the loss).
        """
        alpha = self._check_inputs(noise, labels, alpha, style)  # [B]
        t = self._check_time(t, noise.shape[0], noise.device)  # [B] or None
        h = self._check_interval(h, noise.shape[0], noise.device)  # [B] or None
        cfg = self.config
        B = noise.shape[0]

        # conditioning vector c (A.2, A.7; + the timestep embedding of a flow model)
        c = self.class_embed(labels) + self.alpha_embedding(alpha)  # [B, D]
        if self.alpha_embed is not None:
            c = c + self.alpha_embed(alpha * (ALPHA_SCALE / TIME_SCALE))  # [B, D]
        if self.time_embed is not None:
            c = c + self.time_embed(t)  # [B, D]
        if self.interval_embed is not None:
            c = c + self.interval_embed(h)  # [B, D]
        if self.style_codebook is not None:
            if style is None:
                style = torch.randint(cfg.codebook_size, (B, cfg.style_tokens), device=noise.device)
            c = c + self.style_codebook(style).sum(dim=1)  # [B, K, D] -> [B, D]

        # tokens: [in-context tokens | patch tokens]
        x = self.patch_embed(noise).flatten(2).transpose(1, 2)  # [B, N, D]
        if cfg.pos_embed:
            x = x + self.patch_pos  # [B, N, D]
        if cfg.in_context_tokens > 0:
            ctx = self.context_proj(c)[:, None, :] + self.context_pos  # [B, T_ctx, D]
            x = torch.cat([ctx.to(x.dtype), x], dim=1)  # [B, T_ctx + N, D]

        for block in self.blocks:
            x = block(x, c, self.rope_cos, self.rope_sin)  # [B, T, D]

        x = self.final(x[:, cfg.in_context_tokens:], c)  # [B, N, p*p*C]
        return self.unpatchify(x)  # [B, C, H, W]

"""Representation autoencoders (RAE) as tokenizers: a FROZEN representation encoder + a trained pixel decoder.

Paper: Zhang et al. 2026, "Drift-RAE" (drift-rae-distillation), Sec. 1 and 3.2-3.3, which builds on
RAE (Zheng et al. 2025): "RAEs replace the conventional VAE latent space with feature
representations extracted by pretrained self-supervised visual encoders, and train a decoder to
translate these representations back to the image space" (Sec. 1). The latent is the encoder's
token grid (ImageNet: DINOv2 tokens, ``16 x 16 = 256`` spatial tokens, App. "isotropy"); the
drifting field acts on each token (Sec. 3.3, Eq. 11) and the decoder turns a generated latent into
pixels. Latents are normalized per channel (RAE's ``latents_mean`` / ``latents_std``), and RAE
trains its decoder on noise-augmented latents ``z + sigma * eps`` with ``sigma ~ U[0, tau]`` per
sample so that it tolerates the imperfect latents a generator produces.

Two tokenizers (both :class:`drifting.models.tokenizer.Tokenizer`, pixels ``[B, C, H, W]`` in
``[-1, 1]``):

* :class:`RAETokenizer` — the small-scale RAE of this library. The frozen representation encoder
  is the encoder of a ResNet-MAE export (:class:`drifting.models.resnet_mae.ResNetMAE`, the same
  feature encoder the drifting loss uses, A.3 of Deng et al. 2026); its stage-``s`` output
  ``f_s = encoder.stage_outputs(x)[s - 1]`` is the token grid (for 28x28 Fashion-MNIST, the
  ``cpu-tiny`` preset and ``stage=3``: ``7 x 7`` tokens of ``32`` channels). The latent is
  ``z = (f_s - mean) / std`` per channel, with ``mean`` / ``std`` fitted over training samples
  and positions; a small convolutional decoder (:class:`RAEPixelDecoder`) maps ``z`` back to
  pixels. Trained by :func:`drifting.recipes.autoencoders.train_rae`; saved as an export
  directory (``config.json`` + ``model.safetensors`` holding encoder, decoder and statistics).
* :class:`AutoencoderRAETokenizer` — an adapter for diffusers' ``AutoencoderRAE`` (the official
  RAE port: DINOv2 / SigLIP2 / MAE ViT encoders with a ViT decoder), for real RAE checkpoints
  saved locally. ``diffusers`` and ``transformers`` are imported lazily.

Nothing here downloads anything or unpickles anything: weights are read only from local
``*.safetensors`` files.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .resnet_mae import PRESETS, ResNetEncoder, ResNetMAE, ResNetMAEConfig, group_norm, patchify
from .tokenizer import Tokenizer

__all__ = [
    "RAEConfig",
    "RAEPixelDecoder",
    "RAETokenizer",
    "AutoencoderRAETokenizer",
    "tiny_autoencoder_rae",
    "upsample_sizes",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# AutoencoderRAETokenizer's own settings beside the diffusers files
ADAPTER_CONFIG_NAME = "drifting_adapter.json"


def _is_int(v, lo: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _hw(v, name: str) -> tuple[int, int]:
    """``28`` or ``(28, 28)`` -> ``(28, 28)``; ValueError naming ``name`` otherwise."""
    if _is_int(v):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(s) for s in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{name} must be an integer >= 1 or a pair (H, W) of them, got {v!r}")


# -----------------------------------------------------------------------------
# Configuration


@dataclass
class RAEConfig:
    """Architecture of a :class:`RAETokenizer` (saved as ``config.json`` of its export).

    Attributes:
        encoder: the ResNet-MAE architecture whose encoder is the frozen representation encoder
            (default: the ``cpu-tiny`` preset, ``in_channels=1``, base width 8, 28x28).
        stage: which encoder stage output is the latent, 1..4 (``f_stage``, A.3); stage ``s``
            halves the grid ``s - 1`` times (ceil): 28 -> 28, 14, 7, 4.
        image_size: ``(H, W)`` of the pixel images (an int means square). The decoder always
            produces this size, so the tokenizer maps images of exactly this size.
        decoder_width: channels of the decoder at the latent resolution; each upsampling
            halves them, down to ``decoder_min_width``.
        decoder_blocks: GroupNorm residual blocks per decoder resolution (>= 1).
        decoder_min_width: the floor of the decoder's channel halving.
        gn_groups: GroupNorm groups of the decoder (each layer uses gcd(groups, channels)).
        mae_dir: where the encoder came from (provenance only; the export holds the weights).
    """

    encoder: ResNetMAEConfig = field(default_factory=lambda: replace(PRESETS["cpu-tiny"]))
    stage: int = 3
    image_size: tuple[int, int] = (28, 28)
    decoder_width: int = 64
    decoder_blocks: int = 2
    decoder_min_width: int = 16
    gn_groups: int = 8
    mae_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):  # from JSON
            enc = dict(self.encoder)
            enc.pop("_class_name", None)
            try:
                self.encoder = ResNetMAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in enc.items()})
            except TypeError as err:  # an unknown or missing field
                raise ValueError(f"RAEConfig.encoder: not a ResNetMAEConfig ({err})") from err
        if isinstance(self.image_size, list) or _is_int(self.image_size):
            self.image_size = _hw(self.image_size, "RAEConfig.image_size")

    def validate(self) -> "RAEConfig":
        """Raise ``ValueError`` naming the offending field; return self when all is well."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"RAEConfig.{name}: {why}")

        if not isinstance(self.encoder, ResNetMAEConfig):
            bad("encoder", f"must be a ResNetMAEConfig, got {type(self.encoder).__name__}")
        self.encoder.validate()
        if not _is_int(self.stage) or self.stage > 4:
            bad("stage",
                "must be one of 1, 2, 3, 4 (the encoder stage whose output is the "
                f"latent), got {self.stage!r}")
        try:
            self.image_size = _hw(self.image_size, "image_size")
        except ValueError as err:
            bad("image_size", str(err).removeprefix("image_size "))
        p = self.encoder.input_patch
        if self.image_size[0] % p or self.image_size[1] % p:
            bad("image_size", f"{self.image_size} is not divisible by the encoder's input_patch={p}")
        for name in ("decoder_width", "decoder_blocks", "decoder_min_width", "gn_groups"):
            if not _is_int(getattr(self, name)):
                bad(name, f"must be an integer >= 1, got {getattr(self, name)!r}")
        if self.mae_dir is not None and not isinstance(self.mae_dir, str):
            bad("mae_dir", f"must be None or a string, got {type(self.mae_dir).__name__}")
        return self

    @property
    def pixel_channels(self) -> int:
        return self.encoder.in_channels

    def latent_shape(self) -> tuple[int, int, int]:
        """``(D, h, w)``: channels and grid of the encoder's stage-``stage`` output for ``image_size``."""
        return self.encoder.stage_shapes(self.image_size)[self.stage - 1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["encoder"]["blocks_per_stage"] = list(self.encoder.blocks_per_stage)
        return d

    @classmethod
    def from_dict(cls, raw: dict) -> "RAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in raw if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"config: unknown RAEConfig fields {unknown}")
        return cls(**{k: v for k, v in raw.items() if k in known}).validate()


# -----------------------------------------------------------------------------
# Decoder


def upsample_sizes(latent_hw: tuple[int, int], image_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes the decoder upsamples through, from just above ``latent_hw`` to ``image_hw``.

    Built backwards from the image by halving with ceil (the encoder's stride-2 rule), so every
    intermediate size is one the encoder saw and non-powers of two work: ``7 -> 28`` gives
    ``[(14, 14), (28, 28)]``, ``4 -> 28`` gives ``[(7, 7), (14, 14), (28, 28)]``, ``28 -> 28`` ``[]``.
    """
    (h, w), (H, W) = latent_hw, image_hw
    if h > H or w > W:
        raise ValueError(f"latent_hw {latent_hw} must not exceed image_hw {image_hw}")
    chain = [(H, W)]
    while chain[-1][0] > h or chain[-1][1] > w:
        a, b = chain[-1]
        chain.append((max(-(-a // 2), h), max(-(-b // 2), w)))
    return chain[-2::-1]  # drop the latent size itself, smallest first


class ResBlock(nn.Module):
    """GroupNorm residual block: ``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` (pre-activation)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(channels, groups)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.norm2 = group_norm(channels, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C, H, W]
        return x + self.conv2(F.silu(self.norm2(h)))


class RAEPixelDecoder(nn.Module):
    """The trainable RAE decoder: normalized latents ``[B, D, h, w]`` -> pixels ``[B, C, H, W]``.

    A 3x3 conv to ``decoder_width`` channels, ``decoder_blocks`` residual blocks, then for each
    size of :func:`upsample_sizes` a nearest-neighbour resize to exactly that size, a 3x3 conv
    (halving the channels, floored at ``decoder_min_width``) and ``decoder_blocks`` residual
    blocks; finally GN, SiLU and a 3x3 conv to ``C`` channels. No output squashing (no tanh):
    pixels come out in ~``[-1, 1]`` because that is what the decoder is trained to produce.
    """

    def __init__(self, config: RAEConfig):
        super().__init__()
        config.validate()
        D, h, w = config.latent_shape()
        self.sizes = upsample_sizes((h, w), config.image_size)
        g, width = config.gn_groups, config.decoder_width
        widths = [max(width // 2**k, config.decoder_min_width) for k in range(len(self.sizes) + 1)]
        self.conv_in = nn.Conv2d(D, widths[0], 3, 1, 1)
        self.levels = nn.ModuleList()
        for k, cw in enumerate(widths):
            layers: list[nn.Module] = [] if k == 0 else [nn.Conv2d(widths[k - 1], cw, 3, 1, 1)]
            layers += [ResBlock(cw, g) for _ in range(config.decoder_blocks)]
            self.levels.append(nn.Sequential(*layers))
        self.norm_out = group_norm(widths[-1], g)
        self.conv_out = nn.Conv2d(widths[-1], config.pixel_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.levels[0](self.conv_in(z))  # [B, w0, h, w]
        for size, level in zip(self.sizes, self.levels[1:]):
            h = level(F.interpolate(h, size=size, mode="nearest"))  # [B, w_k, H_k, W_k]
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, C, H, W]


# -----------------------------------------------------------------------------
# The small-scale RAE tokenizer


class RAETokenizer(Tokenizer):
    """A representation autoencoder on a frozen ResNet-MAE encoder (Drift-RAE Sec. 1, 3.2; RAE).

    ``encode``: ``z = (f - mean) / std`` with ``f = encoder.stage_outputs(x)[stage - 1]``
    ``[B, D, h, w]`` and per-channel ``mean`` / ``std`` buffers ``[D]`` (fitted with
    :meth:`fit_normalization`). Deterministic: the "posterior" is a point mass, so
    ``sample=True`` returns the same latent. ``decode``: :class:`RAEPixelDecoder` on ``z``,
    differentiable w.r.t. ``z`` (Sec. 3.4 of Deng et al.: a pixel-space feature encoder's loss
    reaches a latent generator through the decoder). The tokenizer is frozen and stays in eval
    mode (:class:`Tokenizer`); train a decoder separately and pass it in (see
    :func:`drifting.recipes.autoencoders.train_rae`).

    Args:
        config: the architecture (:class:`RAEConfig`).
        encoder: a ``ResNetEncoder`` with ``config.encoder``'s architecture (default: random).
        decoder: a :class:`RAEPixelDecoder` for ``config`` (default: random).
        latent_mean, latent_std: ``[D]`` statistics (default 0 and 1, i.e. no normalization).
    """

    def __init__(self, config: RAEConfig, encoder: ResNetEncoder | None = None,
                 decoder: RAEPixelDecoder | None = None, latent_mean: torch.Tensor | None = None,
                 latent_std: torch.Tensor | None = None):
        super().__init__()
        config.validate()
        D, h, w = config.latent_shape()
        if encoder is None:
            encoder = ResNetEncoder(config.encoder)
        if not isinstance(encoder, ResNetEncoder):
            raise ValueError(f"encoder must be a ResNetEncoder, got {type(encoder).__name__}")
        if encoder.config != config.encoder:
            raise ValueError(f"encoder has architecture {encoder.config}, but "
                             f"config.encoder is {config.encoder}")
        if decoder is None:
            decoder = RAEPixelDecoder(config)
        if not isinstance(decoder, RAEPixelDecoder):
            raise ValueError(f"decoder must be a RAEPixelDecoder, got {type(decoder).__name__}")
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("latent_mean", torch.zeros(D))
        self.register_buffer("latent_std", torch.ones(D))
        self.set_normalization(latent_mean if latent_mean is not None else torch.zeros(D),
                               latent_std if latent_std is not None else torch.ones(D))
        self.pixel_channels = config.pixel_channels
        self.latent_channels = D
        self.latent_hw = (h, w)
        # nominal: each stage after the first halves the grid (with ceil, so 28 -> 7 is 4 but 28 -> 4 is 7)
        self.downsample_factor = config.encoder.input_patch * 2 ** (config.stage - 1)
        self.freeze()

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_mae(cls, mae_dir: str | os.PathLike, *, stage: int = 3, image_size=None,
                 **decoder_kw) -> "RAETokenizer":
        """A tokenizer on the encoder of the ResNet-MAE export ``mae_dir`` with a random decoder.

        ``image_size`` defaults to the MAE's ``input_size``; ``decoder_kw`` are further
        :class:`RAEConfig` fields (``decoder_width``, ``decoder_blocks``, ...).
        """
        mae = ResNetMAE.from_pretrained(mae_dir)
        cfg = RAEConfig(encoder=mae.config, stage=stage,
                        image_size=image_size if image_size is not None else mae.config.input_size,
                        mae_dir=str(mae_dir), **decoder_kw).validate()
        return cls(cfg, encoder=mae.encoder)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (encoder, decoder, latent statistics)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"_class_name": type(self).__name__, **self.config.to_dict()}
        (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(d / (WEIGHTS_NAME + ".tmp")))
        os.replace(d / (WEIGHTS_NAME + ".tmp"), d / WEIGHTS_NAME)  # never a half-written file

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *,
                        device: str | torch.device = "cpu") -> "RAETokenizer":
        """Load what :meth:`save_pretrained` wrote, from a LOCAL directory (safetensors only)."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"directory: {str(directory)!r} is not an existing local directory "
                                    "(an RAETokenizer export: config.json + model.safetensors)")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise FileNotFoundError(f"directory: {str(d)!r} has no {name} (write it with "
                                        "RAETokenizer.save_pretrained or drifting train-rae)")
        raw = json.loads((d / CONFIG_NAME).read_text())
        if raw.get("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"directory: {str(d)!r} holds a {raw['_class_name']}, not a {cls.__name__}")
        tok = cls(RAEConfig.from_dict(raw))
        tok.load_state_dict(load_file(str(d / WEIGHTS_NAME)))
        return tok.to(device)

    # -- normalization -------------------------------------------------------------

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-channel latent statistics (``[D]`` each, ``std > 0``)."""
        D = self.latent_mean.shape[0]
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != (D,) or std.shape != (D,):
            raise ValueError(f"mean and std must have shape [{D}], got {tuple(mean.shape)} "
                             f"and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("mean must be finite and std finite and > 0")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    @torch.no_grad()
    def fit_normalization(self, images, *, batch: int = 512, min_std: float = 1e-3,
                          progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit ``mean`` / ``std`` ``[D]`` over all samples and positions of ``images`` and set them.

        ``images``: uint8 ``[N, H, W, C]`` (or ``[N, H, W]``; numpy or tensor, as in
        :meth:`Tokenizer.encode_dataset`) or a float tensor ``[N, C, H, W]`` in ``[-1, 1]``.
        Moments are accumulated in float64. ``std`` is floored at ``min_std`` (a ReLU channel
        that never fires would otherwise divide by zero). Returns ``(mean, std)``.
        """
        feats = self.encode_dataset(images, batch=batch, progress=progress, raw=True)  # [N, D, h, w]
        mean, std = channel_stats(feats, min_std=min_std)
        self.set_normalization(mean, std)
        return mean, std

    # -- the tokenizer -----------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalized) representation ``f = encoder.stage_outputs(x)[stage - 1]`` ``[B, D, h, w]``.

        Runs the stem and only the first ``stage`` stages (the same numbers as
        ``stage_outputs``, without computing the later stages).
        """
        self._check_pixels(x)
        self.latent_shape(x.shape[1], x.shape[2], x.shape[3])  # validates H, W
        enc = self.encoder
        enc._check(x)
        dtype = next(enc.parameters()).dtype
        h = enc.stem(patchify(x.to(dtype), enc.config.input_patch))  # [B, C1, H1, W1]
        for stage in enc.stages[: self.config.stage]:
            h = stage(h)  # [B, C_i, H_i, W_i]
        return h  # [B, D, h, w]

    def normalize(self, f: torch.Tensor) -> torch.Tensor:
        """``(f - mean) / std`` per channel: raw features ``[B, D, h, w]`` -> latents."""
        return ((f - self.latent_mean.view(1, -1, 1, 1).to(f.dtype))
                / self.latent_std.view(1, -1, 1, 1).to(f.dtype))

    def encode(self, x, *, sample=False, generator=None):
        """Pixels ``x [B, C, H, W]`` in ``[-1, 1]`` -> normalized latents ``[B, D, h, w]`` in ``x``'s
        dtype."""
        if generator is not None and not sample:
            raise ValueError("generator is only used with sample=True (the default encode is deterministic)")
        return self.normalize(self.features(x)).to(x.dtype)

    def decode(self, z, *, clamp=False):
        """Latents ``z [B, D, h, w]`` -> pixels ``[B, C, H, W]`` in ``z``'s dtype; differentiable in ``z``."""
        self._check_latents(z)
        if tuple(z.shape[-2:]) != self.latent_hw:
            raise ValueError(f"z must have the latent grid {self.latent_hw} (h, w), got "
                             f"shape {tuple(z.shape)}")
        dtype = next(self.decoder.parameters()).dtype
        x = self.decoder(z.to(dtype)).to(z.dtype)  # [B, C, H, W]
        return x.clamp(-1.0, 1.0) if clamp else x

    def latent_shape(self, C, H, W):
        if C != self.pixel_channels:
            raise ValueError(f"C must equal pixel_channels={self.pixel_channels}, got {C}")
        if (H, W) != tuple(self.config.image_size):
            raise ValueError(f"H, W must equal the RAE's image_size {tuple(self.config.image_size)} (its "
                             f"decoder produces exactly that size), got H={H}, W={W}")
        return self.config.latent_shape()

    @torch.no_grad()
    def encode_dataset(self, images, *, batch: int = 256, progress: bool = False,
                       raw: bool = False) -> torch.Tensor:
        """:meth:`Tokenizer.encode_dataset`, also for a float tensor ``[N, C, H, W]`` in ``[-1, 1]``;
        ``raw=True`` returns the unnormalized features (:meth:`features`) instead of latents."""
        if not raw and not (isinstance(images, torch.Tensor) and images.is_floating_point()):
            return super().encode_dataset(images, batch=batch, progress=progress)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4:
                raise ValueError("images must have shape [N, C, H, W] when floating, "
                                 f"got {tuple(images.shape)}")
            chunks = (images[s:s + batch] for s in range(0, len(images), batch))
        else:
            if isinstance(images, np.ndarray):
                images = torch.from_numpy(np.ascontiguousarray(images))
            if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
                raise ValueError("images must be a uint8 array / tensor [N, H, W, C] or a float tensor [N, "
                                 f"C, H, W], got {getattr(images, 'dtype', type(images).__name__)}")
            if images.ndim == 3:
                images = images.unsqueeze(-1)  # [N, H, W] -> [N, H, W, 1]
            if images.ndim != 4:
                raise ValueError("images must have shape [N, H, W, C] (or [N, H, W]), "
                                 f"got {tuple(images.shape)}")
            chunks = (images[s:s + batch].movedim(-1, 1).float() / 127.5 - 1.0
                      for s in range(0, len(images), batch))
        fn = self.features if raw else self.encode
        dev = self.latent_mean.device
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, total=-(-len(images) // batch), desc="encode", unit="batch")
        return torch.cat([fn(x.to(dev)).float().cpu() for x in chunks])  # [N, D, h, w]

    def extra_repr(self) -> str:
        c = self.config
        return (f"pixel_channels={self.pixel_channels}, latent_channels={self.latent_channels}, "
                f"latent_hw={self.latent_hw}, stage={c.stage}, image_size={tuple(c.image_size)}")


def channel_stats(feats: torch.Tensor, *, min_std: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, std)`` ``[D]`` of ``feats [N, D, h, w]`` over samples and positions (float64
    sums)."""
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
        raise ValueError(f"feats must be a tensor [N, D, h, w], got {feats!r:.80}")
    s1 = torch.zeros(feats.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    for s in range(0, len(feats), 4096):
        f = feats[s:s + 4096].to(torch.float64)
        s1 += f.sum(dim=(0, 2, 3))
        s2 += f.square().sum(dim=(0, 2, 3))
    n = feats.shape[0] * feats.shape[2] * feats.shape[3]
    mean = s1 / n
    var = (s2 / n - mean.square()).clamp_min(0.0)
    return mean.float(), var.sqrt().clamp_min(min_std).float()


# -----------------------------------------------------------------------------
# diffusers AutoencoderRAE


def _import_autoencoder_rae():
    """``diffusers.AutoencoderRAE``, or an ImportError naming diffusers and transformers."""
    try:
        importlib.import_module("transformers")  # AutoencoderRAE builds its encoders from transformers
        from diffusers import AutoencoderRAE
    except ImportError as err:
        raise ImportError(
            "the AutoencoderRAE tokenizer needs the optional packages 'diffusers' (>= 0.36, with "
            "AutoencoderRAE) and 'transformers' (pip install diffusers 'transformers>=4.50'); "
            "other tokenizers do not"
        ) from err
    return AutoencoderRAE


class AutoencoderRAETokenizer(Tokenizer):
    """A frozen diffusers ``AutoencoderRAE`` (RAE, Zheng et al. 2025; Drift-RAE Sec. 4.1) as a tokenizer.

    ``AutoencoderRAE`` takes images in ``[0, 1]``: it resizes them (bicubic) to its
    ``encoder_input_size``, normalizes with its ``encoder_norm_mean`` / ``encoder_norm_std``
    (ImageNet's by default), encodes them into a ``[B, D, g, g]`` token grid (``D =
    encoder_hidden_size``, ``g = encoder_input_size / encoder_patch_size``) and normalizes the
    latent with its ``latents_mean`` / ``latents_std``; its decode returns ``[0, 1]`` images of
    the decoder's ``image_size``. This adapter speaks the library's convention:

    * ``encode``: pixels ``[-1, 1]`` -> ``(x + 1) / 2``; grayscale (``pixel_channels=1``) is
      repeated to 3 channels; ``AutoencoderRAE.encode`` does the resize and normalizations.
    * ``decode``: ``AutoencoderRAE.decode`` -> ``2 y - 1``; grayscale averages the 3 channels;
      if the decoder's output size differs from ``image_size`` it is resized with
      ``F.interpolate`` (bilinear, antialiased; differentiable) so ``decode(encode(x))`` has
      ``x``'s size.
    * ``latent_shape(C, H, W) = (D, g, g)`` for ``(H, W) == image_size``; other sizes are refused,
      since decode could not know which size to return.

    Deterministic (``sample=True`` returns the same latent: the RAE encoder has no posterior; its
    ``noise_tau`` augmentation applies only in training mode, and a tokenizer is always in eval).

    Args:
        rae: a ``diffusers.AutoencoderRAE`` with ``reshape_to_2d=True`` and 3 channels; frozen in place.
        pixel_channels: 3, or 1 for grayscale images; default 3.
        image_size: ``(H, W)`` (or an int) of the pixel images; default the decoder's ``image_size``.
    """

    def __init__(self, rae, *, pixel_channels: int | None = None, image_size=None):
        super().__init__()
        AutoencoderRAE = _import_autoencoder_rae()
        if not isinstance(rae, AutoencoderRAE):
            raise ValueError(f"rae must be a diffusers AutoencoderRAE, got {type(rae).__name__}")
        cfg = rae.config
        if not cfg.reshape_to_2d:
            raise ValueError("rae must have reshape_to_2d=True (latents [B, D, h, w]), got False")
        if int(cfg.num_channels) != 3:
            raise ValueError("rae must have num_channels=3 (its encoder normalization is RGB), "
                             f"got {cfg.num_channels}")
        if pixel_channels is None:
            pixel_channels = 3
        if not _is_int(pixel_channels) or pixel_channels not in (1, 3):
            raise ValueError("pixel_channels must be one of [3, 1] for an AutoencoderRAE, "
                             f"got {pixel_channels!r}")
        native = int(rae.decoder_image_size)
        self.rae = rae
        self.pixel_channels = int(pixel_channels)
        self.rae_channels = 3
        self.image_size = _hw(image_size if image_size is not None else native, "image_size")
        self.decoder_image_size = (native, native)
        self.grid = int(cfg.encoder_input_size) // int(cfg.encoder_patch_size)
        self.latent_channels = int(cfg.encoder_hidden_size)
        self.downsample_factor = max(1, round(self.image_size[0] / self.grid))  # nominal (the RAE resizes)
        self.freeze()

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None, *,
                        pixel_channels: int | None = None, image_size=None,
                        device: str | torch.device = "cpu") -> "AutoencoderRAETokenizer":
        """Load an ``AutoencoderRAE`` saved with ``save_pretrained`` from a LOCAL directory.

        ``path`` (optionally ``path/subfolder``) must hold ``config.json`` of an AutoencoderRAE and
        a ``*.safetensors`` weight file; only safetensors are read and nothing is downloaded
        (``local_files_only=True``). ``pixel_channels`` / ``image_size`` default to what
        :meth:`save_pretrained` recorded in ``drifting_adapter.json`` (if present), else 3 and the
        decoder's size.
        """
        AutoencoderRAE = _import_autoencoder_rae()
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"path: {str(path)!r} is not an existing local directory "
                                    "(AutoencoderRAE weights are never downloaded)")
        d = root / subfolder if subfolder else root
        if subfolder and not d.is_dir():
            raise FileNotFoundError(f"subfolder: {str(subfolder)!r} is not a directory inside {str(root)!r}")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"path: {str(d)!r} has no config.json (write it with "
                                    "rae.save_pretrained)")
        if not any(d.glob("*.safetensors")):
            raise FileNotFoundError(f"path: {str(d)!r} has no *.safetensors weights; only safetensors are "
                                    "loaded (re-save with rae.save_pretrained(..., "
                                    "safe_serialization=True))")
        name = json.loads((d / "config.json").read_text()).get("_class_name")
        if name is not None and name != "AutoencoderRAE":
            raise ValueError(f"path: {str(d)!r} holds a {name}, not an AutoencoderRAE")
        adapter = {}
        if (d / ADAPTER_CONFIG_NAME).is_file():
            adapter = json.loads((d / ADAPTER_CONFIG_NAME).read_text())
        kw = {"low_cpu_mem_usage": False} if importlib.util.find_spec("accelerate") is None else {}
        rae = AutoencoderRAE.from_pretrained(str(root), subfolder=subfolder, local_files_only=True,
                                             use_safetensors=True, **kw)
        tok = cls(rae,
                  pixel_channels=(pixel_channels if pixel_channels is not None
                                  else adapter.get("pixel_channels")),
                  image_size=image_size if image_size is not None else adapter.get("image_size"))
        return tok.to(device)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``rae.save_pretrained(directory, safe_serialization=True)`` plus ``drifting_adapter.json``
        (``pixel_channels``, ``image_size``), which :meth:`from_pretrained` reads back."""
        d = Path(directory)
        self.rae.save_pretrained(str(d), safe_serialization=True)
        meta = {"pixel_channels": self.pixel_channels, "image_size": list(self.image_size)}
        (d / ADAPTER_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    # -- the tokenizer ---------------------------------------------------------

    def encode(self, x, *, sample=False, generator=None):
        """Pixels ``x [B, C, H, W]`` in ``[-1, 1]`` -> latents ``[B, D, g, g]`` in ``x``'s dtype."""
        self._check_pixels(x)
        if generator is not None and not sample:
            raise ValueError("generator is only used with sample=True (the default encode is deterministic)")
        self.latent_shape(x.shape[1], x.shape[2], x.shape[3])  # validates H, W
        dtype = next(self.rae.parameters()).dtype
        h = (x.to(dtype) + 1.0) * 0.5  # [B, C, H, W] in [0, 1], AutoencoderRAE's convention
        if self.pixel_channels != self.rae_channels:
            h = h.expand(-1, self.rae_channels, -1, -1)  # grayscale [B, 1, H, W] -> [B, 3, H, W]
        z = self.rae.encode(h).latent  # [B, D, g, g]
        return z.to(x.dtype)

    def decode(self, z, *, clamp=False):
        """Latents ``z [B, D, g, g]`` -> pixels ``[B, C, H, W]`` (``image_size``) in ``z``'s dtype;
        differentiable."""
        self._check_latents(z)
        if tuple(z.shape[-2:]) != (self.grid, self.grid):
            raise ValueError(f"z must have the latent grid ({self.grid}, {self.grid}), got "
                             f"shape {tuple(z.shape)}")
        dtype = next(self.rae.parameters()).dtype
        y = self.rae.decode(z.to(dtype)).sample  # [B, 3, S, S] in ~[0, 1]
        x = y * 2.0 - 1.0  # [-1, 1]
        if self.pixel_channels != self.rae_channels:
            x = x.mean(dim=1, keepdim=True)  # [B, 3, S, S] -> [B, 1, S, S]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False,
                              antialias=x.shape[-2] > self.image_size[0] or x.shape[-1] > self.image_size[1])
        x = x.to(z.dtype)  # [B, C, H, W]
        return x.clamp(-1.0, 1.0) if clamp else x

    def latent_shape(self, C, H, W):
        if C != self.pixel_channels:
            raise ValueError(f"C must equal pixel_channels={self.pixel_channels}, got {C}")
        if (H, W) != self.image_size:
            raise ValueError(f"H, W must equal the tokenizer's image_size {self.image_size} (decode returns "
                             f"that size; pass image_size= to use another), got H={H}, W={W}")
        return (self.latent_channels, self.grid, self.grid)

    def extra_repr(self) -> str:
        c = self.rae.config
        return (f"encoder_type={c.encoder_type!r}, pixel_channels={self.pixel_channels}, "
                f"latent_channels={self.latent_channels}, grid={self.grid}, image_size={self.image_size}, "
                f"decoder_image_size={self.decoder_image_size}")


def tiny_autoencoder_rae(encoder_type: str = "dinov2", *, encoder_input_size: int = 28, seed: int = 0):
    """A tiny randomly initialised ``AutoencoderRAE`` for tests and CPU demos (nothing is downloaded).

    One encoder layer of width 64 (one head: the transformers encoders use head dim 64), encoder
    patch 14 (``dinov2``) or 7 (``mae``, ``siglip2``) so a ``28x28`` input gives a ``2x2`` /
    ``4x4`` token grid, one decoder layer of width 32 with decoder patch 4. Initialised under
    ``torch.manual_seed(seed)`` without touching the global RNG state; returned in eval mode.
    """
    AutoencoderRAE = _import_autoencoder_rae()
    allowed = ("dinov2", "mae", "siglip2")
    if encoder_type not in allowed:
        raise ValueError(f"encoder_type must be one of {list(allowed)}, got {encoder_type!r}")
    patch = 14 if encoder_type == "dinov2" else 7
    if not _is_int(encoder_input_size) or encoder_input_size % patch:
        raise ValueError(f"encoder_input_size must be a positive multiple of the encoder patch {patch}, "
                         f"got {encoder_input_size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rae = AutoencoderRAE(
            encoder_type=encoder_type, encoder_hidden_size=64, encoder_patch_size=patch,
            encoder_num_hidden_layers=1, decoder_hidden_size=32, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=64, patch_size=4,
            encoder_input_size=encoder_input_size,
        )
    return rae.eval()

"""Optional latent-space tokenizers: where the generator's output lives (paper Sec. 3.4, 4, A.4).

Paper: Deng et al. 2026, "Generative Modeling via Drifting".

* Sec. 4 "Tokenizer": by default generation happens in the latent space of the standard SD-VAE
  (Rombach et al. 2022): a ``256x256x3`` image becomes a ``32x32x4`` latent, and the generator
  ``f_theta`` maps ``32x32x4`` noise to a ``32x32x4`` latent. "Pixel-space generation" (Sec. 4,
  Table 6, B.1) skips the tokenizer: that is :class:`IdentityTokenizer` here.
* Sec. 3.4 "Relation to Latent Generation", Sec. 4 "Feature Extractor" and A.4 (MoCo / SimCLR):
  when the generator is in latent space but the feature encoder ``phi`` works on pixels, the
  tokenizer **decoder** runs before ``phi`` and gradients are back-propagated through ``phi``
  *and* the VAE decoder into the generator. So :meth:`Tokenizer.decode` is never wrapped in
  ``no_grad``: the VAE weights are frozen (``requires_grad=False``, ``eval()``) but the
  decoder stays differentiable with respect to its input ``z``.
* Table 3 / A.3 "latent-MAE": the feature encoder works on latents directly, so no decode is
  needed during training; positives are encoded once (:meth:`Tokenizer.encode_dataset`) and
  cached. A.3 also notes that for the latent setting images are augmented *before* the VAE
  encoder.

Conventions: pixels are ``[B, C, H, W]`` floats in ``[-1, 1]`` (as everywhere in this library);
latents are ``[B, c, h, w]`` with ``c`` the VAE's latent channels and ``h = H / f``,
``w = W / f`` for the VAE's downsampling factor ``f`` (8 for SD-VAE). SD-VAE latents are
``(posterior_mean - shift_factor) * scaling_factor`` with ``scaling_factor = 0.18215`` and no
shift, as in latent diffusion.

Drift-RAE's spaces (:mod:`drifting.models.rae`): ``"rae:DIR"`` is the small representation
autoencoder of this library (frozen ResNet-MAE tokens + trained decoder, ``drifting train-rae``) and
``"autoencoder-rae:DIR"`` a diffusers ``AutoencoderRAE`` (DINOv2 / SigLIP2 / MAE encoder); the
reconstruction VAE of ``drifting train-vae`` is an ``"autoencoderkl:DIR"``.

``diffusers`` is optional (not a core dependency): it is imported lazily, only when an
:class:`AutoencoderKLTokenizer` is built. Weights are read only from a local directory, only
from ``*.safetensors`` files, and nothing is ever downloaded.
"""

from __future__ import annotations

import abc
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "Tokenizer",
    "IdentityTokenizer",
    "AutoencoderKLTokenizer",
    "tiny_autoencoder_kl",
]

def _import_autoencoder_kl():
    """``diffusers.AutoencoderKL``, or an ImportError that says how to get it."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:  # diffusers is not a core dependency
        raise ImportError(
            "latent-space tokenizers need the optional package 'diffusers' "
            "(pip install diffusers); pixel-space training (tokenizer None / 'pixel') does not"
        ) from err
    return AutoencoderKL


# -----------------------------------------------------------------------------
# Interface


class Tokenizer(nn.Module, abc.ABC):
    """A frozen map between pixels ``[B, C, H, W]`` in ``[-1, 1]`` and latents ``[B, c, h, w]``.

    Subclasses implement :meth:`encode`, :meth:`decode` and :meth:`latent_shape` and set
    ``pixel_channels`` (``C``), ``latent_channels`` (``c``) and ``downsample_factor`` (``f``).
    A tokenizer is always frozen: its parameters have ``requires_grad=False`` and it stays in
    eval mode even if a parent module calls ``.train()``. :meth:`decode` is nevertheless
    differentiable w.r.t. ``z`` so the drifting loss of a pixel-space feature encoder reaches a
    latent-space generator (Sec. 3.4, A.4).
    """

    pixel_channels: int
    latent_channels: int
    downsample_factor: int

    def freeze(self) -> "Tokenizer":
        """Set ``requires_grad=False`` on every parameter and switch to eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "Tokenizer":
        """Always eval: a tokenizer is frozen, so ``.train()`` is ignored (``mode`` is unused)."""
        return super().train(False)

    @abc.abstractmethod
    def encode(self, x: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels ``x [B, C, H, W]`` in ``[-1, 1]`` -> latents ``z [B, c, h, w]``.

        Deterministic by default (the posterior mean); ``sample=True`` draws from the
        posterior using ``generator``.
        """
        ...

    @abc.abstractmethod
    def decode(self, z: torch.Tensor, *, clamp: bool = False) -> torch.Tensor:
        """Latents ``z [B, c, h, w]`` -> pixels ``[B, C, H, W]``, nominally in ``[-1, 1]``.

        Differentiable w.r.t. ``z``. Not clamped by default (clamping would zero the gradient
        of saturated pixels); ``clamp=True`` clamps to ``[-1, 1]`` for display / evaluation.
        """
        ...

    @abc.abstractmethod
    def latent_shape(self, C: int, H: int, W: int) -> tuple[int, int, int]:
        """The latent shape ``(c, h, w)`` for pixel images of shape ``(C, H, W)``."""
        ...

    @torch.no_grad()
    def encode_dataset(self, images, *, batch: int = 256, progress: bool = False) -> torch.Tensor:
        """Encode a whole uint8 image array in chunks (to cache positives once; Table 3, A.3).

        Args:
            images: ``uint8`` numpy array or tensor ``[N, H, W, C]`` (``[N, H, W]`` is read as
                ``C = 1``), values 0..255; pixel ``v`` maps to ``v / 127.5 - 1`` as in
                :meth:`drifting.data.images.ImageDataset.to_tensor`.
            batch: images per encoder call (>= 1); only memory use depends on it.
            progress: show a tqdm bar.

        Returns:
            float32 CPU tensor ``[N, c, h, w]`` of posterior-mean latents.
        """
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a uint8 numpy array or tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must have dtype uint8 (values 0..255), got {images.dtype}")
        if images.ndim == 3:
            images = images.unsqueeze(-1)  # [N, H, W] -> [N, H, W, 1]
        if images.ndim != 4:
            raise ValueError(f"images must have shape [N, H, W, C] (or [N, H, W]), got {tuple(images.shape)}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        N, H, W, C = images.shape
        c, h, w = self.latent_shape(C, H, W)  # validates C, H, W
        out = torch.empty(N, c, h, w, dtype=torch.float32)  # [N, c, h, w]
        device = _module_device(self)
        starts = range(0, N, batch)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        for s in starts:
            chunk = images[s:s + batch].to(device)  # [b, H, W, C] uint8
            x = chunk.movedim(-1, 1).to(torch.float32) / 127.5 - 1.0  # [b, C, H, W] in [-1, 1]
            out[s:s + batch] = self.encode(x).float().cpu()
        return out

    def _check_pixels(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a tensor [B, C, H, W], got {_describe(x)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor in [-1, 1], got dtype {x.dtype} "
                             "(use encode_dataset for uint8 images)")
        if x.shape[1] != self.pixel_channels:
            raise ValueError(f"x must have pixel_channels={self.pixel_channels} channels, "
                             f"got shape {tuple(x.shape)}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.ndim != 4:
            raise ValueError(f"z must be a tensor [B, c, h, w], got {_describe(z)}")
        if z.shape[1] != self.latent_channels:
            raise ValueError(f"z must have latent_channels={self.latent_channels} channels, "
                             f"got shape {tuple(z.shape)}")


def _describe(t) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _module_device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# -----------------------------------------------------------------------------
# Pixel space


class IdentityTokenizer(Tokenizer):
    """Pixel-space generation (Sec. 4 "Pixel-space Generation", Table 6): encode/decode are identity."""

    def __init__(self, pixel_channels: int = 3):
        super().__init__()
        if isinstance(pixel_channels, bool) or not isinstance(pixel_channels, int) or pixel_channels < 1:
            raise ValueError(f"pixel_channels must be an integer >= 1, got {pixel_channels!r}")
        self.pixel_channels = pixel_channels
        self.latent_channels = pixel_channels
        self.downsample_factor = 1
        self.freeze()

    def encode(self, x, *, sample=False, generator=None):
        """Returns ``x`` itself (``[B, C, H, W]``); the "posterior" is a point mass, so a sample is ``x``
        too."""
        self._check_pixels(x)
        if generator is not None and not sample:
            raise ValueError("generator is only used with sample=True (the default encode is deterministic)")
        return x

    def decode(self, z, *, clamp=False):
        """Returns ``z`` itself (``[B, C, H, W]``), clamped to ``[-1, 1]`` if ``clamp``."""
        self._check_latents(z)
        return z.clamp(-1.0, 1.0) if clamp else z

    def latent_shape(self, C, H, W):
        if C != self.pixel_channels:
            raise ValueError(f"C must equal pixel_channels={self.pixel_channels}, got {C}")
        return (C, H, W)

    def extra_repr(self) -> str:
        return f"pixel_channels={self.pixel_channels}"


# -----------------------------------------------------------------------------
# KL autoencoder (SD-VAE)


class AutoencoderKLTokenizer(Tokenizer):
    """A frozen diffusers ``AutoencoderKL`` (e.g. SD-VAE, Sec. 4 "Tokenizer") as a tokenizer.

    ``encode``: ``z = (mean - shift_factor) * scaling_factor`` where ``mean`` is the posterior
    mean of ``vae.encode`` (or a posterior sample with ``sample=True``). ``decode`` inverts the
    affine map and runs ``vae.decode``, with gradients flowing to ``z`` (Sec. 3.4, A.4).

    Args:
        vae: a ``diffusers.AutoencoderKL``; it is frozen in place (``requires_grad=False``, eval).
        pixel_channels: channels ``C`` of the pixel images; default ``vae.config.in_channels``.
            ``1`` with a 3-channel VAE repeats grayscale inputs to 3 channels in ``encode`` and
            averages the 3 decoded channels back to 1 in ``decode``.
        scaling_factor: default ``vae.config.scaling_factor`` (0.18215 for SD-VAE).
        shift_factor: default ``vae.config.shift_factor``, or 0 when that is None (SD-VAE).
    """

    def __init__(self, vae, *, pixel_channels: int | None = None, scaling_factor: float | None = None,
                 shift_factor: float | None = None):
        super().__init__()
        AutoencoderKL = _import_autoencoder_kl()
        if not isinstance(vae, AutoencoderKL):
            raise ValueError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        cfg = vae.config
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"vae must have in_channels == out_channels, got {cfg.in_channels} "
                             f"and {cfg.out_channels}")
        vae_channels = int(cfg.in_channels)
        if pixel_channels is None:
            pixel_channels = vae_channels
        allowed = [vae_channels] + ([1] if vae_channels == 3 else [])
        if (isinstance(pixel_channels, bool) or not isinstance(pixel_channels, int)
                or pixel_channels not in allowed):
            raise ValueError(f"pixel_channels must be one of {allowed} for a VAE with "
                             f"{vae_channels} input channels, got {pixel_channels!r}")
        if scaling_factor is None:
            scaling_factor = getattr(cfg, "scaling_factor", None)
            scaling_factor = 1.0 if scaling_factor is None else scaling_factor
        if shift_factor is None:
            shift_factor = getattr(cfg, "shift_factor", None)
            shift_factor = 0.0 if shift_factor is None else shift_factor
        scaling_factor, shift_factor = float(scaling_factor), float(shift_factor)
        if not math.isfinite(scaling_factor) or scaling_factor == 0.0:
            raise ValueError(f"scaling_factor must be finite and non-zero, got {scaling_factor}")
        if not math.isfinite(shift_factor):
            raise ValueError(f"shift_factor must be finite, got {shift_factor}")

        self.vae = vae
        self.pixel_channels = int(pixel_channels)
        self.vae_channels = vae_channels
        self.latent_channels = int(cfg.latent_channels)
        # Each down block but the last halves H and W (diffusers Encoder): f = 2^(blocks - 1),
        # 8 for SD-VAE's 4 blocks, 2 for tiny_autoencoder_kl's 2 blocks.
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.freeze()

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None, *,
                        pixel_channels: int | None = None, scaling_factor: float | None = None,
                        shift_factor: float | None = None,
                        device: str | torch.device = "cpu") -> "AutoencoderKLTokenizer":
        """Load an ``AutoencoderKL`` saved with ``save_pretrained`` from a LOCAL directory.

        ``path`` (optionally ``path/subfolder``) must hold ``config.json`` and a
        ``*.safetensors`` weight file; only safetensors are read and nothing is downloaded
        (``local_files_only=True``). When ``subfolder`` is None and ``path`` has no
        ``config.json`` but ``path/vae/config.json`` exists (a full Stable Diffusion
        checkout), the ``vae`` subfolder is used.
        """
        AutoencoderKL = _import_autoencoder_kl()
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"path: {str(path)!r} is not an existing local directory "
                                    "(AutoencoderKL weights are never downloaded)")
        if (subfolder is None and not (root / "config.json").is_file()
                and (root / "vae" / "config.json").is_file()):
            subfolder = "vae"
        d = root / subfolder if subfolder else root
        if subfolder and not d.is_dir():
            raise FileNotFoundError(f"subfolder: {str(subfolder)!r} is not a directory inside {str(root)!r}")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"path: {str(d)!r} has no config.json (write it with "
                                    "vae.save_pretrained)")
        if not any(d.glob("*.safetensors")):
            raise FileNotFoundError(f"path: {str(d)!r} has no *.safetensors weights; only safetensors are "
                                    "loaded (re-save with vae.save_pretrained(..., "
                                    "safe_serialization=True))")
        vae = AutoencoderKL.from_pretrained(str(root), subfolder=subfolder, local_files_only=True,
                                            use_safetensors=True)
        tok = cls(vae, pixel_channels=pixel_channels, scaling_factor=scaling_factor,
                  shift_factor=shift_factor)
        return tok.to(device)

    # -- the tokenizer ---------------------------------------------------------

    def encode(self, x, *, sample=False, generator=None):
        """Pixels ``x [B, C, H, W]`` in ``[-1, 1]`` -> latents ``[B, c, H/f, W/f]`` in ``x``'s dtype."""
        self._check_pixels(x)
        if generator is not None and not sample:
            raise ValueError("generator is only used with sample=True (the default encode "
                             "is the posterior mean)")
        self.latent_shape(x.shape[1], x.shape[2], x.shape[3])  # validates H, W
        dtype = next(self.vae.parameters()).dtype
        h = x.to(dtype)  # [B, C, H, W]
        if self.pixel_channels != self.vae_channels:
            h = h.expand(-1, self.vae_channels, -1, -1)  # grayscale [B, 1, H, W] -> [B, 3, H, W]
        posterior = self.vae.encode(h).latent_dist
        m = posterior.sample(generator=generator) if sample else posterior.mean  # [B, c, h, w]
        return ((m - self.shift_factor) * self.scaling_factor).to(x.dtype)

    def decode(self, z, *, clamp=False):
        """Latents ``z [B, c, h, w]`` -> pixels ``[B, C, h*f, w*f]`` in ``z``'s dtype; differentiable in
        ``z``."""
        self._check_latents(z)
        dtype = next(self.vae.parameters()).dtype
        m = z.to(dtype) / self.scaling_factor + self.shift_factor  # [B, c, h, w], VAE units
        x = self.vae.decode(m).sample  # [B, C_vae, H, W]
        if self.pixel_channels != self.vae_channels:
            x = x.mean(dim=1, keepdim=True)  # [B, 3, H, W] -> [B, 1, H, W]
        x = x.to(z.dtype)
        return x.clamp(-1.0, 1.0) if clamp else x

    def latent_shape(self, C, H, W):
        f = self.downsample_factor
        if C != self.pixel_channels:
            raise ValueError(f"C must equal pixel_channels={self.pixel_channels}, got {C}")
        if H % f or W % f or H < f or W < f:
            raise ValueError(f"H and W must be positive multiples of the VAE's downsampling factor {f}, "
                             f"got H={H}, W={W}")
        return (self.latent_channels, H // f, W // f)

    def extra_repr(self) -> str:
        return (f"pixel_channels={self.pixel_channels}, latent_channels={self.latent_channels}, "
                f"downsample_factor={self.downsample_factor}, scaling_factor={self.scaling_factor}, "
                f"shift_factor={self.shift_factor}")


def tiny_autoencoder_kl(in_channels: int = 3, latent_channels: int = 4, seed: int = 0):
    """A tiny randomly initialised ``AutoencoderKL`` (~44k parameters) for tests and CPU demos.

    Two encoder/decoder blocks of widths (8, 16), one resnet layer each, GroupNorm with 4
    groups, SD-VAE's mid-block attention, ``scaling_factor`` 0.18215 (the diffusers default).
    Its downsampling factor is **2** (one downsample per block but the last): ``28x28 -> 14x14``,
    ``32x32 -> 16x16``. Initialised under ``torch.manual_seed(seed)`` without touching the
    global RNG state. Returned in eval mode, not frozen (the tokenizer freezes it).
    """
    AutoencoderKL = _import_autoencoder_kl()
    for name, v in (("in_channels", in_channels), ("latent_channels", latent_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=4,
            sample_size=32,
        )
    return vae.eval()

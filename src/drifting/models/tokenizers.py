"""The tokenizer registry: :func:`build_tokenizer` turns a spec string of a config or a command line into
a :class:`~drifting.models.tokenizer.Tokenizer` (pixels, an SD-VAE, or an RAE of :mod:`drifting.models.rae`).
Apart from both, so that neither imports the other's factory."""

from __future__ import annotations

import torch

from .rae import AutoencoderRAETokenizer, RAETokenizer
from .tokenizer import AutoencoderKLTokenizer, IdentityTokenizer, Tokenizer

# the spec forms build_tokenizer accepts (named in its error messages and the CLI's help)
TOKENIZER_SPECS = ("None", "'none'", "'pixel'", "'sd-vae:PATH'", "'autoencoderkl:PATH'", "'rae:PATH'",
                   "'autoencoder-rae:PATH'")


def build_tokenizer(spec: str | None, *, pixel_channels: int,
                    device: str | torch.device = "cpu") -> Tokenizer:
    """A tokenizer from a spec string (for CLIs / configs).

    * ``None``, ``"none"``, ``"pixel"`` -> :class:`IdentityTokenizer` (pixel-space generation).
    * ``"sd-vae:PATH"`` or ``"autoencoderkl:PATH"`` -> :meth:`AutoencoderKLTokenizer.from_pretrained`
      on the local directory ``PATH`` (everything after the first ``:``).
    * ``"rae:PATH"`` -> :meth:`drifting.models.rae.RAETokenizer.from_pretrained` (the small-scale
      RAE on a frozen ResNet-MAE encoder, written by ``drifting train-rae``); its pixel channels
      are fixed by the export and must equal ``pixel_channels``.
    * ``"autoencoder-rae:PATH"`` -> :meth:`drifting.models.rae.AutoencoderRAETokenizer.from_pretrained`
      (a local diffusers ``AutoencoderRAE``; needs ``diffusers`` and ``transformers``).
    """
    allowed = ", ".join(TOKENIZER_SPECS)
    if spec is None:
        return IdentityTokenizer(pixel_channels)
    if not isinstance(spec, str):
        raise ValueError(f"spec must be a string or None (one of {allowed}), got {type(spec).__name__}")
    s = spec.strip()
    if s.lower() in ("none", "pixel"):
        return IdentityTokenizer(pixel_channels)
    kind, sep, path = s.partition(":")
    if sep and kind.strip().lower() in ("sd-vae", "autoencoderkl"):
        if not path.strip():
            raise ValueError(f"spec: {spec!r} names no PATH; allowed forms are {allowed}")
        return AutoencoderKLTokenizer.from_pretrained(path.strip(), pixel_channels=pixel_channels,
                                                      device=device)
    if sep and kind.strip().lower() in ("rae", "autoencoder-rae", "autoencoderrae"):
        if not path.strip():
            raise ValueError(f"spec: {spec!r} names no PATH; allowed forms are {allowed}")
        if kind.strip().lower() != "rae":
            return AutoencoderRAETokenizer.from_pretrained(path.strip(), pixel_channels=pixel_channels,
                                                           device=device)
        tok = RAETokenizer.from_pretrained(path.strip(), device=device)
        if tok.pixel_channels != pixel_channels:
            raise ValueError(f"pixel_channels: the RAE at {path.strip()!r} maps {tok.pixel_channels}-channel "
                             f"images, got pixel_channels={pixel_channels}")
        return tok
    raise ValueError(f"spec: unknown tokenizer {spec!r}; allowed forms are {allowed}")

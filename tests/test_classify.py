"""Classifier-based monitoring: the Fréchet distance formula and a short classifier on real data."""

import numpy as np
import pytest
import torch

from drifting.data.images import load_fashion_mnist
from drifting.eval.frechet import frechet_distance
from drifting.models.classifier import SmallCNN
from drifting.recipes.classify import classifier_report, train_classifier


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 3
    a = (torch.randn(n, d, generator=g, dtype=torch.float64)
         * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    b = (torch.randn(n, d, generator=g, dtype=torch.float64)
         * torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64) + 1.0)
    # diagonal Gaussians: ||mu1 - mu2||^2 + sum (s1 - s2)^2 = 3 + (4 + 1 + 0) = 8
    assert abs(frechet_distance(a, b) - 8.0) < 0.1
    assert abs(frechet_distance(a, a)) < 1e-8
    assert abs(frechet_distance(a, b) - frechet_distance(b, a)) < 1e-8
    with pytest.raises(ValueError, match="f1 and f2"):
        frechet_distance(a, b[:, :2])


def test_frechet_distance_full_covariance_against_eigen_formula():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(5000, 4, generator=g, dtype=torch.float64) @ A
    y = torch.randn(5000, 4, generator=g, dtype=torch.float64) @ A.T + 0.3
    s1, s2 = torch.cov(x.T), torch.cov(y.T)
    # tr sqrt(S1 S2) via the eigenvalues of S1 S2 (real and >= 0 for PSD S1, S2)
    tr = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    ref = (x.mean(0) - y.mean(0)).square().sum() + s1.trace() + s2.trace() - 2 * tr
    assert abs(frechet_distance(x, y) - ref.item()) < 1e-6 * max(1.0, ref.item())


def test_short_classifier_on_fashion_mnist_and_report():
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    model = train_classifier(train, steps=150, batch=64)
    ref = test.subset(np.arange(2000, 4000))  # a smaller reference keeps the test fast
    assert isinstance(model, SmallCNN)
    sub = test.subset(np.arange(1000))
    # real test images as "samples": high accuracy, FID near the train-vs-test floor
    rep = classifier_report(model, sub.images, sub.labels, ref, train)
    assert rep["accuracy"] > 0.6 and rep["classifier_test_accuracy"] > 0.6
    assert rep["classifier_fid"] < 3 * rep["floor_classifier_fid"] + 1e-3
    per = rep["per_class_accuracy"]  # the class-weighted mean of the per-class accuracies is the accuracy
    counts = np.bincount(sub.labels, minlength=10)
    assert len(per) == 10 and abs(np.dot(per, counts) / counts.sum() - rep["accuracy"]) < 1e-9
    # the images of class 1 labelled as class 0 (and no sample of class 9): class 0's accuracy falls
    ones = sub.images[sub.labels == 1]
    mixed = classifier_report(model, ones, np.zeros(len(ones), dtype=int), ref)
    per_mixed = mixed["per_class_accuracy"]
    assert per_mixed[0] == mixed["accuracy"] < 0.2 and per_mixed[9] is None
    # noise images: chance-level accuracy and a much larger distance
    noise = np.random.default_rng(0).integers(0, 256, size=(500, 28, 28, 1), dtype=np.uint8)
    bad = classifier_report(model, noise, np.arange(500) % 10, ref)
    assert bad["accuracy"] < 0.3
    assert bad["classifier_fid"] > 10 * rep["classifier_fid"]

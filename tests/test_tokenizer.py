"""Latent-space tokenizers (paper Sec. 3.4, 4 "Tokenizer", A.4): shapes, scaling, gradients, I/O.

All VAEs here are tiny random ``AutoencoderKL``s built in-process; nothing is downloaded.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from drifting.models.tokenizer import (
    AutoencoderKLTokenizer,
    IdentityTokenizer,
    Tokenizer,
    tiny_autoencoder_kl,
)
from drifting.models.tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def vae3():
    return tiny_autoencoder_kl(in_channels=3, latent_channels=4, seed=0)


@pytest.fixture(scope="module")
def tok3(vae3):
    return AutoencoderKLTokenizer(vae3)


def images(B, C, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g) * 2 - 1  # [B, C, H, W] in [-1, 1]


# -----------------------------------------------------------------------------
# Optional dependency


def test_importing_module_does_not_import_diffusers():
    code = "import sys, drifting.models.tokenizer; assert 'diffusers' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_missing_diffusers_raises_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ImportError, match="pip install diffusers"):
        tiny_autoencoder_kl()
    with pytest.raises(ImportError, match="pip install diffusers"):
        build_tokenizer("sd-vae:/some/dir", pixel_channels=3)
    assert isinstance(build_tokenizer("pixel", pixel_channels=3), IdentityTokenizer)  # still fine


# -----------------------------------------------------------------------------
# Pixel space


def test_identity_tokenizer_is_identity():
    tok = IdentityTokenizer(pixel_channels=1)
    x = images(2, 1, 28, 28).requires_grad_(True)
    assert tok.encode(x) is x
    assert tok.encode(x, sample=True, generator=torch.Generator()) is x
    assert tok.decode(x) is x
    tok.decode(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert tok.latent_shape(1, 28, 28) == (1, 28, 28)
    assert (tok.pixel_channels, tok.latent_channels, tok.downsample_factor) == (1, 1, 1)
    big = torch.full((1, 1, 2, 2), 3.0)
    assert tok.decode(big, clamp=True).max().item() == 1.0
    with pytest.raises(ValueError, match="pixel_channels=1"):
        tok.encode(images(2, 3, 28, 28))
    with pytest.raises(ValueError, match="C must equal pixel_channels"):
        tok.latent_shape(3, 28, 28)
    with pytest.raises(ValueError, match="generator"):
        tok.encode(x, generator=torch.Generator())
    with pytest.raises(ValueError, match="pixel_channels"):
        IdentityTokenizer(pixel_channels=0)


def test_identity_encode_dataset_matches_library_pixel_convention():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)  # [N, H, W, C]
    out = IdentityTokenizer(3).encode_dataset(u8, batch=2)
    want = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, C, H, W]
    assert out.shape == (5, 3, 6, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, want)
    gray = IdentityTokenizer(1).encode_dataset(u8[..., 0], batch=3)  # [N, H, W] read as C = 1
    torch.testing.assert_close(gray, want[:, :1])


@pytest.mark.parametrize("spec", [None, "none", "pixel", " Pixel "])
def test_build_tokenizer_pixel_specs(spec):
    tok = build_tokenizer(spec, pixel_channels=1)
    assert isinstance(tok, IdentityTokenizer) and tok.pixel_channels == 1


@pytest.mark.parametrize("spec", ["", "vae", "vqgan:/tmp/x", "sd-vae:", "sd-vae:  ", "sd-vae", "pixels"])
def test_build_tokenizer_bad_spec(spec):
    with pytest.raises(ValueError,
                       match=r"spec: .*allowed forms are .*'pixel'.*'sd-vae:PATH'.*'autoencoderkl:PATH'"):
        build_tokenizer(spec, pixel_channels=3)


def test_build_tokenizer_non_string_spec():
    with pytest.raises(ValueError, match="spec must be a string or None"):
        build_tokenizer(3, pixel_channels=3)


# -----------------------------------------------------------------------------
# AutoencoderKL: shapes and scaling


@pytest.mark.parametrize("C,H", [(1, 28), (3, 32)])
def test_autoencoder_kl_shapes(C, H):
    tok = AutoencoderKLTokenizer(tiny_autoencoder_kl(in_channels=C, latent_channels=4))
    assert (tok.pixel_channels, tok.latent_channels, tok.downsample_factor) == (C, 4, 2)
    x = images(2, C, H, H)
    z = tok.encode(x)
    assert z.shape == (2, 4, H // 2, H // 2) == (2, *tok.latent_shape(C, H, H))
    y = tok.decode(z)
    assert y.shape == (2, C, H, H) and y.dtype == x.dtype
    assert tok.decode(z * 50, clamp=True).abs().max().item() <= 1.0


def test_latent_shape_rejects_sizes_the_vae_cannot_invert(tok3):
    with pytest.raises(ValueError, match="downsampling factor 2"):
        tok3.latent_shape(3, 27, 28)
    with pytest.raises(ValueError, match="downsampling factor 2"):
        tok3.encode(images(1, 3, 27, 28))
    with pytest.raises(ValueError, match="pixel_channels=3"):
        tok3.latent_shape(1, 28, 28)
    with pytest.raises(ValueError, match="latent_channels=4"):
        tok3.decode(torch.zeros(1, 3, 14, 14))
    with pytest.raises(ValueError, match="floating"):
        tok3.encode(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))


def test_grayscale_repeat_and_average_on_a_3_channel_vae(vae3, tok3):
    tok1 = AutoencoderKLTokenizer(vae3, pixel_channels=1)
    assert tok1.latent_shape(1, 28, 28) == (4, 14, 14)
    x1 = images(2, 1, 28, 28)
    z1 = tok1.encode(x1)
    torch.testing.assert_close(z1, tok3.encode(x1.repeat(1, 3, 1, 1)))
    y1 = tok1.decode(z1)
    assert y1.shape == (2, 1, 28, 28)
    torch.testing.assert_close(y1, tok3.decode(z1).mean(dim=1, keepdim=True))


def test_scaling_and_shift_match_vae_encode_directly(vae3):
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        mean = vae3.encode(x).latent_dist.mean  # [2, 4, 16, 16]
    tok = AutoencoderKLTokenizer(vae3, scaling_factor=0.5, shift_factor=0.1)
    z = tok.encode(x)
    torch.testing.assert_close(z, (mean - 0.1) * 0.5)
    with torch.no_grad():
        want = vae3.decode(z / 0.5 + 0.1).sample
    torch.testing.assert_close(tok.decode(z), want)
    # The scaling is not a no-op: unscaled decode of the same z differs.
    assert not torch.allclose(tok.decode(z), vae3.decode(z).sample, atol=1e-4)


def test_scaling_defaults_come_from_vae_config():
    vae = tiny_autoencoder_kl()
    tok = AutoencoderKLTokenizer(vae)
    assert tok.scaling_factor == pytest.approx(0.18215) and tok.shift_factor == 0.0  # SD-VAE values
    vae.register_to_config(scaling_factor=0.3, shift_factor=0.25)
    tok = AutoencoderKLTokenizer(vae)
    assert (tok.scaling_factor, tok.shift_factor) == (pytest.approx(0.3), pytest.approx(0.25))
    x = images(1, 3, 16, 16)
    torch.testing.assert_close(tok.encode(x), (vae.encode(x).latent_dist.mean - 0.25) * 0.3)


def test_constructor_validation(vae3):
    with pytest.raises(ValueError, match=r"pixel_channels must be one of \[3, 1\]"):
        AutoencoderKLTokenizer(vae3, pixel_channels=2)
    with pytest.raises(ValueError, match="scaling_factor"):
        AutoencoderKLTokenizer(vae3, scaling_factor=0.0)
    with pytest.raises(ValueError, match="shift_factor"):
        AutoencoderKLTokenizer(vae3, shift_factor=float("nan"))
    with pytest.raises(ValueError, match="vae must be a diffusers AutoencoderKL"):
        AutoencoderKLTokenizer(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=r"pixel_channels must be one of \[1\]"):
        AutoencoderKLTokenizer(tiny_autoencoder_kl(in_channels=1), pixel_channels=3)


def test_posterior_sampling_uses_the_generator(tok3):
    x = images(2, 3, 16, 16)
    a = tok3.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = tok3.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    c = tok3.encode(x, sample=True, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, tok3.encode(x))
    torch.testing.assert_close(tok3.encode(x), tok3.encode(x))  # the default is deterministic
    with pytest.raises(ValueError, match="generator is only used with sample=True"):
        tok3.encode(x, generator=torch.Generator())


# -----------------------------------------------------------------------------
# Frozen, but differentiable w.r.t. z


def test_decode_gradients_reach_z_and_generator_but_not_vae(tok3):
    assert all(not p.requires_grad for p in tok3.parameters())
    tok3.train()  # a parent's .train() must not unfreeze BN/dropout-like behaviour
    assert not tok3.training and not tok3.vae.training
    gen = nn.Conv2d(4, 4, 3, padding=1)  # stands in for the latent-space generator f_theta
    eps = torch.randn(2, 4, 14, 14)
    z = gen(eps)  # [2, 4, 14, 14]
    z.retain_grad()
    x = tok3.decode(z)  # [2, 3, 28, 28]
    assert x.requires_grad
    (x ** 2).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tok3.parameters())


def test_decode_gradient_matches_finite_difference():
    z = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    tok = AutoencoderKLTokenizer(tiny_autoencoder_kl(seed=3).double())
    w = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    f = lambda t: (tok.decode(t) * w).sum()  # noqa: E731
    zr = z.clone().requires_grad_(True)
    f(zr).backward()
    d = torch.zeros_like(z)
    d[0, 1, 2, 3] = 1e-6
    fd = (f(z + d) - f(z - d)) / 2e-6
    assert abs(fd.item() - zr.grad[0, 1, 2, 3].item()) < 1e-5 * max(1.0, abs(fd.item()))


# -----------------------------------------------------------------------------
# Dataset encoding


def test_encode_dataset_chunked_equals_one_shot(tok3):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)  # [N, H, W, C]
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, C, H, W]
    with torch.no_grad():
        one_shot = tok3.encode(x)
    chunked = tok3.encode_dataset(u8, batch=2)
    assert chunked.shape == (5, 4, 8, 8) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, one_shot, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok3.encode_dataset(torch.from_numpy(u8), batch=5), one_shot, atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        tok3.encode_dataset(u8.astype(np.float32))
    with pytest.raises(ValueError, match="batch"):
        tok3.encode_dataset(u8, batch=0)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        tok3.encode_dataset(u8[None])


# -----------------------------------------------------------------------------
# Local save / load (safetensors only, no network)


def test_save_then_from_pretrained_local_gives_identical_outputs(tmp_path, vae3, tok3):
    vae3.save_pretrained(tmp_path / "vae")
    assert list((tmp_path / "vae").glob("*.safetensors"))
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["block_out_channels"] == [8, 16]
    x = images(2, 3, 16, 16)
    z = tok3.encode(x)
    loaded = [
        AutoencoderKLTokenizer.from_pretrained(tmp_path / "vae"),
        AutoencoderKLTokenizer.from_pretrained(str(tmp_path), subfolder="vae"),
        AutoencoderKLTokenizer.from_pretrained(tmp_path),  # a checkout with a vae/ subfolder
        build_tokenizer(f"sd-vae:{tmp_path / 'vae'}", pixel_channels=3),
        build_tokenizer(f"AutoencoderKL:{tmp_path}", pixel_channels=3),
    ]
    for tok in loaded:
        assert isinstance(tok, AutoencoderKLTokenizer) and isinstance(tok, Tokenizer)
        assert all(not p.requires_grad for p in tok.parameters()) and not tok.training
        assert tok.scaling_factor == tok3.scaling_factor
        torch.testing.assert_close(tok.encode(x), z, rtol=0, atol=0)
        torch.testing.assert_close(tok.decode(z), tok3.decode(z), rtol=0, atol=0)
    gray = build_tokenizer(f"sd-vae:{tmp_path}", pixel_channels=1)
    assert gray.pixel_channels == 1 and gray.decode(z).shape == (2, 1, 16, 16)


def test_from_pretrained_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: .*not an existing local directory"):
        AutoencoderKLTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="path: .*not an existing local directory"):
        build_tokenizer(f"sd-vae:{tmp_path / 'nope'}", pixel_channels=3)
    with pytest.raises(FileNotFoundError, match="subfolder: 'vae'"):
        AutoencoderKLTokenizer.from_pretrained(tmp_path, subfolder="vae")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AutoencoderKLTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        AutoencoderKLTokenizer.from_pretrained(tmp_path)


def test_tiny_autoencoder_kl_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = tiny_autoencoder_kl(seed=0), tiny_autoencoder_kl(seed=0), tiny_autoencoder_kl(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert sum(p.numel() for p in a.parameters()) < 100_000


def test_from_pretrained_asks_diffusers_for_local_safetensors_only(tmp_path, vae3, monkeypatch):
    from diffusers import AutoencoderKL

    vae3.save_pretrained(tmp_path)
    seen = {}
    real = AutoencoderKL.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(spy))
    AutoencoderKLTokenizer.from_pretrained(tmp_path)
    assert seen.get("local_files_only") is True and seen.get("use_safetensors") is True

"""Diffusion Policy's conditional 1-D U-Net (drifting.policy.unet): shapes, conditioning, errors,
gradient coverage, export round trip, determinism. Tiny widths so the whole file runs in seconds on CPU."""

import pytest
import torch

from drifting.policy.unet import ConditionalUnet1D, UNet1DConfig

TINY = dict(action_dim=2, cond_dim=10, down_dims=(16, 32, 64), n_groups=8, time_embed_dim=16)


def make(seed: int = 0, **overrides) -> ConditionalUnet1D:
    torch.manual_seed(seed)
    return ConditionalUnet1D(UNet1DConfig(**{**TINY, **overrides}))


def inputs(B: int = 3, T: int = 16, action_dim: int = 2, cond_dim: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, action_dim, generator=g), torch.randn(B, cond_dim, generator=g)


@pytest.mark.parametrize("T", [16, 8])
@pytest.mark.parametrize("overrides", [
    {},  # diffusion policy: time input, FiLM scale + bias
    {"time_embed_dim": 0},  # drifting policy: no time input
    {"time_embed_dim": 0, "cond_predict_scale": False, "down_dims": (16, 32), "kernel_size": 3,
     "action_dim": 5},
    {"down_dims": (8,), "n_groups": 4},  # a single level: no down/up-sampling
])
def test_output_shape_and_nonzero_at_init(overrides, T):
    model = make(**overrides)
    a = model.config.action_dim
    sample, cond = inputs(T=T, action_dim=a)
    t = torch.tensor([0, 5, 99]) if model.config.time_embed_dim else None
    out = model(sample, cond, t)
    assert out.shape == (3, T, a) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() > 1e-3


def test_scalar_timestep_equals_broadcast_tensor():
    model = make().eval()
    sample, cond = inputs()
    ref = model(sample, cond, torch.full((3,), 7))
    for t in (7, 7.0, torch.tensor(7), torch.tensor(7.0)):
        torch.testing.assert_close(model(sample, cond, t), ref)


def test_conditioning_and_timestep_change_the_output():
    model = make().eval()
    sample, cond = inputs()
    out = model(sample, cond, 10)
    assert not torch.allclose(model(sample, cond + 0.5, 10), out, atol=1e-5)
    assert not torch.allclose(model(sample, cond, 50), out, atol=1e-5)
    assert not torch.allclose(model(sample + 0.5, cond, 10), out, atol=1e-5)
    # per-sample conditioning: changing the cond of sample 0 only changes output 0
    cond2 = cond.clone()
    cond2[0] += 1.0
    out2 = model(sample, cond2, 10)
    assert not torch.allclose(out2[0], out[0], atol=1e-5)
    torch.testing.assert_close(out2[1:], out[1:])

    nt = make(time_embed_dim=0).eval()
    out = nt(sample, cond)
    assert not torch.allclose(nt(sample, cond + 0.5), out, atol=1e-5)


def test_horizon_must_be_a_multiple_of_the_downsampling():
    model = make()  # 3 levels -> multiple of 4
    for T in (6, 10, 3):
        sample, cond = inputs(T=T)
        with pytest.raises(ValueError, match=rf"T={T}.*multiple of 4"):
            model(sample, cond, 1)
    sample, cond = inputs(T=12)
    assert model(sample, cond, 1).shape == (3, 12, 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        make(down_dims=(16, 32))(*inputs(T=7), 1)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    model = make()
    sample, cond = inputs()
    cases = [
        ((sample[..., :1], cond, 1), "sample"),  # wrong action_dim
        ((sample[0], cond, 1), "sample"),  # missing batch dim
        ((sample.long(), cond, 1), "sample"),  # integer dtype
        ((sample, cond[:, :4], 1), "cond"),  # wrong cond_dim
        ((sample, cond[:2], 1), "cond"),  # wrong batch
        ((sample, cond[:, None], 1), "cond"),  # extra dim
        ((sample, cond.long(), 1), "cond"),  # integer dtype
        ((sample, cond, None), "timestep"),  # required with time_embed_dim > 0
        ((sample, cond, torch.zeros(2)), "timestep"),  # wrong batch
        ((sample, cond, torch.zeros(3, 1)), "timestep"),
        ((sample, cond, "1"), "timestep"),
    ]
    for args, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}"):
            model(*args)
    with pytest.raises(ValueError, match="^timestep must be None"):
        make(time_embed_dim=0)(sample, cond, 1)


@pytest.mark.parametrize("field, value", [
    ("action_dim", 0), ("cond_dim", 0), ("down_dims", ()), ("kernel_size", 4),
    ("n_groups", 3), ("time_embed_dim", 7), ("time_embed_dim", 2),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ConditionalUnet1D(UNet1DConfig(**{**TINY, field: value}))


@pytest.mark.parametrize("overrides", [{}, {"time_embed_dim": 0, "cond_predict_scale": False}])
def test_gradients_reach_every_parameter(overrides):
    model = make(**overrides)
    sample, cond = inputs()
    t = torch.tensor([1, 2, 3]) if model.config.time_embed_dim else None
    model(sample, cond, t).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_save_load_round_trip(tmp_path):
    model = make(seed=3, cond_predict_scale=False).eval()
    with torch.no_grad():  # move away from the default init so a fresh model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "unet")
    assert {f.name for f in (tmp_path / "unet").iterdir()} == {"config.json", "model.safetensors"}
    loaded = ConditionalUnet1D.from_pretrained(tmp_path / "unet").eval()
    assert loaded.config == model.config and isinstance(loaded.config.down_dims, tuple)
    sample, cond = inputs()
    torch.testing.assert_close(loaded(sample, cond, 4), model(sample, cond, 4), rtol=0, atol=0)


def test_same_seed_same_init():
    a, b, c = make(seed=0), make(seed=0), make(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_num_params():
    model = make()
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    model.final.requires_grad_(False)
    assert model.num_params(trainable_only=True) < model.num_params()
    # the time MLP (D -> 4D -> D) and wider FiLM inputs are the only difference without time input
    D = TINY["time_embed_dim"]
    film_out = 2 * (2 * (16 + 32 + 64) + 2 * 64 + 2 * (32 + 16))  # scale + bias; down, mid, up blocks
    time_mlp = D * 4 * D + 4 * D + 4 * D * D + D
    assert make().num_params() - make(time_embed_dim=0).num_params() == time_mlp + D * film_out

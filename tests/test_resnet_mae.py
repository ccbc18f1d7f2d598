"""ResNet-style MAE (paper A.3, A.5 taps, Table 8 presets): shapes, masking, losses, export."""

import math

import pytest
import torch
from torch import nn

from drifting.models.resnet_mae import (
    PRESETS,
    ResNetEncoder,
    ResNetMAE,
    ResNetMAEConfig,
    cls_lambda,
    mae_loss,
    masked_mse,
    random_patch_mask,
    random_resized_crop,
    resnet_mae_config,
    tap_blocks,
)


def tiny(**kw) -> ResNetMAEConfig:
    base = dict(in_channels=1, base_width=4, blocks_per_stage=(1, 1, 1, 1), gn_groups=2, input_size=28)
    base.update(kw)
    return ResNetMAEConfig(**base).validate()


def test_tap_rule():
    assert tap_blocks(3) == [2, 3]
    assert tap_blocks(4) == [2, 4]
    assert tap_blocks(6) == [2, 4, 6]
    assert tap_blocks(2) == [2]
    assert tap_blocks(1) == [1]
    with pytest.raises(ValueError, match="n_blocks"):
        tap_blocks(0)


@pytest.mark.parametrize("hw,sizes", [(32, [32, 16, 8, 4]), (28, [28, 14, 7, 4])])
def test_encoder_resnet34_layout(hw, sizes):
    torch.manual_seed(0)
    cfg = tiny(blocks_per_stage=(3, 4, 6, 3))
    enc = ResNetEncoder(cfg)
    x = torch.randn(2, 1, hw, hw)
    taps = enc.forward_features(x)
    assert len(taps) == enc.num_taps == 9  # 2 + 2 + 3 + 2
    per_stage = [2, 2, 3, 2]
    expect = [(2, 4 * 2**s, sizes[s], sizes[s]) for s in range(4) for _ in range(per_stage[s])]
    assert [tuple(t.shape) for t in taps] == expect
    assert [(t.shape[1], t.shape[2], t.shape[3]) for t in taps] == cfg.tap_shapes(hw)
    ends = enc.stage_outputs(x)
    assert [tuple(t.shape) for t in ends] == [(2, 4 * 2**s, sizes[s], sizes[s]) for s in range(4)]
    # the last tap of every stage is the stage output
    assert torch.equal(taps[1], ends[0]) and torch.equal(taps[3], ends[1])
    assert torch.equal(taps[6], ends[2]) and torch.equal(taps[8], ends[3])


@pytest.mark.parametrize("name", ["cpu-tiny", "cpu-small"])
@pytest.mark.parametrize("hw", [28, 32])
def test_cpu_presets_shapes(name, hw):
    cfg = resnet_mae_config(name)
    enc = ResNetEncoder(cfg)
    with torch.no_grad():
        taps = enc.forward_features(torch.randn(2, 1, hw, hw))
    shapes = cfg.tap_shapes(hw)
    assert len(taps) == 4  # (1,1,1,1) and (2,2,2,2): one tap per stage
    assert [tuple(t.shape[1:]) for t in taps] == shapes
    assert [s[1] for s in shapes] == ([28, 14, 7, 4] if hw == 28 else [32, 16, 8, 4])
    C = cfg.base_width
    assert [s[0] for s in shapes] == [C, 2 * C, 4 * C, 8 * C]


def test_table8_presets():
    lat = PRESETS["latent-256"]
    assert (lat.in_channels, lat.base_width, lat.input_patch, lat.blocks_per_stage) == (
        4, 256, 1, (3, 4, 6, 3))
    assert PRESETS["latent-640"].base_width == 640
    pix = PRESETS["pixel-640"]
    assert pix.input_patch == 8 and pix.resnet_in_channels == 192 and pix.input_size == 256
    assert [s[1] for s in pix.stage_shapes(256)] == [32, 16, 8, 4]
    assert all(p.mask_patch == 2 and p.mask_ratio == 0.5 for p in PRESETS.values())
    assert len(pix.tap_shapes()) == 9
    with pytest.raises(ValueError, match="name"):
        resnet_mae_config("nope")
    with pytest.raises(ValueError, match="base_width"):
        ResNetMAEConfig(base_width=0).validate()
    with pytest.raises(ValueError, match="blocks_per_stage"):
        ResNetMAEConfig(blocks_per_stage=(1, 2, 3)).validate()
    with pytest.raises(ValueError, match="mask_ratio"):
        ResNetMAEConfig(mask_ratio=1.5).validate()


def test_groupnorm_only():
    model = ResNetMAE(tiny(base_width=6, gn_groups=4, num_classes=3))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert not norms, "BatchNorm found"
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_channels % m.num_groups == 0 for m in gns)
    assert {m.num_groups for m in gns} <= {2, 4}  # gcd(4, 6k)


def test_decoder_shape_latent_and_pixel():
    torch.manual_seed(0)
    m = ResNetMAE(tiny())
    x = torch.randn(2, 1, 28, 28)
    x_hat, logits = m(x)
    assert x_hat.shape == x.shape and logits is None
    cfg = ResNetMAEConfig(in_channels=3, base_width=4, blocks_per_stage=(1, 1, 1, 1), gn_groups=2,
                          input_patch=8, input_size=64, num_classes=5)
    m = ResNetMAE(cfg)
    x = torch.randn(2, 3, 64, 64)
    x_hat, logits = m(x, m.draw_mask(x, torch.Generator().manual_seed(0)))
    assert x_hat.shape == x.shape and logits.shape == (2, 5)
    assert [t.shape[-1] for t in m.encoder.stage_outputs(x)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="x"):
        m(torch.randn(2, 3, 60, 60))


def test_mask_ratio_and_alignment():
    g = torch.Generator().manual_seed(0)
    m = random_patch_mask(400, 28, 28, 2, 0.5, g)  # 400 * 196 patches
    assert m.shape == (400, 1, 28, 28)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(m.mean().item() - 0.5) < 0.01
    blocks = m.reshape(400, 1, 14, 2, 14, 2)
    assert torch.equal(blocks.amax(dim=(3, 5)), blocks.amin(dim=(3, 5)))  # constant on aligned 2x2 squares
    odd = random_patch_mask(3, 7, 7, 2, 0.5, torch.Generator().manual_seed(1))
    assert odd.shape == (3, 1, 7, 7)
    assert torch.equal(odd[..., 6, :6:2], odd[..., 6, 1::2])  # partial border squares still constant
    assert random_patch_mask(2, 8, 8, 2, 0.0).sum() == 0 and random_patch_mask(2, 8, 8, 2, 1.0).min() == 1
    with pytest.raises(ValueError, match="ratio"):
        random_patch_mask(1, 4, 4, 2, 1.5)


def test_pixel_mask_covers_grid_squares():
    cfg = ResNetMAEConfig(in_channels=3, base_width=4, blocks_per_stage=(1, 1, 1, 1), gn_groups=2,
                          input_patch=8, input_size=64)
    m = ResNetMAE(cfg).draw_mask(torch.zeros(5, 3, 64, 64), torch.Generator().manual_seed(0))
    assert m.shape == (5, 1, 64, 64)
    blocks = m.reshape(5, 1, 4, 16, 4, 16)  # mask_patch 2 on the 8x8 grid = 16x16 pixels
    assert torch.equal(blocks.amax(dim=(3, 5)), blocks.amin(dim=(3, 5)))


def test_masked_pixels_are_zeroed():
    torch.manual_seed(0)
    model = ResNetMAE(tiny())
    x = torch.randn(4, 1, 28, 28) + 3.0  # no zeros by chance
    mask = model.draw_mask(x, torch.Generator().manual_seed(3))
    seen = {}
    h = model.encoder.stem.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    model(x, mask)
    h.remove()
    inp = seen["x"]
    assert (inp[mask.bool()] == 0).all()
    assert torch.equal(inp[~mask.bool()], x[~mask.bool()])


def test_mae_loss_only_masked_pixels_and_finite_grad():
    torch.manual_seed(0)
    model = ResNetMAE(tiny())
    x = torch.randn(4, 1, 28, 28)
    mask = model.draw_mask(x, torch.Generator().manual_seed(7))
    far = x + 5.0 * torch.randn_like(x) * (1 - mask)  # differs from x outside the mask only
    l1, s1 = mae_loss(model, x, torch.Generator().manual_seed(7))
    l2, _ = mae_loss(model, x, torch.Generator().manual_seed(7), target=far)
    assert torch.allclose(l1, l2, rtol=0, atol=1e-7)
    near = x + 5.0 * mask  # differs inside the mask
    l3, _ = mae_loss(model, x, torch.Generator().manual_seed(7), target=near)
    assert not torch.allclose(l1, l3)
    x_hat, _ = model(x, mask)
    ref = ((x_hat - x) ** 2 * mask).sum() / mask.sum()
    assert torch.allclose(l1, ref, atol=1e-6)
    assert abs(s1["mask_frac"].item() - mask.mean().item()) < 1e-7
    l1.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert masked_mse(x, x + 1, torch.zeros_like(x)).item() == 0.0


def test_mae_loss_with_classification():
    torch.manual_seed(0)
    model = ResNetMAE(tiny(num_classes=10))
    x, y = torch.randn(6, 1, 28, 28), torch.randint(10, (6,))
    loss, st = mae_loss(model, x, torch.Generator().manual_seed(0), labels=y, cls_weight=0.1)
    assert torch.allclose(loss, 0.1 * st["cls"] + 0.9 * st["recon"], atol=1e-6)
    assert 0 <= st["acc"].item() <= 1
    loss.backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()
    with pytest.raises(ValueError, match="labels"):
        mae_loss(ResNetMAE(tiny()), x, cls_weight=0.1)
    with pytest.raises(ValueError, match="cls_weight"):
        mae_loss(model, x, labels=y, cls_weight=2.0)


def test_cls_lambda_schedule():
    assert cls_lambda(0) == 0.0
    assert math.isclose(cls_lambda(500), 0.05)
    assert math.isclose(cls_lambda(1000), 0.1)
    assert math.isclose(cls_lambda(2999), 0.1)
    assert math.isclose(cls_lambda(10, warmup=0), 0.1)
    with pytest.raises(ValueError, match="step"):
        cls_lambda(-1)


def test_random_resized_crop():
    x = torch.randn(5, 3, 20, 24)
    a = random_resized_crop(x, torch.Generator().manual_seed(0))
    b = random_resized_crop(x, torch.Generator().manual_seed(0))
    c = random_resized_crop(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)
    ident = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(ident, x, atol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(x, scale=(0.0, 1.0))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ResNetMAE(tiny(blocks_per_stage=(2, 1, 1, 1), num_classes=4)).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = ResNetMAE.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config and loaded.config.blocks_per_stage == (2, 1, 1, 1)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])

"""Multi-scale feature sets (paper A.5) and their use in the drifting loss."""

import pytest
import torch

from drifting import drifting_loss
from drifting.features import (
    count_features,
    encoder_feature_sets,
    feature_sets,
    group_by_class,
    parse_groups,
    select_groups,
    vanilla_group,
)
from drifting.models.resnet_mae import ResNetEncoder, ResNetMAEConfig, resnet_mae_config


def test_hand_computed_sizes_8x8():
    f = torch.randn(3, 16, 8, 8)
    out = feature_sets([f], None)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "tap0.loc": (3, 64, 16),
        "tap0.mean": (3, 1, 16),
        "tap0.std": (3, 1, 16),
        "tap0.p2mean": (3, 16, 16),
        "tap0.p2std": (3, 16, 16),
        "tap0.p4mean": (3, 4, 16),
        "tap0.p4std": (3, 4, 16),
    }
    assert count_features([(16, 8, 8)]) == {k: tuple(v.shape[1:]) for k, v in out.items()}


def test_values_match_torch_reductions():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 8, 8) * 3 + 1
    out = feature_sets([f], None, eps=1e-12)
    assert torch.equal(out["tap0.loc"], f.permute(0, 2, 3, 1).reshape(2, 64, 5))
    torch.testing.assert_close(out["tap0.mean"][:, 0], f.mean((2, 3)))
    torch.testing.assert_close(out["tap0.std"][:, 0], f.std((2, 3), unbiased=False))
    for p in (2, 4):
        blocks = f.reshape(2, 5, 8 // p, p, 8 // p, p)  # [B, C, h, p, w, p]
        mean = blocks.mean((3, 5)).flatten(2).transpose(1, 2)  # [B, h*w, C]
        std = blocks.std((3, 5), unbiased=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(out[f"tap0.p{p}mean"], mean)
        torch.testing.assert_close(out[f"tap0.p{p}std"], std)


def test_odd_and_small_maps():
    torch.manual_seed(0)
    f7, f4, f2, f1 = (torch.randn(2, 3, 7, 7), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2),
                      torch.randn(2, 3, 1, 1))
    out = feature_sets([f7, f4, f2, f1], None)
    # 7x7: ceil-mode partial patches, nothing dropped
    assert out["tap0.p2mean"].shape == (2, 16, 3) and out["tap0.p4mean"].shape == (2, 4, 3)
    torch.testing.assert_close(out["tap0.p2mean"][:, -1], f7[:, :, 6, 6])  # 1x1 corner patch
    torch.testing.assert_close(out["tap0.p2mean"][:, 3], f7[:, :, 0:2, 6].mean(-1))  # 2x1 edge patch
    torch.testing.assert_close(out["tap0.p4mean"][:, 3], f7[:, :, 4:, 4:].mean((2, 3)))
    std00 = f7[:, :, :4, :4].std((2, 3), unbiased=False)
    torch.testing.assert_close(out["tap0.p4std"][:, 0], std00, atol=1e-5, rtol=1e-5)
    # partial patches: the std of their own pixels only (the default eps 1e-6 inside the root)
    corner = (f7[:, :, 4:, 4:].var((2, 3), unbiased=False) + 1e-6).sqrt()  # the 3x3 corner of the 4x4 tiling
    torch.testing.assert_close(out["tap0.p4std"][:, 3], corner)
    edge = (f7[:, :, 0:2, 6].var(-1, unbiased=False) + 1e-6).sqrt()  # a 2x1 edge patch of the 2x2 tiling
    torch.testing.assert_close(out["tap0.p2std"][:, 3], edge)
    assert torch.allclose(out["tap0.p2std"][:, -1], torch.full((2, 3), 1e-3))  # sqrt(eps)
    # 4x4: one 4x4 patch (= the global statistics); 2x2: no p4; 1x1: neither
    assert out["tap1.p4mean"].shape == (2, 1, 3)
    torch.testing.assert_close(out["tap1.p4mean"], out["tap1.mean"])
    assert "tap2.p2mean" in out and "tap2.p4mean" not in out
    assert "tap3.p2mean" not in out and "tap3.p4std" not in out
    counts = count_features([(3, 7, 7), (3, 4, 4), (3, 2, 2), (3, 1, 1)])
    assert counts == {k: tuple(v.shape[1:]) for k, v in out.items()}


@pytest.mark.parametrize("sets,kinds", [
    ("ab", {"loc", "mean", "std"}),
    ("abc", {"loc", "mean", "std", "p2mean", "p2std"}),
    ("abcd", {"loc", "mean", "std", "p2mean", "p2std", "p4mean", "p4std"}),
])
def test_set_ablation_keys(sets, kinds):
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    x = torch.randn(2, 3, 16, 16)
    out = feature_sets(maps, x, sets=sets)
    expect = {f"tap{k}.{kind}" for k in range(2) for kind in kinds} | {"input.sq"}
    assert set(out) == expect
    assert set(count_features([(4, 8, 8), (8, 4, 4)], sets=sets, in_channels=3)) == expect
    assert "input.sq" not in feature_sets(maps, x, sets=sets, include_input_sq=False)
    assert "input.sq" not in feature_sets(maps, None, sets=sets)


def test_input_sq_and_errors():
    x = torch.randn(2, 3, 16, 16)
    out = feature_sets([torch.randn(2, 4, 8, 8)], x)
    torch.testing.assert_close(out["input.sq"], (x**2).mean((2, 3)).unsqueeze(1))
    with pytest.raises(ValueError, match="sets"):
        feature_sets([torch.randn(2, 4, 8, 8)], None, sets="abd")
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        feature_sets([torch.randn(2, 4, 8, 8), torch.randn(3, 4, 8, 8)], None)
    with pytest.raises(ValueError, match="x_in"):
        feature_sets([torch.randn(2, 4, 8, 8)], torch.randn(3, 3, 8, 8))


def test_std_gradient_finite_on_constant_map():
    f = torch.ones(2, 4, 8, 8, requires_grad=True)
    out = feature_sets([f], None)
    sum(v.sum() for v in out.values()).backward()
    assert torch.isfinite(f.grad).all()


def test_vanilla_and_group_by_class():
    x = torch.randn(6, 1, 4, 4)
    v = vanilla_group(x)
    assert v.shape == (6, 1, 16) and torch.equal(v[4, 0], x[4].flatten())
    feats = {"a": torch.arange(6 * 2 * 3.0).reshape(6, 2, 3), "v": v}
    g = group_by_class(feats, 3)
    assert g["a"].shape == (3, 2, 2, 3) and g["v"].shape == (3, 2, 1, 16)
    for c in range(3):
        for i in range(2):
            assert torch.equal(g["a"][c, i], feats["a"][c * 2 + i])  # class-major
    with pytest.raises(ValueError, match="n_classes"):
        group_by_class(feats, 4)


def test_count_features_matches_cpu_small_encoder():
    cfg = resnet_mae_config("cpu-small")
    enc = ResNetEncoder(cfg)
    with torch.no_grad():
        out = encoder_feature_sets(enc, torch.randn(2, 1, 28, 28))
    counts = count_features(cfg, 28)
    assert counts == {k: tuple(v.shape[1:]) for k, v in out.items()}
    assert len(counts) == 4 * 7 + 1
    assert sum(L for L, _ in counts.values()) == 1276 + 328 + 91 + 28 + 1


def test_drifting_loss_end_to_end_through_encoder():
    torch.manual_seed(0)
    cfg = ResNetMAEConfig(in_channels=1, base_width=4, blocks_per_stage=(1, 1, 1, 1), gn_groups=2,
                          input_size=16)
    enc = ResNetEncoder(cfg).requires_grad_(False)
    Nc, n_gen, n_pos = 2, 4, 5
    gen = torch.randn(Nc * n_gen, 1, 16, 16, requires_grad=True)
    real = torch.randn(Nc * n_pos, 1, 16, 16)

    def phi(x):
        feats = encoder_feature_sets(enc, x)
        feats["vanilla"] = vanilla_group(x)
        return feats

    fg, fp = phi(gen), phi(real)
    g, p = group_by_class(fg, Nc), group_by_class(fp, Nc)
    assert g["tap0.loc"].shape == (Nc, n_gen, 256, 4) and p["tap0.loc"].shape == (Nc, n_pos, 256, 4)
    loss, stats = drifting_loss(g, p)
    assert torch.isfinite(loss) and "tap0.loc/S" in stats and "vanilla/loss" in stats
    loss.backward()
    assert torch.isfinite(gen.grad).all() and gen.grad.abs().sum() > 0


def test_sample_locations_is_shared_and_bounded():
    from drifting.features import sample_locations, take_locations

    g = torch.Generator().manual_seed(0)
    gen = {"a": torch.randn(3, 50, 4), "b": torch.randn(3, 5, 4)}
    real = {"a": torch.randn(7, 50, 4), "b": torch.randn(7, 5, 4)}
    sub = sample_locations(gen, 8, g)
    assert set(sub) == {"a"}  # "b" has only 5 locations: kept whole
    idx = sub["a"]
    assert idx.shape == (8,) and len(set(idx.tolist())) == 8 and bool((idx[1:] > idx[:-1]).all())
    tg, tr = take_locations(gen, sub), take_locations(real, sub)
    assert torch.equal(tg["a"], gen["a"][:, idx]) and torch.equal(tr["a"], real["a"][:, idx])
    assert tg["b"] is gen["b"]
    assert sample_locations(gen, None) == {}
    with pytest.raises(ValueError, match="max_locations"):
        sample_locations(gen, 0)


def test_select_groups_by_pattern():
    maps = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)]
    feats = feature_sets(maps, torch.randn(2, 1, 8, 8))
    assert select_groups(feats, None).keys() == feats.keys()
    kept = select_groups(feats, "tap1.loc, tap*.mean")
    assert sorted(kept) == ["tap0.mean", "tap1.loc", "tap1.mean"]
    assert kept["tap1.loc"] is feats["tap1.loc"]  # the same tensors, nothing recomputed
    assert sorted(select_groups(feats, "input.sq,tap0.p?std")) == ["input.sq", "tap0.p2std", "tap0.p4std"]
    assert parse_groups(" a , b ") == ("a", "b") and parse_groups(None) is None
    with pytest.raises(ValueError, match=r"groups: the pattern 'tap9\.loc' matches none.*tap0\.loc"):
        select_groups(feats, "tap1.loc,tap9.loc")
    for bad in ("", "tap1.loc,", ",,"):
        with pytest.raises(ValueError, match="groups: expected comma-separated patterns"):
            parse_groups(bad)
    with pytest.raises(ValueError, match="groups"):
        parse_groups(["tap1.loc"])


def test_dropped_groups_leave_the_kept_groups_loss_unchanged():
    """Each group's loss is computed on its own (Eq. 26): selecting groups drops their terms and
    nothing else, so the loss of a subset is the sum of those groups' per-group losses."""
    torch.manual_seed(0)
    maps_g = [torch.randn(6, 4, 4, 4, requires_grad=True)]
    maps_p = [torch.randn(6, 4, 4, 4)]
    fg, fp = feature_sets(maps_g), feature_sets(maps_p)
    gen = group_by_class(fg, 2)
    pos = group_by_class(fp, 2)
    _, st_all = drifting_loss(gen, pos)
    sel = "tap0.loc,tap0.mean"
    loss_sel, _ = drifting_loss(group_by_class(select_groups(fg, sel), 2),
                                group_by_class(select_groups(fp, sel), 2))
    expect = sum(v for k, v in st_all.items() if k in ("tap0.loc/loss", "tap0.mean/loss"))
    torch.testing.assert_close(loss_sel.detach(), expect)

"""Pretrained-encoder adapters (paper A.4 MoCo / SimCLR / ConvNeXt-V2, A.5 taps, Table 9 sums).

Everything is random-init (pretrained=False / weights=None): no network access.
"""

import sys

import pytest
import timm  # noqa: E402
import torch
import torchvision  # noqa: E402  (test extras)
from safetensors.torch import save_file  # noqa: E402
from torch import nn

from drifting import drifting_loss  # noqa: E402
from drifting.features import feature_sets, group_by_class  # noqa: E402
from drifting.models.encoders import (  # noqa: E402
    IMAGENET_NORM,
    MultiEncoder,
    TimmEncoder,
    TorchvisionResNetEncoder,
    build_encoder,
    encode_groups,
    load_resnet50,
    load_timm,
)
from drifting.models.resnet_mae import ResNetMAE, ResNetMAEConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def images(b=2, c=3, hw=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, hw, hw, generator=g) * 2 - 1  # [B, C, H, W] in [-1, 1]


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter and BN buffer, so that a load that skips anything is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def backbone(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith(("fc.", "head."))}


def assert_same_backbone(a: nn.Module, b: nn.Module) -> None:
    sa, sb = backbone(a.state_dict()), backbone(b.state_dict())
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    torch.manual_seed(0)
    return randomize_(torchvision.models.resnet18(weights=None), 1)


@pytest.fixture(scope="module")
def r18_maps(r18) -> list:
    return TorchvisionResNetEncoder(r18).forward_features(images())


# -----------------------------------------------------------------------------
# torchvision ResNet: checkpoint layouts


def _layouts(sd: dict) -> dict:
    bb = backbone(sd)
    g = torch.Generator().manual_seed(3)
    mlp = {"fc.0.weight": torch.randn(512, 512, generator=g), "fc.0.bias": torch.zeros(512),
           "fc.2.weight": torch.randn(128, 512, generator=g), "fc.2.bias": torch.zeros(128)}
    zeros = {k: torch.zeros_like(v) for k, v in bb.items()}  # a decoy encoder that must not be loaded
    moco2 = {f"module.encoder_q.{k}": v for k, v in {**bb, **mlp}.items()}
    moco2.update({f"module.encoder_k.{k}": v for k, v in zeros.items()})
    moco2.update({"module.queue": torch.randn(128, 16, generator=g),
                  "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    moco3 = {f"module.base_encoder.{k}": v for k, v in {**bb, **mlp}.items()}
    moco3.update({f"module.momentum_encoder.{k}": v for k, v in zeros.items()})
    moco3["module.predictor.0.weight"] = torch.randn(64, 128, generator=g)
    return {
        "plain.pth": sd,
        "wrapped_state_dict.pth": {"state_dict": sd, "epoch": 100},
        "wrapped_model.pth": {"model": sd},
        "moco_v2.pth.tar": {"epoch": 200, "arch": "resnet18", "state_dict": moco2,
                            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]}},
        "moco_v3.pth.tar": {"epoch": 300, "arch": "resnet18", "state_dict": moco3},
        "simclr_converted.pth": {"state_dict": bb},  # converted SimCLR: torchvision layout, no fc
        "plain.safetensors": sd,
    }


@pytest.mark.parametrize("layout", list(_layouts({})))
def test_resnet_checkpoint_layouts_round_trip(r18, r18_maps, tmp_path, layout):
    obj = _layouts({k: v.clone() for k, v in r18.state_dict().items()})[layout]
    path = tmp_path / layout
    if layout.endswith(".safetensors"):
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    loaded = load_resnet50(path, arch="resnet18")
    assert_same_backbone(loaded, r18)
    got = TorchvisionResNetEncoder(loaded).forward_features(images())
    assert all(torch.equal(u, v) for u, v in zip(got, r18_maps))


def test_resnet_fresh_model_differs(r18_maps):
    """Sanity for the round trip: a model that was not loaded gives other features."""
    a = TorchvisionResNetEncoder(torchvision.models.resnet18(weights=None)).forward_features(images())
    assert not torch.allclose(a[-1], r18_maps[-1])


def test_resnet50_default_arch_and_safetensors(tmp_path):
    torch.manual_seed(1)
    src = randomize_(torchvision.models.resnet50(weights=None), 2)
    save_file(src.state_dict(), str(tmp_path / "r50.safetensors"))
    assert_same_backbone(load_resnet50(tmp_path / "r50.safetensors"), src)


# -----------------------------------------------------------------------------
# torchvision ResNet: taps, preprocessing, gradients


def test_resnet50_taps_follow_a5():
    model = torchvision.models.resnet50(weights=None).eval()
    enc = TorchvisionResNetEncoder(model, resize=64)
    x = images(c=1, hw=28)  # grayscale Fashion-MNIST size, resized to 64
    maps = enc.forward_features(x)
    # [3, 4, 6, 3] blocks -> taps [2, 3], [2, 4], [2, 4, 6], [2, 3]: 9 maps; 64 -> 16, 8, 4, 2
    assert [tuple(f.shape) for f in maps] == (
        [(2, 256, 16, 16)] * 2 + [(2, 512, 8, 8)] * 2 + [(2, 1024, 4, 4)] * 3 + [(2, 2048, 2, 2)] * 2)
    # the same numbers by hand: resize, gray -> RGB, [-1, 1] -> [0, 1], ImageNet norm, torchvision layers
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET_NORM)
    h = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False,
                                        antialias=True)
    h = ((h.repeat(1, 3, 1, 1) + 1) / 2 - mean) / std
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(h))))
        l1 = model.layer1(h)
        l2 = model.layer2[:2](l1)
        end = model.layer4(model.layer3(model.layer2[2:](l2)))
    torch.testing.assert_close(maps[1], l1)
    torch.testing.assert_close(maps[2], l2)
    torch.testing.assert_close(maps[-1], end)
    stage_ends = TorchvisionResNetEncoder(model, taps="stage_end", resize=64).forward_features(x)
    assert len(stage_ends) == 4
    torch.testing.assert_close(stage_ends[-1], end)


def test_resnet_gradients_reach_input_and_stay_frozen(r18):
    enc = TorchvisionResNetEncoder(r18)
    enc.train()  # must stay in eval: BatchNorm keeps its running statistics
    assert not enc.training and not enc.model.bn1.training
    x = images(c=1).requires_grad_(True)
    maps = enc.forward_features(x)
    sum(f.square().mean() for f in maps).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())


def test_resnet_bad_inputs(r18):
    with pytest.raises(ValueError, match="taps"):
        TorchvisionResNetEncoder(r18, taps="every3")
    with pytest.raises(ValueError, match="resize"):
        TorchvisionResNetEncoder(r18, resize=16)
    with pytest.raises(ValueError, match="model"):
        TorchvisionResNetEncoder(nn.Linear(2, 2))
    enc = TorchvisionResNetEncoder(r18)
    with pytest.raises(ValueError, match="x: expected"):
        enc.forward_features(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match="resize=64"):
        enc.forward_features(torch.zeros(2, 1, 28, 28))


def test_resnet_bad_checkpoints(r18, tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_resnet50(tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="path: cannot read"):
        load_resnet50(tmp_path / "garbage.pth")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled_module.pth")  # weights_only refuses to unpickle it
    with pytest.raises(ValueError, match="weights_only"):
        load_resnet50(tmp_path / "pickled_module.pth")
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="keys missing"):
        load_resnet50(tmp_path / "r18.pth", arch="resnet34")  # resnet18 weights into a resnet34
    sd = dict(r18.state_dict())
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match="shapes differ"):
        load_resnet50(tmp_path / "bad_shape.pth", arch="resnet18")
    with pytest.raises(ValueError, match="arch"):
        load_resnet50(tmp_path / "r18.pth", arch="vgg16")


# -----------------------------------------------------------------------------
# timm ConvNeXt-V2


@pytest.fixture(scope="module")
def cnx() -> nn.Module:
    torch.manual_seed(0)  # with a classifier, so the checkpoints carry head keys to drop
    return randomize_(timm.create_model("convnextv2_atto", pretrained=False, num_classes=10), 4)


def _to_fb_layout(sd: dict) -> dict:
    """timm ConvNeXt-V2 keys -> the official (facebookresearch) checkpoint layout."""
    import re

    out = {}
    for k, v in sd.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        if "mlp.grn." in k:
            k = k.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            v = v.reshape(1, 1, 1, -1)
        k = k.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[k] = v
    return out


@pytest.mark.parametrize("layout",
                         ["plain.safetensors", "wrapped_model.pth", "ddp_state_dict.pth", "fb_official.pt"])
def test_timm_round_trip(cnx, tmp_path, layout):
    sd = {k: v.clone() for k, v in cnx.state_dict().items()}
    path = tmp_path / layout
    if layout == "plain.safetensors":
        save_file(sd, str(path))
    elif layout == "wrapped_model.pth":
        torch.save({"model": sd, "epoch": 1}, path)
    elif layout == "ddp_state_dict.pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save({"model": _to_fb_layout(sd)}, path)
    loaded = load_timm("convnextv2_atto", path)
    assert_same_backbone(loaded, cnx)
    x = images()
    a, b = TimmEncoder(loaded).forward_features(x), TimmEncoder(cnx).forward_features(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    fresh = TimmEncoder(timm.create_model("convnextv2_atto", pretrained=False,
                                          num_classes=0)).forward_features(x)
    assert not torch.allclose(fresh[-1], b[-1])


def test_timm_convnext_taps_and_gradients(cnx):
    enc = TimmEncoder(cnx, resize=64)
    assert enc.mode == "blocks" and enc.name == "convnextv2_atto"
    x = images(c=1).requires_grad_(True)
    maps = enc.forward_features(x)
    # stages [2, 2, 6, 2] blocks -> taps [2], [2], [2, 4, 6], [2]; stem /4 then /2 per stage: 16, 8, 4, 2
    assert ([tuple(f.shape) for f in maps]
            == [(2, 40, 16, 16), (2, 80, 8, 8)] + [(2, 160, 4, 4)] * 3 + [(2, 320, 2, 2)])
    ends = cnx.forward_intermediates(enc.prepare(x), intermediates_only=True)
    for got, want in zip([maps[0], maps[1], maps[4], maps[5]], ends):
        torch.testing.assert_close(got, want)
    sum(f.square().mean() for f in maps).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in cnx.parameters())
    assert len(TimmEncoder(cnx, taps="stage_end").forward_features(images())) == 4


def test_timm_stage_outputs_fallback():
    torch.manual_seed(0)
    m = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    f = timm.create_model("resnet10t", pretrained=False, features_only=True)
    f.load_state_dict(m.state_dict())
    a, b = TimmEncoder(m), TimmEncoder(f)
    assert (a.mode, b.mode) == ("intermediates", "features_only")
    x = images()
    ma, mb = a.forward_features(x), b.forward_features(x)
    assert [tuple(t.shape[1:]) for t in ma] == [(64, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2),
                                                (512, 1, 1)]
    assert all(torch.allclose(u, v) for u, v in zip(ma, mb))
    with pytest.raises(ValueError, match="model"):
        TimmEncoder(nn.Conv2d(3, 3, 1))


def test_timm_bad_name_and_checkpoint(cnx, tmp_path):
    save_file(cnx.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="name"):
        load_timm("no_such_model_xyz", tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="shapes differ"):
        load_timm("convnextv2_femto", tmp_path / "w.safetensors")  # atto weights, wrong architecture


# -----------------------------------------------------------------------------
# Several encoders, summed (Table 9)


def tiny_mae(in_channels=1) -> ResNetMAE:
    torch.manual_seed(0)
    cfg = ResNetMAEConfig(in_channels=in_channels, base_width=4, blocks_per_stage=(1, 1, 1, 1), gn_groups=2,
                          input_size=32)
    return ResNetMAE(cfg).eval()


def test_encode_groups_single_encoders(r18):
    x = images(c=1)
    mae = tiny_mae().encoder
    assert encode_groups(mae, x).keys() == feature_sets(mae.forward_features(x), x).keys()
    enc = TorchvisionResNetEncoder(r18)
    got = enc.encode_groups(x, "ab")
    want = feature_sets(enc.forward_features(x), x, sets="ab")
    # resnet18: [2, 2, 2, 2] blocks -> one tap per stage, tap0..tap3
    assert got.keys() == want.keys() and "input.sq" in got and "tap3.loc" in got and "tap4.loc" not in got
    assert all(torch.equal(got[k], want[k]) for k in got)
    with pytest.raises(ValueError, match="encoder"):
        encode_groups(nn.Linear(2, 2), x)


def test_multi_encoder_prefixes_groups_and_sums_losses(cnx):
    mae, cx = tiny_mae().encoder, TimmEncoder(cnx, name="convnextv2_atto")
    multi = MultiEncoder({"mae": mae, "convnextv2_atto": cx})
    assert multi.name == "mae+convnextv2_atto"
    x = images(b=4, c=1).requires_grad_(True)
    groups = multi.encode_groups(x)
    a = feature_sets(mae.forward_features(x), x)  # with input.sq
    b = feature_sets(cx.forward_features(x), None)
    want = {**{("input.sq" if k == "input.sq" else f"mae/{k}"): v for k, v in a.items()},
            **{f"convnextv2_atto/{k}": v for k, v in b.items()}}
    assert groups.keys() == want.keys()
    assert sum(k == "input.sq" for k in groups) == 1
    assert all(torch.equal(groups[k], want[k]) for k in groups)
    assert len(multi.forward_features(x)) == len(mae.forward_features(x)) + len(cx.forward_features(x))

    # the drifting loss sums over groups: total = MAE loss + ConvNeXt loss
    pos = {k: v.detach() for k, v in multi.encode_groups(images(b=4, c=1, seed=1)).items()}
    total, _ = drifting_loss(group_by_class(groups, 1), group_by_class(pos, 1))
    la, _ = drifting_loss(group_by_class({k: groups[k] for k in groups if not k.startswith("conv")}, 1),
                          group_by_class({k: pos[k] for k in pos if not k.startswith("conv")}, 1))
    lb, _ = drifting_loss(group_by_class({k: groups[k] for k in groups if k.startswith("conv")}, 1),
                          group_by_class({k: pos[k] for k in pos if k.startswith("conv")}, 1))
    torch.testing.assert_close(total, la + lb)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert encode_groups(multi, x.detach()).keys() == groups.keys()


def test_multi_encoder_bad_names():
    with pytest.raises(ValueError, match="encoders"):
        MultiEncoder({})
    with pytest.raises(ValueError, match="encoders"):
        MultiEncoder({"a.b": tiny_mae().encoder})
    with pytest.raises(ValueError, match="encoders"):
        MultiEncoder({"a": nn.Linear(2, 2)})


# -----------------------------------------------------------------------------
# Spec strings and optional dependencies


def test_build_encoder_specs(r18, cnx, tmp_path):
    tiny_mae().save_pretrained(tmp_path / "mae")
    torch.save({"state_dict": r18.state_dict()}, tmp_path / "r18.pth")
    save_file(cnx.state_dict(), str(tmp_path / "cnx.safetensors"))

    mae = build_encoder(f"mae:{tmp_path / 'mae'}", in_channels=1)
    assert mae.name == "mae" and not any(p.requires_grad for p in mae.parameters())
    r = build_encoder(f"resnet18:{tmp_path / 'r18.pth'}@64", in_channels=3)
    assert isinstance(r, TorchvisionResNetEncoder) and r.resize == 64 and r.name == "resnet18"

    spec = (f"mae:{tmp_path / 'mae'}+resnet18:{tmp_path / 'r18.pth'}@64+resnet18:{tmp_path / 'r18.pth'}"
            f"+timm:convnextv2_atto:{tmp_path / 'cnx.safetensors'}")
    multi = build_encoder(spec, in_channels=1)
    assert isinstance(multi, MultiEncoder)
    assert list(multi.encoders) == ["mae", "resnet18", "resnet18_1", "convnextv2_atto"]
    assert multi.encoders["resnet18"].resize == 64 and multi.encoders["resnet18_1"].resize is None
    x = images(c=1)
    groups = multi.encode_groups(x, "ab")
    assert {k.split("/")[0] for k in groups} == {"mae", "resnet18", "resnet18_1", "convnextv2_atto",
                                                 "input.sq"}
    torch.testing.assert_close(groups["convnextv2_atto/tap5.loc"],
                               encode_groups(TimmEncoder(cnx), x, "ab")["tap5.loc"])


@pytest.mark.parametrize("spec", ["", "resnet50", "vgg16:/w.pth", "timm:convnextv2_atto", "timm::/w.pth",
                                  "mae:", "mae:/x++resnet50:/w.pth"])
def test_build_encoder_bad_spec(spec):
    with pytest.raises(ValueError, match="encoder: .*allowed forms"):
        build_encoder(spec, in_channels=3)


def test_build_encoder_bad_channels_and_paths(tmp_path):
    tiny_mae(in_channels=3).save_pretrained(tmp_path / "mae")
    with pytest.raises(ValueError, match="in_channels"):
        build_encoder(f"mae:{tmp_path / 'mae'}", in_channels=1)
    with pytest.raises(ValueError, match="in_channels"):
        build_encoder("resnet50:/w.pth", in_channels=4)
    with pytest.raises(FileNotFoundError, match="path"):
        build_encoder(f"resnet18:{tmp_path / 'missing.pth'}@64", in_channels=3)


def test_missing_optional_dependencies(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_resnet50(tmp_path / "w.pth")
    with pytest.raises(ImportError, match="pip install timm"):
        load_timm("convnextv2_atto", tmp_path / "w.pth")


def test_module_does_not_import_optional_dependencies():
    """torchvision / timm are imported inside functions only (the core install has neither)."""
    import ast

    import drifting.models.encoders as mod

    tree = ast.parse(open(mod.__file__).read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert "torch" in names and not names & {"torchvision", "timm"}

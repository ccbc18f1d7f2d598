"""Drift-RAE §3.2 / App. B.1 study recipe: per-class, per-token PR/SE/NN-d/S-MMD of latents (Tables 1-2),
teacher ODE curvature (Fig. 1), the study over tokenizers, its markdown tables and the CLI."""

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from drifting.cli.cmd_latent_stats import add_latent_stats_parser
from drifting.eval.latent_metrics import isotropy_stats, nn_distance, spherical_mmd
from drifting.models.dit import DriftingDiT, dit_config
from drifting.recipes.flow import euler_sample
from drifting.recipes.latent_stats import (
    euler_path,
    first_per_class,
    format_latent_stats,
    latent_statistics,
    run_latent_stats,
    teacher_curvature,
    to_tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_flow(size: int = 8, num_classes: int = 4, seed: int = 0, perturb: float = 0.05) -> DriftingDiT:
    """A tiny time-conditioned DiT (num_classes includes the null class) with every weight, the
    zero-initialised adaLN / output layers included, nudged off its init so v depends on y, t and c."""
    cfg = dit_config("cpu-tiny", input_size=size, in_channels=1, patch_size=4, hidden=32, depth=1, heads=2,
                     in_context_tokens=2, style_tokens=0, num_classes=num_classes, time_cond=True)
    torch.manual_seed(seed)
    model = DriftingDiT(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g))
    return model.eval()


class StubVelocity(nn.Module):
    """A known velocity field ``fn(y, t)`` with the flow DiT's calling convention."""

    def __init__(self, fn, shape=(1, 2, 2), num_classes: int = 3):
        super().__init__()
        self.fn = fn
        self.config = SimpleNamespace(time_cond=True, num_classes=num_classes, style_tokens=0,
                                      in_channels=shape[0], input_size=shape[1])

    def forward(self, y, labels, alpha=1.0, style=None, t=None):
        return self.fn(y, t.view(-1, 1, 1, 1))


# --------------------------------------------------------------------------- Tables 1-2
def test_isotropic_gaussian_tokens_are_isotropic():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 4, 2, 2, generator=g)  # 4 tokens of 4 channels
    labels = torch.arange(3000) % 2
    st = latent_statistics(z, labels, per_class=1500)
    assert st["num_tokens"] == 4 and st["dim"] == 4 and st["latent_shape"] == [4, 2, 2]
    assert st["class_counts"] == [1500, 1500] and st["rank_bound"] == 4 and st["pr_se_max"] == 1.0
    assert 0.98 < st["pr"] <= 1 and 0.98 < st["se"] <= 1 and st["dead_cells"] == 0
    assert st["nn_d"] > 0 and st["s_mmd"] > 0
    json.dumps(st)  # JSON-ready


def test_rank_one_tokens_have_pr_and_se_one_over_d():
    g = torch.Generator().manual_seed(1)
    d = 6
    u = torch.randn(2, d, 3, 3, generator=g)  # one direction per (class, token)
    a = torch.randn(40, generator=g)  # [N] scalars
    labels = torch.arange(40) % 2
    z = a.view(-1, 1, 1, 1) * u[labels] + 5.0 * labels.view(-1, 1, 1, 1)  # rank 1 per (class, token)
    st = latent_statistics(z, labels)
    assert st["pr"] == pytest.approx(1 / d, abs=1e-9) and st["se"] == pytest.approx(1 / d, abs=1e-9)
    assert st["by_class"]["pr"] == pytest.approx([1 / d, 1 / d], abs=1e-9)


def test_dispersion_known_answers_and_sqrt_d_normalisation():
    # class 0: k * (1, 1, 1, 1), k = 0..4: every nearest neighbour at distance 2 = sqrt(4) -> NN-d 1
    line = torch.arange(5.0).view(5, 1, 1, 1) * torch.ones(1, 4, 1, 1)
    # class 1: the 2d = 8 poles +-rho e_i around an offset -> S-MMD 0
    poles = torch.cat([torch.eye(4), -torch.eye(4)]).view(8, 4, 1, 1) * 3.0 + 7.0
    z = torch.cat([line, poles])
    labels = torch.tensor([0] * 5 + [1] * 8)
    st = latent_statistics(z, labels)
    assert st["by_class"]["nn_d"][0] == pytest.approx(1.0, abs=1e-12)
    assert st["by_class"]["s_mmd"][1] == pytest.approx(0.0, abs=1e-12)
    # Eq. 49 weighs samples, not classes
    assert st["nn_d"] == pytest.approx((5 * 1.0 + 8 * st["by_class"]["nn_d"][1]) / 13, abs=1e-12)
    assert st["s_mmd"] == pytest.approx(np.mean(st["by_class"]["s_mmd"]), abs=1e-15)


def test_aggregation_matches_the_eval_functions_on_the_whole_set():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(31, 3, 4, 4, generator=g) * torch.linspace(0.2, 2, 3).view(1, 3, 1, 1)
    labels = torch.randint(3, (31,), generator=g)
    labels[:9] = torch.arange(9) % 3  # every class has >= 3 samples; counts unequal
    st = latent_statistics(z, labels, patch=2, tau=0.7)
    x = to_tokens(z, 2)  # [31, 4, 12]
    assert st["pr"] == pytest.approx(isotropy_stats(x, labels)["pr"], abs=1e-12)
    assert st["se"] == pytest.approx(isotropy_stats(x, labels)["se"], abs=1e-12)
    assert st["nn_d"] == pytest.approx(nn_distance(x, labels)["nn_d"], abs=1e-12)
    assert st["s_mmd"] == pytest.approx(spherical_mmd(x, labels, 0.7)["s_mmd"], abs=1e-12)
    assert st["num_tokens"] == 4 and st["dim"] == 12 and st["patch"] == 2 and st["per_class"] is None


def test_to_tokens_patches_in_raster_order():
    z = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    x = to_tokens(z, 2)
    assert x.shape == (2, 4, 12)
    assert torch.equal(x[1, 1], z[1, :, 0:2, 2:4].reshape(-1))  # token (row 0, col 1)
    assert torch.equal(to_tokens(z), z.flatten(2).transpose(1, 2))  # patch 1: positions, c channels
    with pytest.raises(ValueError, match="patch"):
        to_tokens(z, 3)


def test_per_class_subsampling_and_errors():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20, 2, 2, 2, generator=g)
    labels = torch.tensor([0, 1, 2, 3] * 5)
    assert first_per_class(labels, 3).tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    st = latent_statistics(z, labels, per_class=3)
    assert st["class_counts"] == [3, 3, 3, 3] and st["per_class"] == 3
    assert st["rank_bound"] == 2 and st["pr_se_max"] == pytest.approx(2 / 2)
    keep = torch.from_numpy(first_per_class(labels, 3))
    ref = latent_statistics(z[keep], labels[keep])
    for k in ("pr", "se", "nn_d", "s_mmd"):
        assert st[k] == pytest.approx(ref[k], abs=1e-12)
    # the rank bound: 3 samples of 8-dimensional tokens -> PR, SE <= 2 / 8
    st8 = latent_statistics(torch.randn(20, 8, 1, 1, generator=g), labels, per_class=3)
    assert st8["rank_bound"] == 2 and st8["pr_se_max"] == 0.25 and st8["pr"] <= 0.25 + 1e-12
    with pytest.raises(ValueError, match="per_class: class 0 has only 5"):
        latent_statistics(z, labels, per_class=6)
    with pytest.raises(ValueError, match="per_class"):
        latent_statistics(z, labels, per_class=1)
    with pytest.raises(ValueError, match="labels: class 3 has 1 sample"):
        latent_statistics(z[:4], labels[:4] * 0 + torch.tensor([0, 0, 0, 3]))
    with pytest.raises(ValueError, match="labels"):
        latent_statistics(z, labels[:5])


def test_dead_cells_are_left_out_of_pr_and_se():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(12, 3, 1, 3, generator=g)
    labels = torch.arange(12) % 2
    z[labels == 0, :, :, 0] = 0.5  # token 0 of class 0: every sample identical (a background pixel)
    st = latent_statistics(z, labels)
    assert st["dead_cells"] == 1 and st["cells"] == 6
    x = to_tokens(z)  # [12, 3, 3]
    live = [isotropy_stats(x[labels == 0][:, 1:], None), isotropy_stats(x[labels == 1], None)]
    cells = torch.cat([s["pr_per_cell"].flatten() for s in live])
    assert st["pr"] == pytest.approx(float(cells.mean()), abs=1e-12)
    # dead cells count there (0)
    assert st["nn_d"] == pytest.approx(nn_distance(x, labels)["nn_d"], abs=1e-12)


# --------------------------------------------------------------------------- Fig. 1
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_euler_path_ends_exactly_at_euler_sample(guidance_scale):
    model = tiny_flow()
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 2, 1])
    path = euler_path(model, labels, 4, z, guidance_scale=guidance_scale)
    assert path.shape == (5, 3, 1, 8, 8) and torch.equal(path[0], z)
    assert torch.equal(path[-1], euler_sample(model, labels, 4, noise=z, guidance_scale=guidance_scale))
    if guidance_scale == 1:  # the first step is z - dt v(z, 1)
        assert torch.equal(path[1], z - 0.25 * model(z, labels, t=torch.ones(3)).float())
    assert (path[1] - path[0]).abs().max() > 0


def test_constant_velocity_dit_has_zero_curvature():
    model = tiny_flow(perturb=0.0)
    with torch.no_grad():  # output layer weight 0, bias b: v(y, t, c) = unpatchify(b) for every input
        bias = model.final.linear.bias
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(6)))
    r = teacher_curvature(model, torch.arange(6) % 3, steps=5, seed=1)
    assert r["n"] == 6 and r["steps"] == 5 and r["dim"] == 64 and r["degenerate"] == 0
    assert r["curvature"]["max"] == 0.0 and r["curvature_per_dim"]["max"] == 0.0  # exactly (Welford)
    scale = float(model.final.linear.bias.detach().norm())
    assert r["deviation"]["max"] < 1e-5 * scale and len(r["deviation"]["per_step"]) == 4
    json.dumps(r)


def test_curvature_of_known_fields():
    a, b = torch.tensor([1.0, 0, 0, 0]).view(1, 1, 2, 2), torch.tensor([0, 2.0, 0, 0]).view(1, 1, 2, 2)
    labels = torch.zeros(4, dtype=torch.long)
    # straight line at a varying speed: positive curvature (velocity variance), no deviation from the chord
    r = teacher_curvature(StubVelocity(lambda y, t: t * a), labels, steps=10)
    assert r["curvature"]["mean"] > 1e-3 and r["deviation"]["max"] < 1e-6
    # velocity turning from a + 2b at t = 1 toward a: a curved path
    r = teacher_curvature(StubVelocity(lambda y, t: a + t * b), labels, steps=10)
    assert r["curvature"]["mean"] > 1e-3 and r["deviation"]["mean"] > 1e-2
    assert r["deviation_per_sqrt_dim"]["mean"] == pytest.approx(r["deviation"]["mean"] / 2)
    # batching changes nothing; zero velocity: no chord -> degenerate, deviation n/a
    assert teacher_curvature(StubVelocity(lambda y, t: a + t * b), labels, steps=10, batch=3) == r
    z = teacher_curvature(StubVelocity(lambda y, t: 0 * y), labels, steps=3)
    assert z["degenerate"] == 4 and z["deviation"]["mean"] is None and z["curvature"]["max"] == 0.0
    with pytest.raises(ValueError, match="steps"):
        teacher_curvature(StubVelocity(lambda y, t: a + 0 * y), labels, steps=1)
    with pytest.raises(ValueError, match="model"):
        teacher_curvature(nn.Linear(2, 2), labels)


# --------------------------------------------------------------------------- the study and the CLI
@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("latent_stats")
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    images = (rng.random((30, 8, 8)) * 60 + 60 * labels[:, None, None]).astype(np.uint8)
    np.savez(d / "small.npz", images=images, labels=labels)
    teacher = d / "teacher"
    tiny_flow(num_classes=4).save_pretrained(teacher)  # 3 classes + null
    (teacher / "tokenizer.json").write_text(json.dumps({"spec": "pixel", "pixel_channels": 1}))
    return d


def test_run_latent_stats_and_tables(small_data):
    res = run_latent_stats({"pixel": "pixel", "pixel/2": "pixel"}, data=str(small_data / "small.npz"),
                           split="train", per_class=6, patch={"pixel/2": 2},
                           teachers={"t": str(small_data / "teacher")}, curvature_n=4, curvature_steps=3)
    px, p2 = res["spaces"]["pixel"], res["spaces"]["pixel/2"]
    assert res["num_images"] == 18 and px["class_counts"] == [6, 6, 6] and px["spec"] == "pixel"
    assert (px["num_tokens"], px["dim"], p2["num_tokens"], p2["dim"]) == (64, 1, 16, 4)
    assert px["pr"] == pytest.approx(1.0) and p2["rank_bound"] == 4  # 1-D tokens are trivially isotropic
    t = res["teachers"]["t"]
    assert t["n"] == 4 and t["steps"] == 3 and t["latent_space"]["spec"] == "pixel" and t["dim"] == 64
    text = format_latent_stats(res)
    for header in ("| Latent space | PR ↑ | SE ↑ |", "| Latent space | NN-d ↓ | S-MMD ↑ |", "| Teacher |",
                   "| pixel/2 | `pixel` | 1×8×8 | 2 | 16 | 4 | 6 |"):
        assert header in text
    assert "Teacher" not in format_latent_stats({**res, "teachers": {}})
    with pytest.raises(ValueError, match="per_class"):
        run_latent_stats({"pixel": "pixel"}, data=str(small_data / "small.npz"), split="train", per_class=11)
    with pytest.raises(ValueError, match="patch"):
        run_latent_stats({"pixel": "pixel"}, data=str(small_data / "small.npz"), split="train",
                         patch={"x": 2})
    with pytest.raises(ValueError, match="spaces"):
        run_latent_stats({}, data=str(small_data / "small.npz"))


def _parser():
    p = argparse.ArgumentParser(prog="drifting")
    add_latent_stats_parser(p.add_subparsers(dest="command"))
    return p


def test_cli_writes_json(small_data, tmp_path, capsys):
    out = tmp_path / "stats.json"
    a = _parser().parse_args(["latent-stats", "--space", "pixel=pixel", "--space", "p2=pixel", "--patch",
                              "p2=2", "--data", str(small_data / "small.npz"), "--split", "train",
                              "--per-class", "5", "--teacher", f"t={small_data / 'teacher'}", "--curvature-n",
                              "2", "--curvature-steps", "3", "--json", str(out), "--threads", "1",
                              "--no-progress"])
    assert a.func(a) == 0
    res = json.loads(out.read_text())
    assert (res["per_class"] == 5 and res["spaces"]["p2"]["patch"] == 2
            and res["spaces"]["pixel"]["patch"] == 1)
    assert res["teachers"]["t"]["n"] == 2
    assert "| Latent space | PR ↑ | SE ↑ |" in capsys.readouterr().out


def test_cli_errors_name_the_option(small_data, capsys):
    p = _parser()
    for bad in (["--space", "pixel"], ["--space", "=pixel"], ["--space", "a="]):
        with pytest.raises(SystemExit):
            p.parse_args(["latent-stats", *bad])
        assert "--space" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["latent-stats", "--space", "a=pixel", "--patch", "a=0"])
    assert "--patch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["latent-stats", "--space", "a=pixel", "--per-class", "1"])
    assert "--per-class" in capsys.readouterr().err
    data = ["--data", str(small_data / "small.npz"), "--split", "train", "--per-class", "3"]
    a = p.parse_args(["latent-stats", "--space", "a=pixel", "--space", "a=pixel", *data])
    with pytest.raises(ValueError, match="--space"):
        a.func(a)
    a = p.parse_args(["latent-stats", "--space", "a=pixel", "--patch", "b=2", *data])
    with pytest.raises(ValueError, match="--patch"):
        a.func(a)

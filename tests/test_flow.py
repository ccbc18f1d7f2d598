"""Flow matching on the DiT backbone (Drift-RAE Eq. 1-4): the time-conditioned DiT, the loss,
Euler sampling with CFG, and the trainer (exact resume, loss going down) on tiny configs."""

import argparse
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import drifting.recipes.flow as flow
from drifting.cli.cmd_flow import add_flow_parser
from drifting.data.images import load_dataset
from drifting.models.dit import DiTConfig, DriftingDiT, dit_config
from drifting.recipes.flow import (
    FlowTrainConfig,
    euler_sample,
    flow_matching_loss,
    flow_path,
    load_flow_model,
    null_class,
    sample_time,
    train_flow,
)
from drifting.training.checkpoint import load_state

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dit(**overrides) -> DiTConfig:
    base = dict(hidden=32, depth=2, heads=2, patch_size=7, in_context_tokens=2, style_tokens=0,
                num_classes=4, time_cond=True)
    return dit_config("cpu-tiny", **{**base, **overrides})


def adam_steps(model: DriftingDiT, steps: int = 3, seed: int = 1) -> DriftingDiT:
    """A few Adam steps toward random targets at random times (adaLN-Zero needs >= 2 steps for the
    conditioning to reach the output)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    B = 8
    y = torch.randn(B, 1, 28, 28, generator=g)
    labels = torch.randint(model.config.num_classes, (B,), generator=g)
    t = torch.rand(B, generator=g)
    target = torch.randn(B, 1, 28, 28, generator=g) * (1 + 3 * t.view(-1, 1, 1, 1))  # depends on t
    for _ in range(steps):
        loss = (model(y, labels, t=t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def trained() -> DriftingDiT:
    torch.manual_seed(0)
    return adam_steps(DriftingDiT(tiny_dit())).eval()


class FakeVelocity(nn.Module):
    """A known velocity field ``fn(y, labels, t)`` with the DiT's calling convention; records calls."""

    device = torch.device("cpu")

    def __init__(self, fn, num_classes: int = 3):
        super().__init__()
        self.fn = fn
        self.config = SimpleNamespace(time_cond=True, num_classes=num_classes, style_tokens=0, in_channels=1,
                                      input_size=4)
        self.calls = []

    def forward(self, y, labels, alpha=1.0, style=None, t=None):
        self.calls.append((y.clone(), labels.clone(), t.clone()))
        return self.fn(y, labels, t)


def col(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- the objective
def test_loss_regresses_eps_minus_y_on_the_linear_path():
    g = torch.Generator().manual_seed(0)
    y, eps = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    labels = torch.zeros(5, dtype=torch.long)

    y_t, target = flow_path(y, eps, t)
    assert torch.equal(y_t[0], y[0]) and torch.equal(y_t[-1], eps[-1])  # t = 0 data, t = 1 noise (Eq. 1)
    assert torch.allclose(y_t, (1 - col(t)) * y + col(t) * eps) and torch.equal(target, eps - y)

    seen = {}

    def oracle(y_t, labels, t):  # knows y, so (y_t - y) / t = eps - y exactly on the path
        seen["y_t"], seen["t"] = y_t, t
        return (y_t - y) / col(t).clamp_min(1e-12) * (col(t) > 0) + (eps - y) * (col(t) == 0)

    assert flow_matching_loss(oracle, y, labels, t, eps).item() < 1e-10
    assert torch.allclose(seen["y_t"], (1 - col(t)) * y + col(t) * eps) and torch.equal(seen["t"], t)
    # a wrong sign (y - eps) or the zero velocity are penalised by exactly what Eq. 4 says
    d2 = (eps - y).square().mean()
    assert torch.allclose(flow_matching_loss(lambda y_t, lab, t: y - eps, y, labels, t, eps), 4 * d2)
    assert torch.allclose(flow_matching_loss(lambda y_t, lab, t: torch.zeros_like(y), y, labels, t, eps), d2)


def test_sample_time():
    g = torch.Generator().manual_seed(0)
    u = sample_time(20000, "uniform", g)
    ln = sample_time(20000, "logit-normal", g)
    assert u.shape == ln.shape == (20000,)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert 0 < ln.min() and ln.max() < 1 and abs(ln.median() - 0.5) < 0.02
    assert (ln > 0.9).float().mean() < 0.05 < (u > 0.9).float().mean()  # logit-normal starves t ~ 1
    with pytest.raises(ValueError, match="how"):
        sample_time(3, "cosine")


# --------------------------------------------------------------------------- Euler sampling
def test_one_euler_step_is_z_minus_v_at_t1(trained):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 1, 28, 28, generator=g)
    labels = torch.tensor([0, 1, 2, 1])
    v1 = trained(z, labels, t=1.0)
    assert v1.abs().max() > 0  # a trained network, not the zero init
    assert torch.equal(euler_sample(trained, labels, 1, noise=z), z - v1)
    # CFG on the doubled batch equals the two separate forwards
    vu = trained(z, torch.full_like(labels, null_class(trained)), t=1.0)
    x = euler_sample(trained, labels, 1, noise=z, guidance_scale=2.0)
    assert torch.allclose(x, z - (vu + 2.0 * (v1 - vu)), atol=1e-5)
    # seeded noise: reproducible, and the same as passing that noise
    a = euler_sample(trained, labels, 2, generator=torch.Generator().manual_seed(7))
    b = euler_sample(trained, labels, 2,
                     noise=torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(7)))
    assert a.shape == (4, 1, 28, 28) and torch.equal(a, b)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_recovers_a_point_mass_exactly(steps):
    """Data = one point y0: v(y_t, t) = E[eps - y | y_t] = (y_t - y0) / t is constant along each straight
    path, so Euler at any step count lands on y0; the times visited are 1, 1 - dt, ..., dt."""
    y0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    m = FakeVelocity(lambda y, labels, t: (y - y0) / col(t))
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = euler_sample(m, [0, 1, 2], steps, noise=z)
    assert torch.allclose(x, y0.expand_as(x), atol=1e-5)
    ts = [c[2][0].item() for c in m.calls]
    assert ts == pytest.approx([1 - i / steps for i in range(steps)]) and ts[0] == 1.0
    assert all(c[1].tolist() == [0, 1, 2] for c in m.calls)


def test_euler_transports_a_gaussian_to_the_analytic_map():
    """Data ~ N(mu, s^2): Var(y_t) = (1-t)^2 s^2 + t^2, Cov(eps - y, y_t) = t - (1-t) s^2, so
    v(x, t) = -mu + (t - (1-t) s^2) / Var(y_t) (x - (1-t) mu), and the ODE from t = 1 to 0 is the
    monotone map z -> mu + s z. A reversed time direction or sign would not get there."""
    mu, s = 0.7, 0.3

    def v(x, labels, t):
        t = col(t)
        return -mu + (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2) * (x - (1 - t) * mu)

    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    x = euler_sample(FakeVelocity(v), [0, 0], 400, noise=z)
    assert torch.allclose(x, mu + s * z, atol=5e-3)
    x_coarse = euler_sample(FakeVelocity(v), [0, 0], 4, noise=z)
    assert (x_coarse - (mu + s * z)).abs().max() > 5e-3  # the tolerance above is not vacuous


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_cfg_combines_conditional_and_null_velocities(scale):
    a = torch.tensor([0.5, -1.0, 2.0])  # a constant velocity per class; class 2 is the null class
    m = FakeVelocity(lambda y, labels, t: a[labels].view(-1, 1, 1, 1).expand_as(y))
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    x = euler_sample(m, labels, 3, noise=z, guidance_scale=scale)
    v = a[2] + scale * (a[labels] - a[2])  # v_uncond + s (v_cond - v_uncond)
    assert torch.allclose(x, z - col(v), atol=1e-6)
    assert len(m.calls) == 3  # one forward per step
    want = [0, 1] if scale == 1.0 else [0, 1, 2, 2]  # cond | null batch only when guiding
    assert all(c[1].tolist() == want for c in m.calls)


def test_euler_sample_argument_errors(trained):
    z = torch.randn(2, 1, 28, 28)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            euler_sample(trained, [0, 1], bad, noise=z)
    for bad in (-0.5, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="guidance_scale"):
            euler_sample(trained, [0, 1], 2, noise=z, guidance_scale=bad)
    with pytest.raises(ValueError, match="labels"):
        euler_sample(trained, [[0, 1]], 2)
    with pytest.raises(ValueError, match="model"):
        euler_sample(DriftingDiT(tiny_dit(time_cond=False)), [0, 1], 2, noise=z)


# --------------------------------------------------------------------------- the time-conditioned DiT
def test_time_cond_zero_init_and_t_changes_the_output(trained):
    torch.manual_seed(0)
    fresh = DriftingDiT(tiny_dit())
    z, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    assert torch.equal(fresh(z, labels, t=0.5), torch.zeros_like(z))  # adaLN-Zero kept
    a, b = trained(z, labels, t=0.2), trained(z, labels, t=0.8)
    assert ((a - b).flatten(1).abs().amax(1) > 1e-4).all()  # every sample moves with t
    # float == 0-d tensor == [B] tensor; the ends of [0, 1] are accepted
    assert (torch.equal(a, trained(z, labels, t=torch.tensor(0.2)))
            and torch.equal(a, trained(z, labels, t=torch.full((4,), 0.2))))
    assert torch.isfinite(trained(z, labels, t=0.0)).all() and torch.isfinite(trained(z, labels, t=1)).all()


def test_time_cond_validation_errors(trained):
    z, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for bad in (None, 1.5, -0.1, float("nan"), True, "0.5", torch.rand(3), torch.rand(4, 1),
                torch.tensor([0.1, 0.2, 1.2, 0.3]), torch.tensor([0.1, float("nan"), 0.2, 0.3]),
                torch.ones(4, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"^t: "):
            trained(z, labels, t=bad)
    plain = DriftingDiT(tiny_dit(time_cond=False))
    with pytest.raises(ValueError, match=r"^t: .*time_cond=False"):
        plain(z, labels, t=0.5)
    with pytest.raises(ValueError, match="time_cond"):
        dit_config("cpu-tiny", time_cond="yes")


def test_time_cond_off_keeps_the_state_dict_and_old_exports(tmp_path):
    torch.manual_seed(0)
    plain = DriftingDiT(tiny_dit(time_cond=False, style_tokens=4, codebook_size=8))
    assert not any("time" in k for k in plain.state_dict())
    adam_steps_plain = torch.optim.Adam(plain.parameters(), lr=1e-2)  # make the weights non-trivial
    for _ in range(2):
        adam_steps_plain.zero_grad()
        plain(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]),
              style=torch.zeros(2, 4, dtype=torch.long)).sum().backward()
        adam_steps_plain.step()
    plain.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["time_cond"]  # an export written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = DriftingDiT.from_pretrained(tmp_path)
    z, labels, style = torch.randn(2, 1, 28, 28), torch.tensor([2, 3]), torch.ones(2, 4, dtype=torch.long)
    assert not back.config.time_cond and torch.equal(back(z, labels, 1.5, style),
                                                     plain(z, labels, 1.5, style))
    with pytest.raises(ValueError, match="model_dir"):
        load_flow_model(tmp_path)  # a one-step generator is not a flow model


# --------------------------------------------------------------------------- the trainer

def tiny_cfg(data: str, **kw) -> FlowTrainConfig:
    base = dict(data=data, generator="cpu-tiny",
                generator_overrides=dict(hidden=32, depth=1, heads=2, patch_size=7, in_context_tokens=2),
                steps=6, batch=8, warmup=2, ema_warmup=3, ckpt_every=3, log_every=1, sample_every=4,
                sample_steps=2)
    return FlowTrainConfig(**{**base, **kw})


def test_resume_equals_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch, crash_at, flat_tensors):
    cfg = tiny_cfg(tiny_data)
    real = flow.flow_matching_loss
    crash = crash_at(real, 5)

    monkeypatch.setattr(flow, "flow_matching_loss", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_flow(cfg, tmp_path / "run", progress=False)
    assert load_state(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    monkeypatch.setattr(flow, "flow_matching_loss", real)
    res = train_flow(cfg, tmp_path / "run", progress=False)  # resume=True picks the checkpoint up
    ref = train_flow(cfg, tmp_path / "ref", progress=False)
    assert res["steps"] == ref["steps"] == 6 and res["final_loss"] == ref["final_loss"]
    a, b = load_state(tmp_path / "run" / "checkpoint.pt"), load_state(tmp_path / "ref" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        fa, fb = flat_tensors(a[part]), flat_tensors(b[part])
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), part
    fa, fb = flat_tensors(a["optimizer"]["state"]), flat_tensors(b["optimizer"]["state"])
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(ln) for ln in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3, 4, 5, 6]  # the crashed run's step-4 line was replaced
    assert [ln["loss"] for ln in lines] == [ln["loss"] for ln in ref_lines]
    assert (tmp_path / "run" / "samples_000004.png").is_file()
    # another configuration cannot continue this checkpoint; resume=False starts over
    with pytest.raises(ValueError, match="configuration"):
        train_flow(replace(cfg, lr=5e-4), tmp_path / "run", progress=False)
    again = train_flow(replace(cfg, steps=2, lr=5e-4), tmp_path / "run", progress=False, resume=False)
    assert again["steps"] == 2 and len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2


def test_training_lowers_the_loss_and_exports_a_flow_model(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, steps=100, batch=16, lr=3e-3, warmup=5, ema_decays=(0.9,), ema_warmup=0,
                   ckpt_every=100, log_every=1, sample_every=1000, sample_steps=4)
    res = train_flow(cfg, tmp_path, progress=False)
    assert res["steps"] == 100 and res["train_seconds"] > 0 and res["model_dir"] == str(tmp_path / "model")
    model = load_flow_model(res["model_dir"])
    assert model.config.time_cond and model.config.num_classes == 11 and null_class(model) == 10
    assert json.loads((tmp_path / "model" / "train_config.json").read_text())["steps"] == 100

    # Eq. 4 on a fixed batch: the exported EMA model against the zero-output init (loss = E||eps - y||^2)
    ds = load_dataset(tiny_data, "train")
    g = torch.Generator().manual_seed(123)
    y = ds.to_tensor(np.arange(32))
    eps, t = torch.randn(y.shape, generator=g), torch.rand(32, generator=g)
    labels = torch.from_numpy(ds.labels[:32])
    with torch.no_grad():
        before = (eps - y).square().mean().item()
        after = flow_matching_loss(model, y, labels, t, eps).item()
    assert after < 0.7 * before, (before, after)
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 100 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])

    from PIL import Image

    w, h = Image.open(tmp_path / "samples.png").size  # 10 columns x 10 classes of 28 px (+ padding, x2)
    assert (w, h) == (2 * (10 * 30 + 2), 2 * (10 * 30 + 2))


def test_label_dropout_uses_the_null_class(tiny_data, tmp_path, monkeypatch):
    seen = []
    real = flow.flow_matching_loss

    def record(model, y, labels, t, eps):
        seen.append(labels.clone())
        assert y.min() >= -1 and y.max() <= 1 and y.shape == (8, 1, 28, 28)  # pixels like the image trainer
        return real(model, y, labels, t, eps)

    monkeypatch.setattr(flow, "flow_matching_loss", record)
    for p, check in ((1.0, lambda lab: (lab == 10).all()), (0.0, lambda lab: (lab < 10).all())):
        seen.clear()
        train_flow(tiny_cfg(tiny_data, steps=2, label_dropout=p, sample_steps=1), tmp_path / str(p),
                   progress=False)
        assert len(seen) == 2 and all(check(lab) for lab in seen)


def test_config_validation_names_the_field():
    cases = [("steps", dict(steps=0)), ("batch", dict(batch=-1)), ("lr", dict(lr=0.0)),
             ("label_dropout", dict(label_dropout=1.5)), ("time_sampling", dict(time_sampling="cosine")),
             ("ema_decays", dict(ema_decays=(1.0,))), ("ema_warmup", dict(ema_warmup=-1)),
             ("generator", dict(generator="huge")),
             ("generator_overrides", dict(generator_overrides={"time_cond": False})),
             ("generator_overrides", dict(generator_overrides={"width": 3})),
             ("sample_steps", dict(sample_steps=0)), ("sample_guidance", dict(sample_guidance=-1.0)),
             ("weight_decay", dict(weight_decay=-0.1))]
    for name, kw in cases:
        with pytest.raises(ValueError, match=rf"FlowTrainConfig\.{name}:"):
            FlowTrainConfig(**kw).validate()
    assert FlowTrainConfig().validate().time_sampling == "uniform"


def test_train_flow_cli(tiny_data, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="drifting")
    add_flow_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["train-flow", "--out", str(tmp_path), "--data", tiny_data, "--generator",
                           "cpu-tiny", "--steps", "2", "--batch", "4", "--sample-steps", "1", "--threads",
                           "1", "--no-progress"])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "trained 2 flow-matching steps" in out and str(tmp_path / "model") in out
    assert load_flow_model(tmp_path / "model").config.hidden == 64  # the full cpu-tiny preset


def test_time_budget_ends_the_run_like_its_last_step(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, steps=10_000, minutes=1e-9, ckpt_every=10_000, log_every=10_000, sample_steps=1)
    res = train_flow(cfg, tmp_path, progress=False)
    assert res["steps"] == 1 and res["steps_per_second"] > 0  # the first step boundary past the budget
    assert [json.loads(ln)["step"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]
    assert int(load_state(tmp_path / "checkpoint.pt")["step"]) == 1  # logged and checkpointed
    assert (tmp_path / "model" / "model.safetensors").is_file()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"FlowTrainConfig\.minutes:"):
            FlowTrainConfig(minutes=bad).validate()


def test_a_checkpoint_from_before_the_time_budget_resumes(tiny_data, tmp_path):
    from drifting.training.checkpoint import save_state

    cfg = tiny_cfg(tiny_data, steps=2, ckpt_every=1, sample_steps=1)
    train_flow(replace(cfg, steps=1), tmp_path, progress=False)
    state = load_state(tmp_path / "checkpoint.pt")
    state["config"].pop("minutes")  # written before the option existed
    state["config"]["steps"] = 2
    save_state(tmp_path / "checkpoint.pt", state)
    assert train_flow(cfg, tmp_path, progress=False)["steps"] == 2


def test_the_flow_peer_on_the_conv_backbone(tiny_data, tmp_path):
    from drifting.models.convnet import ConvGenerator

    cfg = tiny_cfg(tiny_data, generator="conv-tiny", generator_overrides={}, steps=2, sample_steps=1)
    train_flow(cfg, tmp_path, progress=False)
    model = load_flow_model(tmp_path / "model")
    assert isinstance(model, ConvGenerator) and model.config.time_cond and null_class(model) == 10
    assert model.config.style_tokens == 0 and model.config.alpha_mlp is False
    with pytest.raises(ValueError, match="generator_overrides"):
        FlowTrainConfig(generator="conv-tiny", generator_overrides={"patch_size": 4}).validate()


def test_learning_curve_and_lr_decay(tiny_data, tmp_path, monkeypatch, crash_at):
    """eval_every writes OUT/curve.json (a point every eval_every steps and at the end, one entry per Euler
    step count, the evaluations' time left out of the training time); a crashed run resumes its curve from
    the checkpoint; lr_decay ramps the lr to 0 over the last fraction of the steps."""
    import time

    import drifting.recipes.classify as classify

    calls, offset, clock = [], [0.0], time.perf_counter

    def fake_eval(data, n, sample, progress=False):
        labels = torch.arange(n) % 10
        images = sample(labels)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        calls.append(n)
        offset[0] += 1000.0  # an evaluation that takes 1000 s of the clock: not training time
        return {"accuracy": float(len(calls))}

    monkeypatch.setattr(classify, "evaluate_samples", fake_eval)
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + offset[0])
    cfg = tiny_cfg(tiny_data, steps=5, eval_every=2, eval_samples=6, eval_euler_steps=(1, 3), lr=1e-3,
                   warmup=2, lr_decay=0.5)
    real = flow.flow_matching_loss
    monkeypatch.setattr(flow, "flow_matching_loss", crash_at(real, 5))  # steps 1-4 run, checkpoint at 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_flow(cfg, tmp_path, progress=False)
    assert [p["step"] for p in json.loads((tmp_path / "curve.json").read_text())] == [2, 4]
    monkeypatch.setattr(flow, "flow_matching_loss", real)
    res = train_flow(cfg, tmp_path, progress=False)
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4, 5]  # the crashed run's step-4 point was replaced
    assert all(set(p) == {"step", "time", "euler1", "euler3"} and p["euler1"]["accuracy"] > 0 for p in curve)
    assert calls == [6] * 8  # 2 points before the crash, 2 after (4 and 5), 2 step counts each
    times = [p["time"] for p in curve]
    assert times == sorted(times) and res["train_seconds"] < 1000  # 8000 s of evaluations on the clock
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    # warm-up over 2 steps, then the last half of the 5 steps ramps to 0: factor min(1, (1 - step / 5) / 0.5)
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 8e-4, 4e-4])
    for bad in (dict(lr_decay=1.5), dict(eval_euler_steps=()), dict(eval_samples=0), dict(eval_every=-1)):
        with pytest.raises(ValueError, match=rf"FlowTrainConfig\.{next(iter(bad))}:"):
            FlowTrainConfig(**bad).validate()


def test_sample_cli_draws_euler_samples_from_a_flow_model(tiny_data, tmp_path, capsys):
    from drifting.cli import main

    train_flow(tiny_cfg(tiny_data, steps=2, sample_steps=1), tmp_path / "run", progress=False)
    model_dir = str(tmp_path / "run" / "model")
    out = tmp_path / "s.npz"
    argv = ["sample", model_dir, "--num", "12", "--euler-steps", "3", "--seed", "5", "--out", str(out)]
    assert main(argv) == 0
    z = np.load(out)
    assert z["images"].shape == (12, 28, 28, 1) and z["labels"].tolist() == [i % 10 for i in range(12)]
    # the same images as the library's sampler (labels of the 10 real classes, never the null class 10)
    ref = flow.flow_generate(load_flow_model(model_dir), torch.arange(12) % 10, 3, seed=5)
    assert np.array_equal(z["images"], ref)
    capsys.readouterr()
    assert main(["sample", model_dir, "--num", "4", "--out", str(out)]) == 2  # a flow model needs the steps
    assert "--euler-steps" in capsys.readouterr().err
    argv = ["sample", model_dir, "--num", "4", "--euler-steps", "2", "--guidance", "-1", "--out", str(out)]
    assert main(argv) == 2
    assert "--guidance" in capsys.readouterr().err

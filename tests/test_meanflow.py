"""MeanFlow (Geng et al. 2025), the one-step peer: the (r, t) sampler, the identity's target against the
exact average velocity of a Gaussian, the loss, the interval-conditioned networks, the K-step sampler,
training (exact resume) and its place in ``drifting peers``."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import drifting.recipes.classify as classify
from drifting.cli import main
from drifting.models.convnet import ConvGenConfig, ConvGenerator, conv_config
from drifting.models.dit import DiTConfig, DriftingDiT, dit_config
from drifting.recipes.flow import FlowTrainConfig, euler_sample, flow_path, load_flow_model, train_flow
from drifting.recipes.meanflow import adaptive_loss, meanflow_loss, meanflow_target, sample_interval
from drifting.recipes.peers import peer_configs, run_peers
from drifting.training.checkpoint import load_state

pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every weight matrix redrawn (the zero-initialised output layer would make u = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def interval_conv(**kw) -> ConvGenerator:
    torch.manual_seed(0)
    cfg = conv_config("conv-tiny", input_size=8, num_classes=5, time_cond=True, interval_cond=True,
                      style_tokens=0, alpha_mlp=False, **kw)
    return perturbed(ConvGenerator(cfg)).eval()


# --------------------------------------------------------------------------- the (r, t) sampler
def test_sample_interval_orders_the_pair_and_keeps_the_ratio():
    g = torch.Generator().manual_seed(0)
    r, t = sample_interval(1000, -0.4, 1.0, 0.25, g)
    assert r.shape == t.shape == (1000,) and bool(((0 <= r) & (r <= t) & (t <= 1)).all())
    assert int((r < t).sum()) == 250 and bool((r[250:] == t[250:]).all())
    # t is the larger of two logit-normal(-0.4, 1) draws: its median m solves Phi(logit(m) + 0.4)^2 = 1/2,
    # logit(m) = -0.4 + Phi^-1(sqrt(1/2)) = -0.4 + 0.5449
    m = 1 / (1 + math.exp(-(-0.4 + 0.5449)))
    assert abs(float(t.median()) - m) < 0.03
    r0, t0 = sample_interval(64, 0.0, 1.0, 0.0, g)
    assert torch.equal(r0, t0)
    r1, t1 = sample_interval(64, 0.0, 1.0, 1.0, g)
    assert bool((r1 < t1).all())
    with pytest.raises(ValueError, match="ratio"):
        sample_interval(8, 0.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="sigma"):
        sample_interval(8, 0.0, 0.0, 0.5)


# --------------------------------------------------------------------------- the identity's target
def gaussian_average_velocity(s: float):
    """Data N(0, s^2 I), noise N(0, I), z_t = (1 - t) x + t eps: the marginal std is
    sigma_t = sqrt((1 - t)^2 s^2 + t^2), the flow ODE scales z by sigma_t, so the exact average velocity is
    u(z, r, t) = z (1 - sigma_r / sigma_t) / (t - r), the instantaneous one v(z, t) = z sigma_t' / sigma_t."""
    def sigma(t):
        return ((1 - t) ** 2 * s ** 2 + t ** 2).sqrt()

    def v(z, t):
        tt = t.view(-1, 1, 1, 1)
        return z * (tt - (1 - tt) * s ** 2) / sigma(tt) ** 2

    def u(z, t, h):
        tt, hh = t.view(-1, 1, 1, 1), h.view(-1, 1, 1, 1)
        return z * (1 - sigma(tt - hh) / sigma(tt)) / hh

    return u, v


def test_the_target_equals_the_exact_average_velocity_of_a_gaussian():
    """Eq. 6 holds for the true u with the marginal v: the target (Eq. 10) computed by the JVP is u itself.
    A wrong sign of (t - r) d/dt u, a missing d_t u or a tangent on r instead of t breaks the equality."""
    torch.set_default_dtype(torch.float64)
    try:
        u_fn, v_fn = gaussian_average_velocity(0.5)
        g = torch.Generator().manual_seed(0)
        B = 16
        z = torch.randn(B, 1, 3, 3, generator=g)
        t = 0.2 + 0.8 * torch.rand(B, generator=g)
        r = t * torch.rand(B, generator=g) * 0.9
        u, target = meanflow_target(u_fn, z, v_fn(z, t), r, t)
        torch.testing.assert_close(u, u_fn(z, t, t - r))
        torch.testing.assert_close(target, u, rtol=1e-9, atol=1e-9)
        assert not target.requires_grad
        # the correction term is not small here: the target is far from v
        assert float((target - v_fn(z, t)).abs().max()) > 0.05
        # the opposite sign of the correction (a wrong identity) misses by as much
        wrong = 2 * v_fn(z, t) - target
        assert float((wrong - u).abs().max()) > 0.05
    finally:
        torch.set_default_dtype(torch.float32)


def test_the_jvp_matches_autograd_double_backward_on_a_network():
    """The JVP of the interval-conditioned U-Net along (v, 1, 1) in (z, t, h), against PyTorch's reverse-mode
    double-backward jvp (an independent route)."""
    model = interval_conv()
    g = torch.Generator().manual_seed(1)
    B = 4
    z = torch.randn(B, 1, 8, 8, generator=g)
    v = torch.randn(B, 1, 8, 8, generator=g)
    t = 0.3 + 0.7 * torch.rand(B, generator=g)
    r = t * torch.rand(B, generator=g)
    labels = torch.randint(5, (B,), generator=g)

    def fn(zz, tt, hh):
        return model(zz, labels, t=tt, h=hh)

    u, target = meanflow_target(fn, z, v, r, t)
    _, dudt = torch.autograd.functional.jvp(fn, (z, t, t - r), (v, torch.ones(B), torch.ones(B)))
    torch.testing.assert_close(target, v - (t - r).view(-1, 1, 1, 1) * dudt, rtol=1e-4, atol=1e-5)
    assert float(dudt.abs().max()) > 1e-3


def test_the_loss_without_r_ne_t_is_flow_matching_and_the_weight_is_adaptive():
    model = interval_conv()
    g = torch.Generator().manual_seed(2)
    B = 6
    y = torch.randn(B, 1, 8, 8, generator=g)
    eps = torch.randn(B, 1, 8, 8, generator=g)
    labels = torch.randint(5, (B,), generator=g)
    t = torch.rand(B, generator=g)
    z, v = flow_path(y, eps, t)
    sq = (model(z, labels, t=t, h=0.0) - v).square().flatten(1).sum(1)  # [B]
    stats = {}
    torch.testing.assert_close(meanflow_loss(model, y, labels, t, t, eps, p=0.0, stats=stats), sq.mean())
    torch.testing.assert_close(stats["mse"], sq.mean() / 64)  # per element of the 1 x 8 x 8 samples
    torch.testing.assert_close(meanflow_loss(model, y, labels, t, t, eps, p=1.0, c=0.5),
                               (sq / (sq + 0.5)).mean())
    # the weight is a constant of the gradient: d/du [sg(w) |d|^2] = 2 w d
    u = torch.randn(3, 4, requires_grad=True)
    tgt = torch.zeros(3, 4)
    adaptive_loss(u, tgt, 1.0, 1e-3).backward()
    w = 1 / (u.detach().square().sum(1, keepdim=True) + 1e-3)
    torch.testing.assert_close(u.grad, 2 * w * u.detach() / 3)


def test_the_loss_mixes_jvp_and_plain_pairs():
    """With some r < t the loss is the mean over all pairs of each part's own term."""
    model = interval_conv()
    g = torch.Generator().manual_seed(3)
    B = 6
    y, eps = torch.randn(B, 1, 8, 8, generator=g), torch.randn(B, 1, 8, 8, generator=g)
    labels = torch.randint(5, (B,), generator=g)
    t = 0.2 + 0.8 * torch.rand(B, generator=g)
    r = torch.where(torch.arange(B) < 3, t * 0.5, t)
    z, v = flow_path(y, eps, t)
    u_j, tgt_j = meanflow_target(lambda a, b, c: model(a, labels[:3], t=b, h=c), z[:3], v[:3], r[:3], t[:3])
    sq = torch.cat([(u_j - tgt_j).square().flatten(1).sum(1),
                    (model(z[3:], labels[3:], t=t[3:], h=0.0) - v[3:]).square().flatten(1).sum(1)])
    torch.testing.assert_close(meanflow_loss(model, y, labels, r, t, eps, p=0.0), sq.mean())
    loss = meanflow_loss(model, y, labels, r, t, eps)
    loss.backward()  # the gradient reaches the weights through both parts
    assert model.out.weight.grad is not None and float(model.out.weight.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- the networks and the sampler
@pytest.mark.parametrize("kind", ["conv", "dit"])
def test_interval_conditioning_of_both_backbones(kind):
    if kind == "conv":
        model = interval_conv()
        cls, bad_cfg = ConvGenConfig, lambda: conv_config("conv-tiny", interval_cond=True)
    else:
        torch.manual_seed(0)
        cfg = dit_config("cpu-tiny", hidden=32, depth=1, heads=2, patch_size=7, in_context_tokens=0,
                         style_tokens=0, num_classes=4, time_cond=True, interval_cond=True)
        model = perturbed(DriftingDiT(cfg)).eval()
        cls, bad_cfg = DiTConfig, lambda: dit_config("cpu-tiny", interval_cond=True)
    assert "interval_embed.mlp.0.weight" in model.state_dict()
    n = model.config.input_size
    z = torch.randn(2, 1, n, n)
    labels = torch.tensor([0, 1])
    a, b = model(z, labels, t=0.7, h=0.1), model(z, labels, t=0.7, h=0.6)
    assert float((a - b).abs().max()) > 1e-4  # h reaches the output
    with pytest.raises(ValueError, match=r"^h: .*interval-conditioned"):
        model(z, labels, t=0.7)
    with pytest.raises(ValueError, match=r"^h: .*\[0, 1\]"):
        model(z, labels, t=0.7, h=1.5)
    with pytest.raises(ValueError, match=f"{cls.__name__}.interval_cond: needs time_cond"):
        bad_cfg()


@pytest.mark.parametrize("make", [lambda **k: conv_config("conv-tiny", input_size=8, time_cond=True, **k),
                                  lambda **k: dit_config("cpu-tiny", time_cond=True, **k)])
def test_the_time_scale_sets_the_embedders_frequencies(make):
    """t and h enter as sincos(time_scale * t): the embedding of t at scale s is that of s t / 1000 at the
    default 1000, in both embedders; a bad scale names the field."""
    from drifting.models.dit import TIME_SCALE, TimestepEmbedder

    assert make().time_scale == TIME_SCALE == 1000.0
    cfg = make(time_scale=10.0, interval_cond=True)
    torch.manual_seed(0)
    fast, slow = TimestepEmbedder(cfg), TimestepEmbedder(cfg, cfg.time_scale)
    slow.load_state_dict(fast.state_dict())
    t = torch.tensor([0.25, 0.8])
    assert torch.allclose(slow(t), fast(t * 10.0 / 1000.0), atol=1e-6)
    assert not torch.allclose(slow(t), fast(t), atol=1e-3)
    model = (ConvGenerator if isinstance(cfg, ConvGenConfig) else DriftingDiT)(cfg)
    assert model.time_embed.scale == model.interval_embed.scale == 10.0
    with pytest.raises(ValueError, match="time_scale: must be a number > 0"):
        make(time_scale=0.0)


def test_a_flow_model_refuses_h():
    torch.manual_seed(0)
    model = ConvGenerator(conv_config("conv-tiny", input_size=8, time_cond=True))
    assert not any(k.startswith("interval_embed") for k in model.state_dict())
    with pytest.raises(ValueError, match=r"^h: .*interval_cond=False"):
        model(torch.randn(1, 1, 8, 8), torch.tensor([0]), t=0.5, h=0.5)


def test_one_and_two_step_sampling_use_the_average_velocity():
    model = interval_conv()
    labels = torch.tensor([0, 3])
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        one = z - model(z, labels, t=1.0, h=1.0)  # x = z - u(z, 0, 1)
        mid = z - 0.5 * model(z, labels, t=1.0, h=0.5)
        two = mid - 0.5 * model(mid, labels, t=0.5, h=0.5)
    torch.testing.assert_close(euler_sample(model, labels, 1, noise=z), one)
    torch.testing.assert_close(euler_sample(model, labels, 2, noise=z), two)


# --------------------------------------------------------------------------- training
def tiny_meanflow(data: str, **kw) -> FlowTrainConfig:
    base = dict(data=data, generator="conv-tiny", objective="meanflow", meanflow_ratio=0.5, steps=6, batch=8,
                warmup=2, ema_warmup=3, ckpt_every=3, log_every=1, sample_every=100, sample_steps=1)
    return FlowTrainConfig(**{**base, **kw})


def test_meanflow_training_resumes_exactly_and_exports_a_one_step_model(tiny_data, tmp_path, monkeypatch,
                                                                         crash_at):
    import drifting.recipes.meanflow as mf_module

    cfg = tiny_meanflow(tiny_data)
    real = mf_module.meanflow_loss
    monkeypatch.setattr(mf_module, "meanflow_loss", crash_at(real, 5))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_flow(cfg, tmp_path / "run", progress=False)
    assert load_state(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    monkeypatch.setattr(mf_module, "meanflow_loss", real)
    res = train_flow(cfg, tmp_path / "run", progress=False)
    ref = train_flow(cfg, tmp_path / "ref", progress=False)
    assert res["steps"] == ref["steps"] == 6 and res["final_loss"] == ref["final_loss"]
    a, b = load_state(tmp_path / "run" / "checkpoint.pt"), load_state(tmp_path / "ref" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model = load_flow_model(tmp_path / "ref" / "model")
    assert model.config.interval_cond and model.config.time_cond
    logged = [json.loads(line) for line in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    assert all(line["mse"] > 0 for line in logged)  # the unweighted error beside the adaptive loss
    saved = json.loads((tmp_path / "ref" / "model" / "train_config.json").read_text())
    assert saved["objective"] == "meanflow"
    x = euler_sample(model, torch.arange(4), 1)
    assert x.shape == (4, 1, 28, 28) and bool(torch.isfinite(x).all())


def test_meanflow_learns_a_shifted_gaussian_in_one_step(tmp_path):
    """On data N(0.5, 0.2^2) per pixel (one class, an .npz of 4x4 images), a short run's one-step samples move
    from the noise (mean 0, std 1) to the data's mean and a smaller std."""
    g = np.random.default_rng(0)
    px = np.clip(0.5 + 0.2 * g.standard_normal((512, 4, 4, 1)), -1, 1)  # pixels in [-1, 1]
    imgs = ((px + 1) * 127.5).round().astype(np.uint8)
    np.savez(tmp_path / "g.npz", images=imgs, labels=np.zeros(512, dtype=np.int64))
    cfg = FlowTrainConfig(data=str(tmp_path / "g.npz"), generator="conv-tiny",
                          generator_overrides=dict(widths=(8,), hidden=32, gn_groups=4),
                          objective="meanflow", meanflow_ratio=0.5, steps=150, batch=32, lr=3e-3, warmup=10,
                          ema_decays=(0.9,), ema_warmup=0, label_dropout=0.0, ckpt_every=1000,
                          sample_every=1000, sample_steps=1, log_every=50)
    train_flow(cfg, tmp_path / "run", progress=False)
    model = load_flow_model(tmp_path / "run" / "model")
    x = euler_sample(model, torch.zeros(512, dtype=torch.long), 1, generator=torch.Generator().manual_seed(0))
    assert abs(float(x.mean()) - 0.5) < 0.15
    assert float(x.std()) < 0.5


def test_meanflow_config_errors_name_the_field():
    for field, value in (("objective", "gan"), ("meanflow_ratio", 1.5), ("meanflow_time", (0.0, -1.0)),
                         ("meanflow_p", -1.0), ("meanflow_c", 0.0)):
        with pytest.raises(ValueError, match=f"FlowTrainConfig.{field}"):
            replace(FlowTrainConfig(), **{field: value}).validate()


def test_train_flow_cli_meanflow_options(tiny_data, tmp_path, capsys):
    out = tmp_path / "mf"
    assert main(["train-flow", "--out", str(out), "--data", tiny_data, "--generator", "conv-tiny",
                 "--steps", "2", "--batch", "4", "--objective", "meanflow", "--meanflow-time", "-2", "2",
                 "--meanflow-ratio", "0.75", "--meanflow-p", "0.75", "--sample-steps", "1",
                 "--no-progress"]) == 0
    assert "MeanFlow steps" in capsys.readouterr().out
    cfg = json.loads((out / "model" / "train_config.json").read_text())
    assert (cfg["objective"], cfg["meanflow_time"], cfg["meanflow_ratio"], cfg["meanflow_p"]) == (
        "meanflow", [-2.0, 2.0], 0.75, 0.75)


# --------------------------------------------------------------------------- drifting peers
def test_the_meanflow_peer_shares_the_flow_peer_budget_and_tuning():
    c = peer_configs(preset="cpu", steps=300, flow={"lr": 3e-3}, meanflow={"meanflow_ratio": 0.5})
    f, m = c["flow"], c["meanflow"]
    assert m.objective == "meanflow" and f.objective == "flow"
    assert (m.steps, m.batch, m.generator, m.lr) == (f.steps, f.batch, f.generator, 3e-3)
    assert m.meanflow_ratio == 0.5
    assert peer_configs(minutes=15)["meanflow"].minutes == 15


def test_the_peers_start_from_their_own_tuning():
    c = peer_configs(preset="cpu", steps=300)
    f, m = c["flow"], c["meanflow"]
    assert (f.lr, f.lr_decay, f.generator_overrides) == (3e-3, 0.5, {})
    assert (m.lr, m.lr_decay, m.meanflow_ratio) == (1e-3, 0.5, 0.5)
    assert m.generator_overrides == {"time_scale": 1.0}
    m = peer_configs(steps=300, flow={"lr": 2e-3}, meanflow={"generator_overrides": {"blocks": 2}})
    m = m["meanflow"]
    assert m.lr == 2e-3 and m.generator_overrides == {"time_scale": 1.0, "blocks": 2}  # merged, not replaced


def test_run_peers_scores_meanflow_at_one_and_two_steps(tmp_path, monkeypatch, standin_path):
    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    res = run_peers(tmp_path, preset="cpu-tiny", steps=2, methods=("meanflow",), eval_n=20,
                    inception=standin_path, progress=False, train_seed=3)  # the DiT: attention under the JVP
    assert [(r["method"], r["nfe"]) for r in res["rows"]] == [("MeanFlow, 1 step", 1),
                                                              ("MeanFlow, 2 steps", 2)]
    assert all(np.isfinite(r["fid"]) and r["train_steps"] == 2 for r in res["rows"])
    assert res["configs"]["meanflow"]["objective"] == "meanflow" and res["configs"]["meanflow"]["seed"] == 3


def test_peers_cli_meanflow_and_seed_options(tmp_path, monkeypatch, capsys):
    seen = {}
    import drifting.cli.cmd_peers as command

    monkeypatch.setattr(command, "run_peers",
                        lambda out, **k: seen.update(k) or {"rows": [], "eval_n": 1, "ref": "x"})
    assert main(["peers", "--out", str(tmp_path), "--methods", "drifting,meanflow", "--train-seed", "2",
                 "--meanflow", '{"meanflow_ratio": 0.5}']) == 0
    assert seen["methods"] == ("drifting", "meanflow") and seen["train_seed"] == 2
    assert seen["meanflow"] == {"meanflow_ratio": 0.5}
    assert main(["peers", "--out", str(tmp_path), "--meanflow", "[1]"]) == 2
    assert "--meanflow: expected a JSON object" in capsys.readouterr().err

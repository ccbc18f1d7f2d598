"""Drift-RAE distillation (Zhang et al. 2026, §3.3, Table 8, App. C): the one-step map, the
per-token loss against a literal transcription of Eq. 10-11, the perturbation, detached
negatives, and the trainer (schedules, exact resume, latent teachers, from-scratch variants)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import drifting.recipes.distill as dr
from drifting.cli import main
from drifting.data.images import load_dataset
from drifting.field import compute_V
from drifting.models.dit import DriftingDiT, dit_config
from drifting.models.tokenizer import tiny_autoencoder_kl
from drifting.recipes.distill import DistillConfig, distill, distill_preset, drift_rae_loss, one_step, tokens
from drifting.recipes.flow import FlowTrainConfig, euler_sample, flow_generate, load_flow_model, train_flow
from drifting.recipes.image_sampling import model_tokenizer
from drifting.training.checkpoint import load_state
from drifting.training.schedules import linear_decay_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_flow_dit(**kw):
    base = dict(hidden=32, depth=1, heads=2, patch_size=7, in_context_tokens=2, style_tokens=0, num_classes=5,
                time_cond=True)
    return dit_config("cpu-tiny", **{**base, **kw})


def trained_dit() -> DriftingDiT:
    """A tiny flow DiT whose output is not zero (adaLN-Zero starts at v = 0)."""
    torch.manual_seed(0)
    m = DriftingDiT(tiny_flow_dit())
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        y = torch.randn(6, 1, 28, 28, generator=g)
        loss = (m(y, torch.arange(6) % 5, t=torch.rand(6, generator=g)) - y.flip(-1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


# --------------------------------------------------------------------------- Eq. 8 and Eq. 9
def test_one_step_is_z_minus_v_at_t1():
    m = trained_dit()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 1, 28, 28, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        G = one_step(m, z, labels)
        v1 = m(z, labels, t=torch.ones(4))
    assert v1.abs().max() > 1e-3  # a non-trivial velocity, so the test can fail
    assert torch.equal(G, z - v1)  # Eq. 8
    # = one Euler step of the teacher
    assert torch.allclose(G, euler_sample(m, labels, 1, noise=z), atol=1e-6)
    with torch.no_grad():  # t = 1 matters: another time gives another map
        assert not torch.allclose(G, z - m(z, labels, t=torch.full((4,), 0.5)), atol=1e-4)


def test_tokens_are_spatial_positions():
    x = torch.randn(2, 3, 4, 2, 5)  # [G, n, c, h, w]
    t = tokens(x)
    assert t.shape == (2 * 10, 3, 4)
    for gi in range(2):
        for i in range(2):
            for j in range(5):
                assert torch.equal(t[gi * 10 + i * 5 + j], x[gi, :, :, i, j])  # token (i, j): [n, c]
    with pytest.raises(ValueError, match="latents"):
        tokens(torch.randn(3, 4, 2, 2))


# --------------------------------------------------------------------------- Eq. 10-11, literally
def eq11_literal(xq, pos, negs, tau):
    """Eq. 11 for one token: xq [N, D] (the first N rows of negs), pos [P, D], negs [M, D]; loops."""
    out = []
    for j in range(xq.shape[0]):
        x = xq[j]
        wp = torch.stack([torch.exp(-(pos[i] - x).norm() / tau) for i in range(pos.shape[0])])
        ks = [k for k in range(negs.shape[0]) if k != j]
        wn = torch.stack([torch.exp(-(negs[k] - x).norm() / tau) for k in ks])
        vp = sum(wp[i] * (pos[i] - x) for i in range(pos.shape[0])) / wp.sum()
        vn = sum(wn[a] * (negs[k] - x) for a, k in enumerate(ks)) / wn.sum()
        out.append(vp - vn)
    return torch.stack(out)


def literal_grad(x, pos, extra, temps, field):
    """d loss / d x of Eq. 10 (mean over samples and tokens, mean over temperatures), token by token."""
    G, N, c, h, w = x.shape
    grad = torch.zeros_like(x)
    for gi in range(G):
        for i in range(h):
            for j in range(w):
                q = x[gi, :, :, i, j]  # [N, c]
                p = pos[gi, :, :, i, j]
                m = torch.cat([q, extra[gi, :, :, i, j]]) if extra is not None else q
                for tau in temps:
                    V = field(q, p, m, tau)
                    V = V / V.norm(dim=-1, keepdim=True)
                    grad[gi, :, :, i, j] += -2 * V / (G * h * w * N) / len(temps)
    return grad


def loss_grad(x, pos, extra, **kw):
    x = x.clone().requires_grad_(True)
    loss, stats = drift_rae_loss(x, pos, extra, **kw)
    loss.backward()
    return x.grad, loss, stats


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 2, 3, generator=g, dtype=torch.float64)  # G=2 classes, N=3, c=4, 2x3 tokens
    pos = torch.randn(2, 5, 4, 2, 3, generator=g, dtype=torch.float64) + 0.5
    extra = torch.randn(2, 2, 4, 2, 3, generator=g, dtype=torch.float64)
    return x, pos, extra


def test_loss_gradient_is_minus_the_normalized_eq11_field_per_token(batch):
    x, pos, extra = batch
    temps = (0.7, 1.5)
    grad, loss, stats = loss_grad(x, pos, extra, temperatures=temps, perturb=False, normalize_features=False)
    ref = literal_grad(x, pos, extra, temps, eq11_literal)
    assert torch.allclose(grad.double(), ref, atol=1e-6)
    assert loss.item() == pytest.approx(1.0, abs=1e-5)  # ||V~||^2 = 1 per token: the value carries no signal
    assert set(stats) == {"S", "V2@0.7", "V2@1.5"} and stats["S"] == 1.0


def test_y_softmax_is_alg2_per_token(batch):
    x, pos, extra = batch
    grad, _, _ = loss_grad(x, pos, extra, temperatures=(0.9,), y_softmax=True, perturb=False,
                           normalize_features=False)
    alg2 = lambda q, p, m, tau: compute_V(q, p, m, tau, normalize="both").double()  # noqa: E731
    assert torch.allclose(grad.double(), literal_grad(x, pos, extra, (0.9,), alg2), atol=1e-6)
    single, _, _ = loss_grad(x, pos, extra, temperatures=(0.9,), perturb=False, normalize_features=False)
    assert not torch.allclose(grad, single, atol=1e-3)  # the two fields differ


def test_feature_normalization_measures_distances_in_units_of_their_mean(batch):
    x, pos, extra = batch
    kw = dict(temperatures=(0.05, 0.2), perturb=False)
    g1, _, s1 = loss_grad(x, pos, extra, **kw)
    g7, _, s7 = loss_grad(7 * x, 7 * pos, 7 * extra, **kw)
    assert s7["S"] == pytest.approx(7 * s1["S"], rel=1e-6)
    assert torch.allclose(g1, g7, atol=1e-6)  # scale-free: the temperatures are relative to S
    # S is the mean generated-to-target distance; without it the same taus see raw distances
    q, p = tokens(x), tokens(pos)
    m = torch.cat([q, tokens(extra)], 1)
    S = torch.cat([torch.cdist(q, p), torch.cdist(q, m)], -1).mean()
    assert s1["S"] == pytest.approx(S.item(), rel=1e-6)
    raw, _, _ = loss_grad(x, pos, extra, normalize_features=False, **kw)
    assert not torch.allclose(raw, g1, atol=1e-4)
    ref = literal_grad(x / S, pos / S, extra / S, (0.05, 0.2), eq11_literal)
    assert torch.allclose(g1.double(), ref, atol=1e-6)


def test_perturbation_is_g_plus_tau_n_on_every_generated_sample(batch, monkeypatch):
    x, pos, extra = batch
    drawn = []
    real = dr.laplace_norm_noise

    def record(shape, generator=None):
        n = real(shape, generator=generator, dtype=torch.float64)
        drawn.append(n)
        return n
    monkeypatch.setattr(dr, "laplace_norm_noise", record)
    temps = (0.3, 0.8)
    grad, _, _ = loss_grad(x, pos, extra, temperatures=temps, perturb=True, normalize_features=False,
                           generator=torch.Generator().manual_seed(5))
    assert len(drawn) == 2 and drawn[0].shape == (2 * 6, 5, 4)  # one draw per tau, for all N + E samples
    # reference: Eq. 11 on the perturbed queries and negatives, token by token
    ref = torch.zeros_like(x)
    q_all, p_all = tokens(x), tokens(pos)
    m_all = torch.cat([q_all, tokens(extra)], 1)
    for tau, n in zip(temps, drawn):
        m = m_all + tau * n
        # [BL, N, c]
        V = torch.stack([eq11_literal(m[b, :3], p_all[b], m[b], tau) for b in range(m.shape[0])])
        V = V / V.norm(dim=-1, keepdim=True)
        ref += (-2 * V / (12 * 3) / 2).view(2, 2, 3, 3, 4).permute(0, 3, 4, 1, 2)  # back to [G, N, c, h, w]
    assert torch.allclose(grad.double(), ref, atol=1e-6)
    clean, _, _ = loss_grad(x, pos, extra, temperatures=temps, perturb=False, normalize_features=False)
    assert not torch.allclose(clean, grad, atol=1e-3)


def test_detached_negatives_carry_no_gradient_but_shape_the_field(batch):
    x, pos, extra = batch
    extra = extra.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    loss, _ = drift_rae_loss(xg, pos, extra, perturb=False)
    loss.backward()
    assert extra.grad is None and xg.grad is not None
    a, _, _ = loss_grad(x, pos, extra.detach(), perturb=False)
    b, _, _ = loss_grad(x, pos, extra.detach() + 3.0, perturb=False)
    assert not torch.allclose(a, b, atol=1e-4)  # they repel: moving them changes the drift


def test_loss_argument_errors(batch):
    x, pos, extra = batch
    with pytest.raises(ValueError, match="pos"):
        drift_rae_loss(x, pos[:1], extra)
    with pytest.raises(ValueError, match="extra_neg"):
        drift_rae_loss(x, pos, extra[:, :, :2])
    with pytest.raises(ValueError, match="temperatures"):
        drift_rae_loss(x, pos, extra, temperatures=(0.0,))


# --------------------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    ds = load_dataset("fashion-mnist", "train")
    keep = np.concatenate([np.flatnonzero(ds.labels == k)[:12] for k in range(10)])
    p = tmp_path_factory.mktemp("distdata") / "fm120.npz"
    np.savez(p, images=ds.images[keep], labels=ds.labels[keep])
    return str(p)


def flow_cfg(data, **kw):
    base = dict(data=data, generator="cpu-tiny",
                generator_overrides=dict(hidden=32, depth=1, heads=2, patch_size=7, in_context_tokens=2),
                steps=4, batch=8, warmup=2, ema_warmup=0, ema_decays=(0.5,), ckpt_every=4, log_every=1,
                sample_every=100, sample_steps=2)
    return FlowTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pixel_teacher(tiny_data, tmp_path_factory) -> str:
    return train_flow(flow_cfg(tiny_data), tmp_path_factory.mktemp("teacher"), progress=False)["model_dir"]


def tiny_distill(teacher, data, **kw):
    base = dict(teacher=teacher, data=data, steps=4, classes_per_step=3, n_pos=4, n_neg=3, n_extra_neg=2,
                ckpt_every=2, log_every=1, sample_every=3, lr=1e-3, lr_final=1e-5, lr_decay_steps=3,
                ema_warmup=10)
    return DistillConfig(**{**base, **kw})


def test_distill_starts_from_the_teacher_and_follows_table8_schedules(pixel_teacher, tiny_data, tmp_path,
                                                                      monkeypatch):
    cfg = tiny_distill(pixel_teacher, tiny_data)
    seen = []
    real = dr.drift_rae_loss

    def spy(x, pos, extra, **kw):
        seen.append((x.shape, pos.shape, None if extra is None else extra.shape,
                     extra is not None and extra.requires_grad, x.requires_grad))
        return real(x, pos, extra, **kw)
    monkeypatch.setattr(dr, "drift_rae_loss", spy)
    res = distill(cfg, tmp_path, progress=False)
    c = (1, 28, 28)
    assert seen[0] == (torch.Size((3, 3) + c), torch.Size((3, 4) + c), torch.Size((3, 2) + c), False, True)
    lines = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [ln["lr"] for ln in lines] == [linear_decay_lr(s, 1e-3, 1e-5, 3) for s in range(4)]
    assert lines[-1]["lr"] == pytest.approx(1e-5)  # the floor, reached at t = T
    assert all(math.isfinite(ln["V2@0.2"]) and ln["S"] > 0 for ln in lines)
    state = load_state(tmp_path / "checkpoint.pt")
    assert state["ema"]["step"] == 4
    # EMA: Table 8's warm-up decay d_t = min(d, 0.5 (d / 0.5)^(t / W)) with W = ema_warmup
    ema = dr.EMA(torch.nn.Linear(1, 1), (0.9995,), warmup_steps=10)
    ema.step = 4
    assert ema.decay_at(0.9995) == pytest.approx(0.5 * (0.9995 / 0.5) ** 0.4)
    student = load_flow_model(res["model_dir"])
    teacher = load_flow_model(pixel_teacher)
    assert student.config == teacher.config
    imgs = flow_generate(student, torch.arange(5), 1)
    assert imgs.shape == (5, 28, 28, 1) and imgs.dtype == np.uint8
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "samples_000003.png").is_file()

    # step 0 of a distillation is the teacher's one-step map (init="teacher")
    zero = distill(replace(cfg, steps=1, lr=1e-12, lr_final=1e-12, ema_decay=0.0), tmp_path / "zero",
                   progress=False, resume=False)
    s0 = load_flow_model(zero["model_dir"])
    z = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(one_step(s0, z, torch.arange(3)), one_step(teacher, z, torch.arange(3)),
                              atol=1e-4)


def test_distill_resume_equals_an_uninterrupted_run(pixel_teacher, tiny_data, tmp_path, monkeypatch,
                                                    crash_at):
    cfg = tiny_distill(pixel_teacher, tiny_data, sample_every=100)
    real = dr.drift_rae_loss
    monkeypatch.setattr(dr, "drift_rae_loss", crash_at(real, 4))
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(cfg, tmp_path / "run", progress=False)
    assert load_state(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    monkeypatch.setattr(dr, "drift_rae_loss", real)
    a = distill(cfg, tmp_path / "run", progress=False)
    b = distill(cfg, tmp_path / "ref", progress=False)
    assert a["final_loss"] == b["final_loss"]
    sa, sb = load_state(tmp_path / "run" / "checkpoint.pt"), load_state(tmp_path / "ref" / "checkpoint.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    with pytest.raises(ValueError, match="configuration"):
        distill(replace(cfg, n_pos=5), tmp_path / "run", progress=False)


def test_latent_teacher_decode_encode_and_scratch(tiny_data, tmp_path):
    """A flow teacher in a (tiny, random) VAE latent space; App. C's variants train from it."""
    vae_dir = tmp_path / "vae"
    tiny_autoencoder_kl(in_channels=1, latent_channels=4).save_pretrained(vae_dir, safe_serialization=True)
    spec = f"autoencoderkl:{vae_dir}"
    res = train_flow(flow_cfg(tiny_data, tokenizer=spec), tmp_path / "teacher", progress=False)
    teacher = load_flow_model(res["model_dir"])
    assert (teacher.config.in_channels, teacher.config.input_size) == (4, 14)  # latents [4, 14, 14]
    tok = model_tokenizer(res["model_dir"])
    assert tok is not None and tok.latent_channels == 4
    imgs = flow_generate(teacher, torch.arange(3), 2, tokenizer=tok)
    assert imgs.shape == (3, 28, 28, 1)  # decoded to pixels

    for kw in (dict(init="scratch"), dict(features="decode-encode", y_softmax=True, perturb=False)):
        out = tmp_path / "+".join(kw)
        r = distill(tiny_distill(res["model_dir"], tiny_data, steps=2, **kw), out, progress=False)
        student = load_flow_model(r["model_dir"])
        assert model_tokenizer(r["model_dir"]) is not None  # the student lives in the teacher's space
        assert (json.loads((out / "model" / "train_config.json").read_text())["init"]
                == kw.get("init", "teacher"))
        assert flow_generate(student, torch.arange(2), 1, tokenizer=tok).shape == (2, 28, 28, 1)
    with torch.no_grad():  # from scratch: G(z) = z at step 0 (zero-initialised output layer)
        fresh = DriftingDiT(teacher.config)
        z = torch.randn(2, 4, 14, 14)
        assert torch.equal(one_step(fresh, z, torch.arange(2)), z)


def test_distill_errors(pixel_teacher, tiny_data, tmp_path):
    for name, kw in (("teacher", dict(teacher="")), ("n_neg", dict(n_neg=1, n_extra_neg=0)),
                     ("init", dict(init="random")), ("features", dict(features="pixels")),
                     ("temperatures", dict(temperatures=())), ("lr_final", dict(lr_final=1.0)),
                     ("ema_decay", dict(ema_decay=1.0)), ("steps", dict(steps=0))):
        with pytest.raises(ValueError, match=f"DistillConfig.{name}"):
            replace(tiny_distill(pixel_teacher, tiny_data), **kw).validate()
    with pytest.raises(ValueError, match="decode-encode"):
        distill(tiny_distill(pixel_teacher, tiny_data, features="decode-encode"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="classes_per_step"):
        distill(tiny_distill(pixel_teacher, tiny_data, classes_per_step=11), tmp_path, progress=False)
    with pytest.raises(ValueError, match="preset"):
        distill_preset("Z", pixel_teacher)
    a, c = distill_preset("A", "t"), distill_preset("C", "t")
    assert a.y_softmax and not a.perturb and a.n_extra_neg == 0
    assert not c.y_softmax and c.perturb and c.n_pos == c.n_neg + c.n_extra_neg  # balanced, as Table 7's best
    t8 = distill_preset("table8", "t")
    assert (t8.classes_per_step, t8.n_pos, t8.n_neg, t8.n_extra_neg, t8.steps) == (32, 256, 64, 192, 10_000)
    assert (t8.lr, t8.lr_final, t8.ema_decay, t8.ema_warmup, t8.grad_clip, t8.weight_decay) == (
        3e-5, 3e-7, 0.9995, 1000, 1.0, 0.0)
    assert t8.temperatures == (0.02, 0.05, 0.2)


def test_distill_cli(pixel_teacher, tiny_data, tmp_path, capsys):
    rc = main(["distill", "--teacher", pixel_teacher, "--out", str(tmp_path), "--data", tiny_data, "--preset",
               "B", "--steps", "2", "--classes-per-step", "2", "--n-pos", "3", "--n-neg", "2",
               "--n-extra-neg", "1", "--temperatures", "0.05,0.2", "--no-perturb", "--no-progress",
               "--threads", "1"])
    assert rc == 0 and "distilled 2 steps" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "model" / "train_config.json").read_text())
    assert cfg["perturb"] is False and cfg["y_softmax"] is False and cfg["temperatures"] == [0.05, 0.2]
    assert cfg["n_extra_neg"] == 1

"""The DiT generator f(noise, class, alpha) -> x (paper §4, A.2, Table 8), on tiny configs."""

import json

import pytest
import torch

from drifting.models.dit import PRESETS, DiTConfig, DriftingDiT, dit_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> DiTConfig:
    base = dict(hidden=32, depth=2, heads=2, in_context_tokens=4, style_tokens=8, codebook_size=16)
    return dit_config("cpu-tiny", **{**base, **overrides})


def inputs(cfg: DiTConfig, B: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    labels = torch.randint(cfg.num_classes, (B,), generator=g)
    alpha = 1 + 3 * torch.rand(B, generator=g)
    style = torch.randint(cfg.codebook_size, (B, cfg.style_tokens), generator=g)
    return noise, labels, alpha, style


def train_steps(model: DriftingDiT, steps: int = 3, seed: int = 1) -> None:
    """A few Adam steps toward random targets. adaLN-Zero needs >= 2 steps for the conditioning to
    reach the output: step 1 only moves the zero final linear (the only parameter with a gradient)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    noise, labels, alpha, style = inputs(model.config, B=8, seed=seed)
    target = torch.randn_like(noise)
    for _ in range(steps):
        loss = (model(noise, labels, alpha, style) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def trained() -> DriftingDiT:
    torch.manual_seed(0)
    model = DriftingDiT(tiny())
    train_steps(model)
    return model


@pytest.mark.parametrize("overrides", [
    dict(patch_size=4, in_context_tokens=16, style_tokens=32, codebook_size=64),
    dict(patch_size=4, in_context_tokens=0, style_tokens=0),
    dict(patch_size=2, in_context_tokens=16, style_tokens=0),
    dict(patch_size=2, in_context_tokens=0, style_tokens=32, codebook_size=64),
    dict(input_size=16, in_channels=3, patch_size=8, qk_norm=False, pos_embed=False),
])
def test_output_shape_and_exact_zero_at_init(overrides):
    cfg = tiny(**overrides)
    model = DriftingDiT(cfg)
    noise, labels, alpha, _ = inputs(cfg, B=3)
    x = model(noise, labels, alpha)
    assert x.shape == noise.shape and x.dtype == noise.dtype
    assert torch.equal(x, torch.zeros_like(x))  # adaLN-Zero: the final layer starts at 0


def test_nonzero_after_one_optimizer_step():
    torch.manual_seed(0)
    model = DriftingDiT(tiny())
    train_steps(model, steps=1)
    noise, labels, alpha, style = inputs(model.config)
    assert model(noise, labels, alpha, style).abs().min() > 0


def test_every_input_changes_the_output(trained):
    cfg = trained.config
    noise, labels, alpha, style = inputs(cfg)
    base = trained(noise, labels, alpha, style)
    variants = {
        "labels": trained(noise, (labels + 1) % cfg.num_classes, alpha, style),
        "alpha": trained(noise, labels, alpha + 1.0, style),
        "style": trained(noise, labels, alpha, (style + 1) % cfg.codebook_size),
        "noise": trained(torch.randn_like(noise), labels, alpha, style),
    }
    for name, out in variants.items():
        # per sample: every one of the B outputs moves
        assert ((out - base).flatten(1).abs().amax(1) > 1e-6).all(), name


def test_alpha_float_equals_tensor_and_style_none_is_random(trained):
    noise, labels, _, style = inputs(trained.config)
    a = trained(noise, labels, 2.5, style)
    b = trained(noise, labels, torch.full((4,), 2.5), style)
    c = trained(noise, labels, torch.tensor(2.5), style)
    assert torch.equal(a, b) and torch.equal(a, c)
    torch.manual_seed(0)
    r1 = trained(noise, labels, 2.5)
    r2 = trained(noise, labels, 2.5)
    assert not torch.allclose(r1, r2)  # style drawn on the fly


def test_tokens_stay_in_place():
    """With identity blocks (adaLN-Zero init) each output patch depends only on its input patch:
    this checks that the patch conv's token order and unpatchify agree."""
    cfg = tiny(patch_size=4, in_context_tokens=0, pos_embed=False)
    model = DriftingDiT(cfg)
    torch.nn.init.normal_(model.final.linear.weight)
    noise, labels, alpha, style = inputs(cfg, B=1)
    base = model(noise, labels, alpha, style)
    bumped = noise.clone()
    bumped[:, :, 8:12, 4:8] += 1.0  # patch (row 2, col 1)
    diff = (model(bumped, labels, alpha, style) - base).abs()[0, 0]
    assert diff[8:12, 4:8].max() > 0
    diff[8:12, 4:8] = 0
    assert diff.max() == 0


def test_sample_is_deterministic_with_a_seeded_generator(trained):
    labels = torch.tensor([0, 3, 7])
    a = trained.sample(labels, alpha=1.5, generator=torch.Generator().manual_seed(42))
    b = trained.sample(labels, alpha=1.5, generator=torch.Generator().manual_seed(42))
    c = trained.sample(labels, alpha=1.5, generator=torch.Generator().manual_seed(43))
    assert a.shape == (3, 1, 28, 28) and not a.requires_grad
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(trained.sample([0, 3, 7], 1.5, torch.Generator().manual_seed(42)), a)


def test_draw_style():
    model = DriftingDiT(tiny())
    s = model.draw_style(5, torch.Generator().manual_seed(0))
    assert s.shape == (5, 8) and s.dtype == torch.long and 0 <= s.min() and s.max() < 16
    assert torch.equal(s, model.draw_style(5, torch.Generator().manual_seed(0)))
    assert DriftingDiT(tiny(style_tokens=0)).draw_style(5).shape == (5, 0)


def test_save_load_round_trip(trained, tmp_path):
    trained.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "export" / "config.json").read_text())["hidden"] == 32
    loaded = DriftingDiT.from_pretrained(tmp_path / "export")
    assert loaded.config == trained.config
    noise, labels, alpha, style = inputs(trained.config)
    assert torch.equal(loaded(noise, labels, alpha, style), trained(noise, labels, alpha, style))


def expected_params(cfg: DiTConfig) -> int:
    """Independent count of the architecture described in the DriftingDiT docstring."""
    D, F, hd, out = cfg.hidden, cfg.mlp_hidden, cfg.head_dim, cfg.patch_size**2 * cfg.in_channels
    block = (D * 3 * D + 3 * D) + (D * D + D) + 2 * hd * cfg.qk_norm  # attention
    block += (D * 2 * F + 2 * F) + (F * D + D)  # SwiGLU
    block += D * 6 * D + 6 * D  # adaLN
    n = cfg.depth * block
    n += out * D + D  # patch embedding
    n += cfg.num_classes * D + (cfg.codebook_size * D if cfg.style_tokens else 0)
    n += (D * D + D + cfg.in_context_tokens * D) if cfg.in_context_tokens else 0
    n += (D * 2 * D + 2 * D) + (D * out + out)  # final layer
    return n


@pytest.mark.parametrize("name, paper_millions", [("B/2", 133), ("L/2", 463), ("B/16", 134), ("L/16", 464)])
def test_preset_parameter_counts(name, paper_millions):
    cfg = dit_config(name)
    assert cfg.num_classes == 1000 and cfg.in_context_tokens == 16 and cfg.style_tokens == 32
    with torch.device("meta"):  # no memory allocated
        n = DriftingDiT(cfg).num_params()
    assert n == expected_params(cfg)
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.05  # Tables 5-6: 133M/463M/134M/464M


def test_presets_and_config_errors():
    assert {"B/2", "L/2", "B/16", "L/16", "cpu-tiny", "cpu-small"} <= set(PRESETS)
    assert PRESETS["cpu-tiny"].validate().input_size == 28
    assert dit_config("cpu-tiny", depth=3).depth == 3 and PRESETS["cpu-tiny"].depth == 2  # a copy
    assert dit_config("B/2").mlp_hidden == 2048 and dit_config("L/2").mlp_hidden == 2736  # rounded up to 8
    with pytest.raises(ValueError, match="cpu-small"):
        dit_config("nope")
    with pytest.raises(ValueError, match="widht"):
        dit_config("cpu-tiny", widht=3)
    bad = [(dict(patch_size=5), "input_size"), (dict(hidden=30, heads=4), "hidden"),
           (dict(hidden=36, heads=4), "heads"), (dict(depth=0), "depth"),
           (dict(style_tokens=-1), "style_tokens"),
           (dict(codebook_size=0), "codebook_size"), (dict(mlp_ratio=0.0), "mlp_ratio"),
           (dict(num_classes=0), "num_classes"), (dict(hidden=18, heads=3, pos_embed=True), "hidden")]
    for overrides, field in bad:
        with pytest.raises(ValueError, match=field):
            dit_config("cpu-tiny", **overrides)
    with pytest.raises(ValueError, match="in_context_tokens"):
        DriftingDiT(DiTConfig(in_context_tokens=-2))


def test_bad_inputs_raise_value_errors_naming_the_argument(trained):
    noise, labels, alpha, style = inputs(trained.config)
    cases = [
        ("noise", dict(noise=noise[:, :, :27])),
        ("noise", dict(noise=torch.cat([noise, noise], 1))),
        ("noise", dict(noise=noise[0])),
        ("noise", dict(noise=noise.long())),
        ("labels", dict(labels=labels.float())),
        ("labels", dict(labels=labels[:3])),
        ("labels", dict(labels=torch.tensor([0, 1, 2, 10]))),
        ("labels", dict(labels=torch.tensor([0, -1, 2, 3]))),
        ("alpha", dict(alpha=0.5)),
        ("alpha", dict(alpha=float("nan"))),
        ("alpha", dict(alpha=torch.tensor([1.0, 2.0, 0.9, 3.0]))),
        ("alpha", dict(alpha=torch.tensor([1.0, float("inf"), 1.0, 1.0]))),
        ("alpha", dict(alpha=torch.ones(3))),
        ("alpha", dict(alpha="2")),
        ("style", dict(style=style[:, :3])),
        ("style", dict(style=style.float())),
        ("style", dict(style=style + 16)),
    ]
    for name, change in cases:
        args = dict(noise=noise, labels=labels, alpha=alpha, style=style, **{})
        args.update(change)
        with pytest.raises(ValueError, match=name):
            trained(**args)
    with pytest.raises(ValueError, match="labels"):
        trained.sample(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        trained.sample([1, 2], alpha=0.0)


def test_bf16_autocast_forward(trained):
    noise, labels, alpha, style = inputs(trained.config, B=2)
    ref = trained(noise, labels, alpha, style)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = trained(noise, labels, alpha, style)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def test_learned_alpha_embedder_fits_an_alpha_dependent_target():
    """``alpha_mlp``: a learned embedding of alpha (iMF's CFG conditioning). Off, the state dict has no such
    keys; on, a few steps toward targets that differ only by alpha separate alpha 1 from alpha 3 far more
    than the fixed embedding alone does."""
    assert not any("alpha_embed" in k for k in DriftingDiT(tiny()).state_dict())
    assert any(k.startswith("alpha_embed.") for k in DriftingDiT(tiny(alpha_mlp=True)).state_dict())
    gaps = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = DriftingDiT(tiny(alpha_mlp=on, style_tokens=0))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        noise, labels = torch.randn(16, 1, 28, 28, generator=g), torch.randint(10, (16,), generator=g)
        alpha = torch.tensor([1.0, 3.0]).repeat(8)
        target = torch.where(alpha[:, None, None, None] > 2, 1.0, -1.0).expand_as(noise)
        for _ in range(30):
            loss = (model(noise, labels, alpha) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            gaps[on] = (model(noise, labels, 3.0) - model(noise, labels, 1.0)).mean().item()
    assert gaps[True] > 1.0 and gaps[True] > 2 * gaps[False]  # the target gap is 2
    with pytest.raises(ValueError, match="alpha_mlp"):
        dit_config("cpu-tiny", alpha_mlp="yes")

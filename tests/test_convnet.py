"""The convolutional one-step generator (models.convnet) and the generator registry (models.generators)."""

import json

import pytest
import torch

from drifting.models.convnet import ConvGenConfig, ConvGenerator, conv_config
from drifting.models.generators import (
    build_generator,
    generator_config,
    generator_names,
    load_generator_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(steps: int = 4, **kw) -> ConvGenerator:
    """A few Adam steps toward targets that depend on class, alpha and style, so every input matters."""
    torch.manual_seed(0)
    m = ConvGenerator(conv_config("conv-tiny", **kw))
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        z = torch.randn(8, 1, 28, 28, generator=g)
        labels = torch.randint(10, (8,), generator=g)
        alpha = 1 + 3 * torch.rand(8, generator=g)
        style = m.draw_style(8, generator=g)
        target = torch.randn(8, 1, 28, 28, generator=g) * alpha.view(-1, 1, 1, 1)
        loss = (m(z, labels, alpha, style) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_zero_at_init_and_the_noise_shape():
    m = ConvGenerator(conv_config("conv-tiny"))
    x = m(torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9]), 1.5)
    assert x.shape == (3, 1, 28, 28) and torch.equal(x, torch.zeros_like(x))  # the output conv starts at 0
    big = ConvGenerator(conv_config("conv-cpu", input_size=32, in_channels=4, widths=(16, 32, 32, 64)))
    assert big(torch.randn(2, 4, 32, 32), torch.tensor([1, 2])).shape == (2, 4, 32, 32)  # 4 levels, latents


def test_every_conditioning_input_reaches_the_output():
    m = trained()
    z, labels = torch.randn(2, 1, 28, 28), torch.tensor([3, 3])
    style = m.draw_style(2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = m(z, labels, 1.0, style)
        assert not torch.allclose(base, m(z, torch.tensor([7, 7]), 1.0, style))  # class
        assert not torch.allclose(base, m(z, labels, 3.0, style))  # alpha (the learned embedder)
        assert not torch.allclose(base, m(z, labels, 1.0, (style + 1) % 8))  # style
        assert torch.equal(base, m(z, labels, 1.0, style))  # and nothing else
    off = trained(alpha_mlp=False)
    with torch.no_grad():
        assert torch.equal(off(z, labels, 1.0, style), off(z, labels, 3.0, style))  # alpha_mlp=False: ignored


def test_sample_is_seeded_and_checks_its_arguments():
    m = trained()
    a = m.sample(torch.arange(4), generator=torch.Generator().manual_seed(0))
    b = m.sample(torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="noise"):
        m(torch.randn(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        m(torch.randn(2, 1, 28, 28), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="alpha"):
        m(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), 0.5)
    with pytest.raises(ValueError, match="ConvGenConfig.time_cond=False"):
        m(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), t=0.5)


def test_time_conditioned_velocity():
    torch.manual_seed(0)
    v = ConvGenerator(conv_config("conv-tiny", time_cond=True, style_tokens=0, alpha_mlp=False))
    with pytest.raises(ValueError, match="time-conditioned"):
        v(torch.randn(1, 1, 28, 28), torch.tensor([0]))
    opt = torch.optim.Adam(v.parameters(), lr=1e-2)
    y, lab = torch.randn(4, 1, 28, 28), torch.arange(4)
    for _ in range(4):
        t = torch.rand(4)
        loss = (v(y, lab, t=t) - t.view(-1, 1, 1, 1) * 3).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(v(y, lab, t=0.1), v(y, lab, t=0.9))


def test_config_validation_names_the_field():
    cases = {"widths": dict(widths=()), "hidden": dict(hidden=0),
             "input_size": dict(input_size=2, widths=(8, 8, 8)),
             "style_tokens": dict(style_tokens=-1), "alpha_mlp": dict(alpha_mlp=1)}
    for name, kw in cases.items():
        with pytest.raises(ValueError, match=rf"ConvGenConfig\.{name}:"):
            ConvGenConfig(**kw).validate()
    with pytest.raises(ValueError, match="unknown ConvGenConfig field"):
        conv_config("conv-cpu", depth=3)
    with pytest.raises(ValueError, match="unknown conv generator preset"):
        conv_config("conv-huge")


def test_registry_builds_and_loads_either_family(tmp_path):
    assert {"conv-cpu", "conv-tiny", "cpu-p4", "B/2"} <= set(generator_names())
    with pytest.raises(ValueError, match="generator: unknown preset"):
        generator_config("resnet")
    for name in ("conv-tiny", "cpu-tiny"):
        m = build_generator(generator_config(name))
        m.save_pretrained(tmp_path / name)
        back = load_generator_model(tmp_path / name)
        assert type(back) is type(m) and back.config == m.config
        for p, q in zip(m.state_dict().values(), back.state_dict().values()):
            assert torch.equal(p, q)
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"_class_name": "ResNetMAE"}))
    with pytest.raises(ValueError, match="not one of the generators"):
        load_generator_model(bad)


def test_channels_last_is_the_same_function():
    """``channels_last`` changes only the activations' memory layout: the same outputs and gradients as NCHW
    (up to float rounding), and the output is an ordinary contiguous NCHW tensor."""
    m = trained()
    z = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    labels, alpha = torch.arange(6) % 10, torch.linspace(1, 3, 6)
    style = m.draw_style(6, generator=torch.Generator().manual_seed(4))
    outs, grads = [], []
    for flag in (False, True):
        m.config.channels_last = flag
        m.zero_grad()
        x = m(z, labels, alpha, style)
        assert x.is_contiguous()
        x.square().sum().backward()
        outs.append(x.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert outs[0].abs().max() > 0.01  # a trained network: the comparison is not between zeros
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)

import pytest
import torch

from drifting.training.ema import EMA


def test_ema_matches_formula_and_round_trips():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decays=(0.9, 0.99))
    ref = {d: [p.detach().clone() for p in model.parameters()] for d in (0.9, 0.99)}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        for d in ref:
            ref[d] = [d * r + (1 - d) * p.detach() for r, p in zip(ref[d], model.parameters())]
    for d in ref:
        for r, p in zip(ref[d], ema.models[d].parameters()):
            assert torch.allclose(r, p, atol=1e-6)
    other = EMA(model, decays=(0.9, 0.99))
    other.load_state_dict(ema.state_dict())
    assert other.step == 5
    assert all(torch.equal(a, b)
               for a, b in zip(other.models[0.9].parameters(), ema.models[0.9].parameters()))


def test_ema_warmup_and_errors():
    ema = EMA(torch.nn.Linear(2, 2), decays=(0.9995,), warmup_steps=1000)  # Drift-RAE Table 8
    assert ema.decay_at(0.9995) == pytest.approx(0.5)
    ema.step = 500
    assert ema.decay_at(0.9995) == pytest.approx(0.5 * (0.9995 / 0.5) ** 0.5)
    ema.step = 1000
    assert ema.decay_at(0.9995) == pytest.approx(0.9995)
    ema.step = 5000
    assert ema.decay_at(0.9995) == 0.9995
    with pytest.raises(ValueError, match="decays"):
        EMA(torch.nn.Linear(2, 2), decays=(1.0,))

"""CFG (A.7): the weight w <-> alpha relation and the alpha sampler of Table 8."""

import math

import pytest
import torch

from drifting.guidance import (
    GUIDANCE_PRESETS,
    GuidanceConfig,
    alpha_from_weight,
    guidance_weight,
    sample_alpha,
    uncond_neg_weights,
)


def test_weight_matches_A7():
    alpha = torch.tensor([1.0, 1.5, 2.0, 4.0])
    n_gen, n_unc = 64, 16
    w = guidance_weight(alpha, n_gen, n_unc)
    assert torch.allclose(w, (alpha - 1) * 63 / 16)
    # gamma = N_unc w / ((N_neg - 1) + N_unc w) and alpha = 1 / (1 - gamma)   (A.7, Eq. 15-16)
    gamma = n_unc * w / ((n_gen - 1) + n_unc * w)
    assert torch.allclose(1 / (1 - gamma), alpha)
    assert torch.allclose(alpha_from_weight(w, n_gen, n_unc), alpha)
    assert guidance_weight(1.0, n_gen, n_unc).item() == 0.0  # alpha = 1: no guidance
    W = uncond_neg_weights(alpha, n_gen, n_unc)
    assert W.shape == (4, 16) and torch.allclose(W[:, 0], w) and torch.allclose(W[:, -1], w)


def _cdf(a, k, lo=1.0, hi=4.0):
    if k == 1:
        return math.log(a / lo) / math.log(hi / lo)
    e = 1 - k
    return (a**e - lo**e) / (hi**e - lo**e)


@pytest.mark.parametrize("k", [1.0, 3.0, 5.0])
def test_alpha_sampler_follows_power_law(k):
    a = sample_alpha(200_000, GuidanceConfig(k=k), generator=torch.Generator().manual_seed(0)).double()
    assert a.min() >= 1.0 and a.max() <= 4.0
    for q in (1.2, 1.5, 2.0, 3.0):
        assert abs((a <= q).double().mean().item() - _cdf(q, k)) < 0.005
    # larger k puts more mass near alpha = 1
    if k == 5.0:
        assert (a < 1.5).double().mean() > 0.8


def test_no_cfg_fraction_and_presets():
    cfg = GUIDANCE_PRESETS["L/2"]
    a = sample_alpha(100_000, cfg, generator=torch.Generator().manual_seed(1))
    assert abs((a == 1.0).float().mean().item() - 0.5) < 0.01
    assert (sample_alpha(10, GUIDANCE_PRESETS["none"]) == 1.0).all()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_alpha(50, generator=g1), sample_alpha(50, generator=g2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        guidance_weight(torch.tensor([0.5]), 64, 16)
    with pytest.raises(ValueError, match="n_gen"):
        guidance_weight(2.0, 1, 16)
    with pytest.raises(ValueError, match="n_uncond"):
        guidance_weight(2.0, 64, 0)
    with pytest.raises(ValueError, match="alpha_min"):
        sample_alpha(3, GuidanceConfig(alpha_min=0.5))
    with pytest.raises(ValueError, match="no_cfg_prob"):
        sample_alpha(3, GuidanceConfig(no_cfg_prob=1.5))

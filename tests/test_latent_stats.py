"""Tests for drifting.eval.latent_metrics (Drift-RAE §3.2, App. B.1: Eq. 46-53, Fig. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from drifting.eval.latent_metrics import (
    isotropy_stats,
    nn_distance,
    participation_ratio,
    spectral_entropy,
    spherical_mmd,
    trajectory_curvature,
    trajectory_deviation,
)

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def poles(d: int, rho: float = 1.0) -> torch.Tensor:
    """The 2d points ``+-rho e_i`` ``[2d, d]``: mean 0, covariance proportional to I."""
    eye = torch.eye(d, dtype=F64)
    return torch.cat([eye, -eye]) * rho


def line(d: int, coords: list[float]) -> torch.Tensor:
    """Points ``c e_1`` ``[len(coords), d]``: a rank-1 covariance."""
    x = torch.zeros(len(coords), d, dtype=F64)
    x[:, 0] = torch.tensor(coords, dtype=F64)
    return x


# --------------------------------------------------------------------------- Eq. 46-48
def test_pr_se_isotropic_rank1_and_hand_values():
    assert participation_ratio(torch.full((5,), 2.0)).item() == pytest.approx(1.0, abs=1e-15)
    assert spectral_entropy(torch.full((5,), 2.0)).item() == pytest.approx(1.0, abs=1e-15)
    rank1 = torch.tensor([3.0, 0.0, 0.0, 0.0])
    assert participation_ratio(rank1).item() == pytest.approx(0.25, abs=1e-15)
    assert spectral_entropy(rank1).item() == pytest.approx(0.25, abs=1e-15)
    # p = (3/4, 1/4), r = 2: PR = 1 / (2 (9/16 + 1/16)) = 0.8; SE = exp(H) / 2
    mu = torch.tensor([3.0, 1.0])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert participation_ratio(mu).item() == pytest.approx(0.8, abs=1e-15)
    assert spectral_entropy(mu).item() == pytest.approx(math.exp(h) / 2, abs=1e-15)
    # two equal eigenvalues out of r = 4: both 1/2 (a missing 1/r would give 2)
    assert participation_ratio(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(0.5, abs=1e-15)
    assert spectral_entropy(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(0.5, abs=1e-15)


def test_pr_se_batched_last_axis_and_roundoff_clamp():
    eigs = torch.rand(2, 3, 4, generator=gen(1), dtype=F64) + 0.1  # [2, 3, r=4]
    pr, se = participation_ratio(eigs), spectral_entropy(eigs)
    assert pr.shape == se.shape == (2, 3) and pr.dtype == F64
    assert participation_ratio(eigs[1, 2]).item() == pytest.approx(pr[1, 2].item(), abs=1e-15)
    assert bool(((pr >= 0.25 - 1e-12) & (pr <= 1 + 1e-12) & (se >= 0.25 - 1e-12) & (se <= 1 + 1e-12)).all())
    # round-off negatives are clamped to 0; a real negative is refused
    assert participation_ratio(torch.tensor([1.0, -1e-15])).item() == pytest.approx(0.5, abs=1e-15)
    assert spectral_entropy(torch.tensor([1.0, -1e-15])).item() == pytest.approx(0.5, abs=1e-15)
    with pytest.raises(ValueError, match="cov_eigs"):
        participation_ratio(torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="cov_eigs"):
        spectral_entropy(torch.tensor([]))
    assert math.isnan(participation_ratio(torch.zeros(3)).item())


# --------------------------------------------------------------------------- isotropy_stats
def test_isotropy_identity_covariance_and_rank1():
    s = isotropy_stats(poles(4, 2.5), None)  # covariance exactly proportional to I
    assert s["pr"] == pytest.approx(1.0, abs=1e-12) and s["se"] == pytest.approx(1.0, abs=1e-12)
    assert s["dim"] == 4 and s["num_tokens"] == 1 and s["class_counts"] == [8]
    s = isotropy_stats(line(4, [-3, -1, 0, 2, 5]), None)  # rank 1 -> 1/r
    assert s["pr"] == pytest.approx(0.25, abs=1e-12) and s["se"] == pytest.approx(0.25, abs=1e-12)


def test_isotropy_per_token_cells_and_class_mean():
    d = 4
    iso = poles(d)  # [8, 4]
    rank1 = line(d, [-3, -2, -1, 0, 1, 2, 3, 4])  # [8, 4]
    # class 7: token 0 isotropic, token 1 rank-1; class 3: both tokens rank-1
    c7 = torch.stack([iso, rank1], dim=1)  # [8, T=2, 4]
    c3 = torch.stack([rank1, rank1.flip(0)], dim=1)
    x = torch.cat([c7, c3])  # [16, 2, 4]
    labels = torch.tensor([7] * 8 + [3] * 8)
    perm = torch.randperm(16, generator=gen(2))  # class ids interleaved and unsorted
    s = isotropy_stats(x[perm], labels[perm])
    assert s["classes"] == [3, 7] and s["class_counts"] == [8, 8]
    torch.testing.assert_close(s["pr_per_cell"], torch.tensor([[0.25, 0.25], [1.0, 0.25]], dtype=F64))
    torch.testing.assert_close(s["se_per_cell"], torch.tensor([[0.25, 0.25], [1.0, 0.25]], dtype=F64))
    assert s["pr"] == pytest.approx((0.25 * 3 + 1.0) / 4, abs=1e-12)
    # flattening the tokens into one 8-dim vector would be a different statistic
    flat = isotropy_stats(x.reshape(16, 8), labels)
    assert flat["pr"] != pytest.approx(s["pr"], abs=1e-3)


@pytest.mark.parametrize("n,d", [(5, 8), (20, 3)])  # Gram path (n < d) and covariance path
def test_isotropy_matches_direct_covariance_spectrum(n, d):
    x = torch.randn(n, 2, d, generator=gen(3), dtype=F64) * torch.linspace(0.2, 3.0, d, dtype=F64)
    s = isotropy_stats(x, None)
    for t in range(2):
        mu = torch.linalg.eigvalsh(torch.cov(x[:, t].T))  # [d]
        assert s["pr_per_cell"][0, t].item() == pytest.approx(participation_ratio(mu).item(), rel=1e-10)
        assert s["se_per_cell"][0, t].item() == pytest.approx(spectral_entropy(mu).item(), rel=1e-10)
    # [n, d] input is the T = 1 case
    assert isotropy_stats(x[:, 0], None)["pr"] == pytest.approx(s["pr_per_cell"][0, 0].item(), rel=1e-12)


# --------------------------------------------------------------------------- Eq. 49
def test_nn_distance_hand_grid_and_sqrt_d():
    # 1-D points 0, 1, 3, 7: nearest neighbours 1, 1, 2, 4 -> mean 2
    assert nn_distance(line(1, [0, 1, 3, 7]), None)["nn_d"] == pytest.approx(2.0, abs=1e-12)
    # the same points embedded in 4-D: same distances, divided by sqrt(4)
    assert nn_distance(line(4, [0, 1, 3, 7]), None)["nn_d"] == pytest.approx(1.0, abs=1e-12)
    # unit 3x3 grid in 2-D: every nearest neighbour at 1 -> 1/sqrt(2)
    g = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1).reshape(9, 2)
    assert nn_distance(g, None)["nn_d"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_nn_distance_weights_samples_across_classes():
    # class 0: two points 5 apart (NN 5, 5); class 1: 0, 1, 3, 7 (NN 1, 1, 2, 4)
    x = torch.cat([line(1, [0, 5]), line(1, [0, 1, 3, 7])])
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    r = nn_distance(x, labels)
    assert r["nn_d"] == pytest.approx((5 + 5 + 1 + 1 + 2 + 4) / 6, abs=1e-12)  # Eq. 49: per sample, 3.0
    # a class mean would be 3.5
    torch.testing.assert_close(r["per_class"], torch.tensor([5.0, 2.0], dtype=F64))


def test_nn_distance_per_token_vs_flattened():
    # n = 3 samples, T = 2 tokens, d = 1 channel
    x = torch.tensor([[[0.0], [0.0]], [[1.0], [4.0]], [[5.0], [1.0]]], dtype=F64)  # [3, 2, 1]
    per_tok = nn_distance(x, None)  # token 0: NN 1, 1, 4; token 1: NN 1, 3, 1
    assert per_tok["nn_d"] == pytest.approx(11 / 6, abs=1e-12) and per_tok["dim"] == 1
    flat = nn_distance(x, None, per_token=False)  # vectors (0,0), (1,4), (5,1), d = 2
    assert flat["nn_d"] == pytest.approx((2 * math.sqrt(17) + 5) / 3 / math.sqrt(2), abs=1e-12)
    assert flat["dim"] == 2
    y = torch.randn(6, 5, generator=gen(4), dtype=F64)  # T = 1: both protocols agree
    assert nn_distance(y, None)["nn_d"] == pytest.approx(nn_distance(y[:, None], None,
                                                                     per_token=False)["nn_d"])


# --------------------------------------------------------------------------- Eq. 50-53
def literal_smmd(x: torch.Tensor, tau: float) -> float:
    """Eq. 50-53 written out: explicit 2d poles, exact pairwise distances, biased V-statistic."""
    xt = x - x.mean(dim=0)
    d = x.shape[1]
    rho = xt.norm(dim=1).mean()
    p = poles(d) * rho

    def k(a, b):
        return torch.exp(-torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
                         / (tau * math.sqrt(d)))

    return float(k(xt, xt).mean() + k(p, p).mean() - 2 * k(xt, p).mean())


def test_smmd_zero_for_poles_positive_otherwise():
    shift = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    assert abs(spherical_mmd(poles(4, 2.5) + shift, None)["s_mmd"]) < 1e-14  # centering removes the shift
    assert abs(spherical_mmd(poles(1, 0.3), None, tau=0.05)["s_mmd"]) < 1e-14
    assert spherical_mmd(line(4, [-2.5, 2.5]), None)["s_mmd"] > 1e-3  # only the e_1 poles
    x = torch.randn(12, 4, generator=gen(5), dtype=F64)
    assert spherical_mmd(x, None)["s_mmd"] > 0


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_smmd_matches_literal_formula(tau):
    x = torch.randn(30, 5, generator=gen(6), dtype=F64) * 3 + 1
    assert spherical_mmd(x, None, tau)["s_mmd"] == pytest.approx(literal_smmd(x, tau), abs=1e-13)
    # tokens: per token = literal per token position, averaged; flattened = literal on [n, T*d]
    z = torch.randn(9, 3, 2, generator=gen(7), dtype=F64)  # [n, T=3, d=2]
    per_tok = spherical_mmd(z, None, tau)
    assert per_tok["s_mmd"] == pytest.approx(sum(literal_smmd(z[:, t], tau) for t in range(3)) / 3, abs=1e-13)
    flat = spherical_mmd(z, None, tau, per_token=False)
    assert flat["s_mmd"] == pytest.approx(literal_smmd(z.reshape(9, 6), tau), abs=1e-13)
    assert flat["dim"] == 6 and per_tok["dim"] == 2
    assert abs(flat["s_mmd"] - per_tok["s_mmd"]) > 1e-4


def test_smmd_class_average():
    x1 = torch.randn(10, 3, generator=gen(8), dtype=F64)
    v1 = literal_smmd(x1, 1.0)
    r = spherical_mmd(torch.cat([poles(3, 2.0), x1]), torch.tensor([0] * 6 + [1] * 10))
    assert r["s_mmd"] == pytest.approx(v1 / 2, abs=1e-13)  # uniform over classes: (0 + v1) / 2
    assert r["per_class"][0].item() == pytest.approx(0.0, abs=1e-14)
    assert r["per_class"][1].item() == pytest.approx(v1, abs=1e-13)


# --------------------------------------------------------------------------- curvature
def test_curvature_zero_for_constant_velocity():
    for dtype in (torch.float64, torch.float32):
        c = torch.tensor([[1.0, -2.0, 0.5]], dtype=dtype)
        z = torch.randn(4, 3, generator=gen(9), dtype=dtype)
        curv, path = trajectory_curvature(lambda y, t: c.expand_as(y), z, 7, return_path=True)
        assert curv.shape == (4,) and curv.dtype == F64
        assert bool((curv == 0).all())
        assert path.shape == (8, 4, 3)
        torch.testing.assert_close(path[-1], z - c)  # Eq. 8: y_0 = z - v
        assert float(trajectory_deviation(path).abs().max()) < 1e-5


def test_curvature_hand_value_and_rotation():
    e1, e2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)

    def kinked(y, t):  # e1 while t > 1/2, e2 afterwards; t is a [B] tensor
        return torch.where((t > 0.5)[:, None], e1, e2).expand_as(y)

    z = torch.zeros(2, 2, dtype=F64)
    # v_0 = e1, v_1 = e2, chord = (e1 + e2) / 2: deviations (1/2, -1/2), (-1/2, 1/2) -> 1/2
    assert trajectory_curvature(kinked, z, 2).tolist() == pytest.approx([0.5, 0.5], abs=1e-15)
    assert trajectory_curvature(kinked, z, 2, per_dim=True).tolist() == pytest.approx([0.25, 0.25], abs=1e-15)

    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    z = torch.randn(3, 2, generator=gen(10), dtype=F64)
    curv, path = trajectory_curvature(lambda y, t: y @ rot.T, z, 20, return_path=True)
    assert bool((curv > 1e-3).all())
    assert bool((trajectory_deviation(path).amax(dim=1) > 1e-3).all())


def test_curvature_counts_speed_changes_deviation_does_not():
    c = torch.tensor([[2.0, 1.0]], dtype=F64)
    z = torch.randn(2, 2, generator=gen(11), dtype=F64)
    curv, path = trajectory_curvature(lambda y, t: t[:, None] * c, z, 10, return_path=True)
    assert bool((curv > 0).all())  # straight path, varying speed
    assert float(trajectory_deviation(path).max()) < 1e-12


# --------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    x = torch.randn(6, 2, 3, generator=gen(12), dtype=F64)
    with pytest.raises(ValueError, match="latents"):
        isotropy_stats(torch.randn(6), None)
    with pytest.raises(ValueError, match="latents"):
        nn_distance(torch.randn(2, 2, 2, 2), None)
    with pytest.raises(ValueError, match="NaN"):
        spherical_mmd(torch.full((4, 2), math.nan), None)
    with pytest.raises(ValueError, match="labels"):
        isotropy_stats(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        nn_distance(x, torch.zeros(6))  # float ids
    with pytest.raises(ValueError, match="class 5 has 1 sample"):
        spherical_mmd(x, torch.tensor([0, 0, 0, 1, 1, 5]))
    with pytest.raises(ValueError, match="zero covariance"):
        isotropy_stats(torch.ones(4, 3), None)
    with pytest.raises(ValueError, match="tau"):
        spherical_mmd(x, None, tau=0.0)
    with pytest.raises(ValueError, match="steps"):
        trajectory_curvature(lambda y, t: y, torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="velocity"):
        trajectory_curvature(lambda y, t: y[:, :1], torch.zeros(2, 2), 3)
    with pytest.raises(ValueError, match="path"):
        trajectory_deviation(torch.zeros(3, 2, 2))  # start == end

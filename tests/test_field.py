"""The drifting field: equality to a literal Alg. 2, exact properties, variants, errors."""

import pytest
import torch

from drifting import compute_V, drift_rae_field, mmd_field
from drifting.field import alg2_literal as _alg2_literal


def alg2_literal(x, y_pos, y_neg, T, mask_self=True):
    """The library's line-by-line Alg. 2 (drifting.field.alg2_literal), in float64."""
    return _alg2_literal(x.double(), y_pos.double(), y_neg.double(), T, mask_self)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("N,P,extra,D,T",
                         [(8, 8, 0, 2, 0.5), (16, 5, 7, 33, 1.0), (1, 3, 2, 4, 0.3), (32, 64, 16, 128, 8.0)])
def test_equals_literal_alg2_unbatched(N, P, extra, D, T):
    g = torch.Generator().manual_seed(N * 100 + D)
    x = torch.randn(N, D, generator=g)
    y_pos = torch.randn(P, D, generator=g) + 0.5
    y_neg = torch.cat([x, torch.randn(extra, D, generator=g)])
    V = compute_V(x, y_pos, y_neg, T)
    assert V.shape == x.shape and V.dtype == torch.float32
    assert rel_err(V, alg2_literal(x, y_pos, y_neg, T)) < 1e-5


def test_equals_literal_alg2_batched_and_no_mask():
    g = torch.Generator().manual_seed(0)
    B, N, P, M, D = 5, 12, 9, 20, 6
    x = torch.randn(B, N, D, generator=g)
    y_pos = torch.randn(B, P, D, generator=g)
    y_neg = torch.cat([x, torch.randn(B, M - N, D, generator=g)], dim=1)
    for mask in (True, False):
        V = compute_V(x, y_pos, y_neg, 0.7, mask_self=mask)
        assert V.shape == (B, N, D)
        for b in range(B):
            ref = alg2_literal(x[b], y_pos[b], y_neg[b], 0.7, mask_self=mask)
            assert rel_err(V[b], ref) < 1e-5
    # B independent problems: changing problem 0 leaves the others untouched
    x2 = x.clone()
    x2[0] += 1.0
    y_neg2 = torch.cat([x2, y_neg[:, N:]], dim=1)
    V2 = compute_V(x2, y_pos, y_neg2, 0.7)
    assert torch.equal(V2[1:], compute_V(x, y_pos, y_neg, 0.7)[1:])
    assert not torch.allclose(V2[0], compute_V(x, y_pos, y_neg, 0.7)[0])


def test_float64_inputs_stay_float64():
    x = torch.randn(6, 3, dtype=torch.float64)
    V = compute_V(x, torch.randn(4, 3, dtype=torch.float64), x, 1.0)
    assert V.dtype == torch.float64


@pytest.mark.parametrize("normalize", ["both", "y", "none", "separate"])
def test_antisymmetry_exact(normalize):
    """V_{p,q}(x) = -V_{q,p}(x): swapping positives and negatives flips the sign (no self-mask)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 4, generator=g)
    p = torch.randn(3, 7, 4, generator=g)
    q = torch.randn(3, 7, 4, generator=g) * 2
    V_pq = compute_V(x, p, q, 1.5, mask_self=False, normalize=normalize)
    V_qp = compute_V(x, q, p, 1.5, mask_self=False, normalize=normalize)
    assert torch.allclose(V_pq, -V_qp, atol=1e-6, rtol=0)
    assert V_pq.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("normalize", ["both", "y", "none", "separate"])
def test_zero_when_positives_equal_negatives(normalize):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 5, generator=g)
    y = torch.randn(24, 5, generator=g)
    V = compute_V(x, y, y.clone(), 0.8, mask_self=False, normalize=normalize)
    assert V.abs().max() < 1e-6
    # and nonzero once the negatives differ
    assert compute_V(x, y, y + 0.5, 0.8, mask_self=False, normalize=normalize).abs().max() > 1e-3


def test_drift_points_from_negatives_toward_positives():
    """One sample between a positive cluster on the right and a negative cluster on the left."""
    x = torch.zeros(1, 2)
    y_pos = torch.tensor([[2.0, 0.0], [2.0, 0.1]])
    y_neg = torch.tensor([[-2.0, 0.0], [-2.0, 0.1]])
    V = compute_V(x, y_pos, y_neg, 1.0, mask_self=False)
    assert V[0, 0] > 0.5 and abs(V[0, 1]) < 0.1


def test_no_gradient_through_V():
    x = torch.randn(8, 3, requires_grad=True)
    y_pos = torch.randn(8, 3, requires_grad=True)
    V = compute_V(x, y_pos, x, 1.0)
    assert not V.requires_grad and V.grad_fn is None
    # the loss ||x - sg(x + V)||^2 has gradient -2 V / numel with respect to x
    loss = (x - (x + V).detach()).square().mean()
    loss.backward()
    assert torch.allclose(x.grad, -2 * V / V.numel(), atol=1e-7)
    assert y_pos.grad is None


def test_attraction_repulsion_scales():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 3, generator=g)
    y_pos = torch.randn(2, 6, 3, generator=g)
    y_neg = torch.cat([x, torch.randn(2, 4, 3, generator=g)], 1)
    # reference: V+ and V- from Eq. (8) with Alg. 2's cross-weighted affinities
    V_default = compute_V(x, y_pos, y_neg, 1.0)
    V_attr = compute_V(x, y_pos, y_neg, 1.0, repulsion=0.0)  # attraction-only, = V+
    V_rep = V_attr - V_default  # = V-
    for a, r in [(1.5, 1.0), (1.0, 1.5), (2.0, 1.0), (1.0, 2.0)]:
        V = compute_V(x, y_pos, y_neg, 1.0, attraction=a, repulsion=r)
        assert torch.allclose(V, a * V_attr - r * V_rep, atol=1e-5)
    # attraction-only differs from the default (it is not anti-symmetric), and points to y_pos
    assert (V_attr - V_default).abs().max() > 1e-3
    # with positives == negatives and no mask, only equal scales give V = 0
    y = torch.randn(2, 6, 3, generator=g)
    assert compute_V(x, y, y, 1.0, mask_self=False).abs().max() < 1e-6
    assert compute_V(x, y, y, 1.0, mask_self=False, attraction=1.5).abs().max() > 1e-3


def test_neg_weights():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, generator=g)
    y_pos = torch.randn(5, 2, generator=g)
    y_neg = torch.cat([x, torch.randn(3, 2, generator=g)])
    # unit weights change nothing; [M] and [B, M] agree
    V = compute_V(x, y_pos, y_neg, 1.0)
    assert torch.allclose(compute_V(x, y_pos, y_neg, 1.0, neg_weights=torch.ones(9)), V)
    w = torch.tensor([1.0] * 6 + [3.0, 0.5, 2.0])
    Vw = compute_V(x, y_pos, y_neg, 1.0, neg_weights=w)
    Vb = compute_V(x[None], y_pos[None], y_neg[None], 1.0, neg_weights=w[None])[0]
    assert torch.allclose(Vw, Vb)
    # weight 0 on an extra negative == that negative's affinity removed after normalization
    w0 = torch.tensor([1.0] * 6 + [0.0, 1.0, 1.0])
    assert not torch.allclose(compute_V(x, y_pos, y_neg, 1.0, neg_weights=w0), V)
    # weights scale the negative affinities after the softmax (release convention):
    # doubling every negative weight doubles V- relative to V+ only through the cross-weights,
    # so V scales by exactly 2 (W_pos and W_neg both pick up the factor 2).
    assert torch.allclose(compute_V(x, y_pos, y_neg, 1.0, neg_weights=2 * torch.ones(9)), 2 * V, atol=1e-6)


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 3)
    y = torch.randn(5, 3)
    with pytest.raises(ValueError, match="y_pos"):
        compute_V(x, torch.randn(5, 2), x, 1.0)
    with pytest.raises(ValueError, match="y_neg"):
        compute_V(x, y, torch.randn(4, 2), 1.0)
    for T in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="T"):
            compute_V(x, y, x, T)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        compute_V(bad, y, x, 1.0)
    with pytest.raises(ValueError, match="y_pos"):
        compute_V(x, torch.full((5, 3), float("inf")), x, 1.0)
    with pytest.raises(ValueError, match="M=2"):
        compute_V(x, y, x[:2], 1.0, mask_self=True)
    compute_V(x, y, x[:2], 1.0, mask_self=False)  # fine without the mask
    with pytest.raises(ValueError, match="normalize"):
        compute_V(x, y, x, 1.0, normalize="x")
    with pytest.raises(ValueError, match="neg_weights"):
        compute_V(x, y, x, 1.0, neg_weights=torch.ones(3))
    with pytest.raises(ValueError, match="neg_weights"):
        compute_V(x, y, x, 1.0, neg_weights=-torch.ones(4))
    with pytest.raises(ValueError, match="shape"):
        compute_V(torch.randn(3), y, x, 1.0)
    with pytest.raises(ValueError, match="batch"):
        compute_V(x[None].expand(2, 4, 3), y[None], x[None].expand(2, 4, 3), 1.0)
    with pytest.raises(ValueError, match="repulsion"):
        compute_V(x, y, x, 1.0, repulsion=-1)


# ----------------------------------------------------------------------------- MMD (C.2)
def test_mmd_field_is_minus_half_gradient_of_mmd2():
    """Eq. (36)/(40)/(41): V_MMD(x) = -1/2 dL(x)/dx with dL/dx = 2 E_q[dxi/dx] - 2 E_p[dxi/dx]."""
    sigma = 0.9
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, dtype=torch.float64, generator=g)
    y = torch.randn(9, 3, dtype=torch.float64, generator=g) + 0.3
    V = mmd_field(x, y, x, sigma)
    xi = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * sigma**2))  # noqa: E731
    for i in range(x.shape[0]):
        xv = x[i : i + 1].clone().requires_grad_(True)
        others = torch.cat([x[:i], x[i + 1 :]])  # negatives y- ~ q, self left out
        L = 2 * xi(xv, others).mean() - 2 * xi(xv, y).mean()
        (grad,) = torch.autograd.grad(L, xv)
        assert torch.allclose(V[i], -0.5 * grad[0], atol=1e-10)


def test_mmd_field_antisymmetric_and_zero():
    x = torch.randn(5, 2)
    p, q = torch.randn(6, 2), torch.randn(6, 2)
    assert torch.allclose(mmd_field(x, p, q, 1.0, mask_self=False), -mmd_field(x, q, p, 1.0, mask_self=False),
                          atol=1e-6)
    assert mmd_field(x, p, p, 1.0, mask_self=False).abs().max() < 1e-6
    with pytest.raises(ValueError, match="sigma"):
        mmd_field(x, p, q, 0.0)


def test_mmd_neg_weights_equal_duplicated_negatives():
    """An integer weight w on a negative is the same as w copies of it (weighted mean over q)."""
    from drifting.field import mmd_from_distances, pairwise_distances

    g = torch.Generator().manual_seed(2)
    x, p = torch.randn(1, 4, 3, generator=g, dtype=torch.float64), torch.randn(1, 5, 3, generator=g,
                                                                               dtype=torch.float64)
    e = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    y = torch.cat([p, x, e], 1)
    w = torch.tensor([1.0] * 4 + [3.0, 2.0], dtype=torch.float64).view(1, 1, 6)
    V = mmd_from_distances(y, pairwise_distances(x, y), 5, 1.1, neg_weights=w, x=x)
    y_dup = torch.cat([p, x, e[:, [0, 0, 0, 1, 1]]], 1)
    V_dup = mmd_from_distances(y_dup, pairwise_distances(x, y_dup), 5, 1.1, x=x)
    assert torch.allclose(V, V_dup, atol=1e-12)
    assert not torch.allclose(V, mmd_from_distances(y, pairwise_distances(x, y), 5, 1.1, x=x), atol=1e-6)


# ----------------------------------------------------------------------------- Drift-RAE
def rae_literal(x, y_pos, x_neg, T, ell=1.0, factor=False):
    """Eq. (11) (l = 1, no factor) / Prop. 1 Eq. (38), term by term, with k != j for negatives."""
    out = []
    for j in range(x.shape[0]):
        xj = x[j].double()
        d = lambda a: (a.double() - xj).norm()  # noqa: E731
        kp = torch.stack([torch.exp(-d(y) ** ell / T) for y in y_pos])
        ks = [k for k in range(x_neg.shape[0]) if k != j]
        kn = torch.stack([torch.exp(-d(x_neg[k]) ** ell / T) for k in ks])
        v = torch.zeros_like(xj)
        for i, y in enumerate(y_pos):
            g = d(y) ** (ell - 2) if factor else 1.0
            v += kp[i] / kp.sum() * g * (y.double() - xj)
        for n, k in enumerate(ks):
            g = d(x_neg[k]) ** (ell - 2) if factor else 1.0
            v -= kn[n] / kn.sum() * g * (x_neg[k].double() - xj)
        out.append(v)
    return torch.stack(out)


@pytest.mark.parametrize("ell,factor", [(1.0, False), (1.0, True), (2.0, False), (1.5, True)])
def test_drift_rae_field_matches_eq11_by_hand(ell, factor):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, generator=g)
    y = torch.randn(4, 3, generator=g)
    neg = torch.cat([x, torch.randn(2, 3, generator=g)])
    ref = rae_literal(x, y, neg, 0.7, ell, factor)
    V = drift_rae_field(x, y, neg, 0.7, exponent=ell, distance_factor=factor, normalize_output=False)
    assert rel_err(V, ref) < 1e-5
    Vn = drift_rae_field(x, y, neg, 0.7, exponent=ell, distance_factor=factor)
    assert torch.allclose(Vn.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(Vn, (ref / ref.norm(dim=-1, keepdim=True)).float(), atol=1e-5)


def test_drift_rae_prop1_is_discriminator_logit_gradient():
    """Prop. 1 (Eq. 40): (l / T) V_l(x) = grad_x [log q_l(x) - log p_l(x)] with exponential kernels."""
    T, ell = 0.9, 1.5
    g = torch.Generator().manual_seed(7)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    xs = torch.randn(5, 3, generator=g, dtype=torch.float64)
    x = torch.randn(1, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = lambda a: torch.exp(-(a - x).norm(dim=-1) ** ell / T).mean()  # noqa: E731
    logit = torch.log(k(y)) - torch.log(k(xs))
    (grad,) = torch.autograd.grad(logit, x)
    V = drift_rae_field(x.detach(), y, xs, T, exponent=ell, distance_factor=True, mask_self=False,
                        normalize_output=False)
    assert torch.allclose(ell / T * V, grad, atol=1e-9)


def test_drift_rae_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="exponent"):
        drift_rae_field(x, x, torch.cat([x, x]), 1.0, exponent=0)
    with pytest.raises(ValueError, match="y_neg"):
        drift_rae_field(x[:1], x, x[:1], 1.0)  # only the sample itself: nothing to repel from
    with pytest.raises(ValueError, match="y_neg"):
        drift_rae_field(x, x, x[:2], 1.0)  # fewer negatives than samples
    # the common case, negatives = the generated batch itself (k != j in Eq. 11), is fine
    V = drift_rae_field(x, x + 1, x, 1.0, normalize_output=False)
    assert torch.allclose(V, rae_literal(x, x + 1, x, 1.0).float(), atol=1e-5)


def test_separate_normalization_is_eq8_to_10():
    """normalize="separate": V = V+_p - V-_q with their own softmaxes (Eq. 8-10), which is the
    unnormalized Drift-RAE field at l = 1, and Alg. 2's "y" variant is it times Zp Zq / (Zp + Zq)^2."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 3, generator=g)
    y = torch.randn(2, 5, 3, generator=g)
    neg = torch.cat([x, torch.randn(2, 4, 3, generator=g)], 1)
    V = compute_V(x, y, neg, 0.6, normalize="separate")
    assert torch.allclose(V, drift_rae_field(x, y, neg, 0.6, normalize_output=False), atol=1e-6)
    # relation to the joint softmax of Alg. 2 (row softmax only)
    dp = torch.cdist(x, y)
    dn = torch.cdist(x, neg) + torch.nn.functional.pad(torch.eye(6), (0, 4)) * 1e6
    Zp, Zq = torch.exp(-dp / 0.6).sum(-1, keepdim=True), torch.exp(-dn / 0.6).sum(-1, keepdim=True)
    Vy = compute_V(x, y, neg, 0.6, normalize="y")
    assert torch.allclose(Vy, V * Zp * Zq / (Zp + Zq) ** 2, atol=1e-6)
    # weights: a weighted mean over the negatives
    w = torch.tensor([1.0] * 6 + [2.0, 0.0, 1.0, 3.0])
    Vw = compute_V(x[0], y[0], neg[0], 0.6, normalize="separate", neg_weights=w)
    kn = torch.exp(-dn[0] / 0.6) * w
    kp = torch.exp(-dp[0] / 0.6)
    ref = (kp / kp.sum(-1, keepdim=True)) @ y[0] - (kn / kn.sum(-1, keepdim=True)) @ neg[0]
    assert torch.allclose(Vw, ref, atol=1e-5)


def test_laplace_norm_noise_distribution():
    """Eq. 12: uniform direction, norm ~ |Laplace(0, 1)| (= Exp(1)), independent of D."""
    from scipy import stats

    from drifting.field import laplace_norm_noise

    g = torch.Generator().manual_seed(0)
    n = laplace_norm_noise((20000, 16), generator=g, dtype=torch.float64)
    norms = n.norm(dim=-1).numpy()
    assert stats.kstest(norms, stats.expon.cdf).pvalue > 1e-3
    assert stats.kstest(norms, stats.halfnorm.cdf).pvalue < 1e-6  # not a Gaussian's norm profile
    u = (n / n.norm(dim=-1, keepdim=True)).mean(0)
    assert u.abs().max() < 0.03  # directions average out
    cov = torch.cov((n / n.norm(dim=-1, keepdim=True)).T)
    assert torch.allclose(cov, torch.eye(16, dtype=torch.float64) / 16, atol=5e-3)  # isotropic on the sphere
    assert laplace_norm_noise((3, 1), generator=g).shape == (3, 1)
    with pytest.raises(ValueError, match="shape"):
        laplace_norm_noise((5, 0))


def test_all_finite_finds_every_nan_and_inf():
    from drifting.field import all_finite

    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        t = torch.randn(6, 9).to(dtype)
        assert all_finite(t) and all_finite(t[:, ::2])
        for bad in (float("nan"), float("inf"), -float("inf")):
            u = t.clone()
            u[4, 7] = bad
            assert not all_finite(u), (dtype, bad)
            assert all_finite(u[:, :7])  # the bad value outside the view
    assert all_finite(torch.full((3,), 3e38)) and all_finite(torch.zeros(0)) and all_finite(torch.arange(4))
    with pytest.raises(ValueError, match="non-finite"):
        compute_V(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), torch.zeros(1, 2), 1.0,
                  mask_self=False)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_one_bad_value_anywhere_is_named(impl):
    """compute_V checks finiteness on V, not on the inputs (issue 16: no validation pass over finite inputs),
    so each NaN or inf, in any one problem, in any input, even in a negative of weight 0, must still reach V
    and be named."""
    g = torch.Generator().manual_seed(0)
    B, N, P, D = 5, 6, 7, 4
    x = torch.randn(B, N, D, generator=g)
    y_pos = torch.randn(B, P, D, generator=g)
    y_neg = torch.cat([x, torch.randn(B, 3, D, generator=g)], dim=1)
    w = torch.ones(B, N + 3)
    w[:, -1] = 0.0
    for bad in (float("nan"), float("inf"), -float("inf")):
        for name, where in (("x", (3, 2, 1)), ("y_pos", (1, 6, 0)), ("y_neg", (4, N + 2, 3))):
            xs, ps, ns = x.clone(), y_pos.clone(), y_neg.clone()
            t = {"x": xs, "y_pos": ps, "y_neg": ns}[name]
            t[where] = bad
            if name == "x":
                ns[:, :N] = xs  # the first N negatives are x
            with pytest.raises(ValueError, match=f"^{name} contains non-finite"):
                compute_V(xs, ps, ns, 0.5, neg_weights=w, impl=impl)

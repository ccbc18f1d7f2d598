"""The drifting loss: Eq. (6)/(26) with S_j (Eq. 21) and lambda_j (Eq. 25), several temperatures."""

import math

import pytest
import torch

from drifting import compute_V, drifting_loss


def reference_loss(gen, pos, extra=None, w=None, temps=(0.02, 0.05, 0.2)):
    """Literal A.6 for one group [B, N, L, C]: loop over (b, l) problems, compute_V per problem."""
    B, N, L, C = gen.shape
    P = pos.shape[1]
    x = gen.detach().double()
    # S_j: weighted mean over all generated-to-target distances (self pairs included), / sqrt(C)
    num, den = 0.0, 0.0
    for b in range(B):
        for li in range(L):
            targets = [x[b, :, li]] + ([extra[b, :, li].double()] if extra is not None else [])
            wt = [torch.ones(N)] + ([w[b] if w.dim() == 2 else w] if extra is not None else [])
            num += torch.cdist(x[b, :, li], pos[b, :, li].double()).sum()
            den += N * P
            for t, ww in zip(targets, wt):
                num += (torch.cdist(x[b, :, li], t) * ww.double()).sum()
                den += N * ww.sum().double()
    S = num / den / math.sqrt(C)
    V_total = torch.zeros_like(x)
    for tau in temps:
        Vs = torch.zeros_like(x)
        for b in range(B):
            for li in range(L):
                neg = x[b, :, li]
                nw = None
                if extra is not None:
                    neg = torch.cat([neg, extra[b, :, li].double()])
                    ww = w[b] if w.dim() == 2 else w
                    nw = torch.cat([torch.ones(N, dtype=torch.float64), ww.double()])
                Vs[b, :, li] = compute_V(x[b, :, li] / S, pos[b, :, li].double() / S, neg / S,
                                        tau * math.sqrt(C), neg_weights=nw)
        lam = torch.sqrt(Vs.square().sum(-1).mean() / C)
        V_total += Vs / lam
    xs = gen.double() / S
    return (xs - (xs.detach() + V_total)).square().mean()


def test_matches_literal_A6_with_locations_and_cfg_weights():
    g = torch.Generator().manual_seed(0)
    B, N, L, C, P, U = 3, 6, 4, 5, 7, 3
    gen = torch.randn(B, N, L, C, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(B, P, L, C, generator=g, dtype=torch.float64) + 0.3
    unc = torch.randn(B, U, L, C, generator=g, dtype=torch.float64)
    w = torch.rand(B, U, generator=g, dtype=torch.float64) * 3
    loss, stats = drifting_loss({"f": gen}, {"f": pos}, {"f": unc}, neg_weights=w)
    ref = reference_loss(gen, pos, unc, w)
    assert abs(loss.item() - ref.item()) < 1e-9 * max(1.0, abs(ref.item()))
    (g1,) = torch.autograd.grad(loss, gen)
    (g2,) = torch.autograd.grad(reference_loss(gen, pos, unc, w), gen)
    assert torch.allclose(g1, g2, atol=1e-10)
    assert set(stats) >= {"f/loss", "f/S", "f/V2@0.02", "f/V2@0.05", "f/V2@0.2", "f/lambda@0.2"}


def test_unnormalized_single_temperature_is_plain_eq6():
    """No S_j, no lambda_j, one tau: loss = mean ||V||^2 / D and dL/dx = -2 V / numel."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 32, 2, generator=g, requires_grad=True)
    y = torch.randn(1, 40, 2, generator=g)
    loss, stats = drifting_loss(x, y, temperatures=[0.5], normalize_features=False, normalize_drift=False)
    V = compute_V(x[0], y[0], x[0], 0.5 * math.sqrt(2))
    assert torch.allclose(loss, V.square().mean(), rtol=1e-5)
    assert torch.allclose(stats["x/V2@0.5"], V.square().sum(-1).mean(), rtol=1e-5)
    loss.backward()
    assert torch.allclose(x.grad[0], -2 * V / V.numel(), atol=1e-7)


def test_drift_normalization_makes_unit_per_dim_drift():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 8, generator=g)
    y = torch.randn(2, 16, 8, generator=g) * 3
    loss, _ = drifting_loss(x, y, temperatures=[0.05])
    assert abs(loss.item() - 1.0) < 1e-5  # E[||V~||^2 / C] = 1  (Eq. 24)


def test_invariant_to_feature_rescaling():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 3, 6, generator=g)
    y = torch.randn(2, 10, 3, 6, generator=g) + 1
    n = torch.randn(2, 4, 3, 6, generator=g)
    base, s1 = drifting_loss(x, y, n)
    for k in (1e-3, 7.0, 250.0):
        scaled, s2 = drifting_loss(k * x, k * y, k * n)
        assert abs(scaled.item() - base.item()) < 1e-4 * base.item()
        assert torch.allclose(s2["x/V2@0.05"], s1["x/V2@0.05"], rtol=1e-3)
    # without feature normalization the kernel sees the scale: values differ
    raw1, _ = drifting_loss(x, y, normalize_features=False)
    raw2, _ = drifting_loss(7 * x, 7 * y, normalize_features=False)
    assert abs(raw1.item() - raw2.item()) > 1e-3


def test_groups_sum_and_gradient_only_into_gen():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 8, 4, generator=g, requires_grad=True)
    b = torch.randn(2, 8, 5, 3, generator=g, requires_grad=True)
    pa = torch.randn(2, 6, 4, generator=g, requires_grad=True)
    pb = torch.randn(2, 6, 5, 3, generator=g)
    total, stats = drifting_loss({"a": a, "b": b}, {"a": pa, "b": pb})
    la, _ = drifting_loss({"a": a}, {"a": pa})
    lb, _ = drifting_loss({"b": b}, {"b": pb})
    assert torch.allclose(total, la + lb)
    assert torch.allclose(stats["a/loss"] + stats["b/loss"], total)
    total.backward()
    assert pa.grad is None and a.grad is not None and b.grad.abs().sum() > 0


def test_drift_norm_goes_down_as_q_approaches_p():
    """The raw drift norm at the widest temperature falls monotonically as q approaches p.

    (At small tau the raw norm of a finite batch is dominated by nearest-neighbour noise, and
    for far-apart sets the small-tau kernel underflows, so only the wide tau is monotone.)
    """
    g = torch.Generator().manual_seed(5)
    y = torch.randn(1, 256, 2, generator=g)
    eps = torch.randn(1, 256, 2, generator=g)
    v2 = [drifting_loss(eps + off, y)[1]["x/V2@0.2"].item() for off in (3.0, 1.0, 0.5, 0.0)]
    assert all(a > 2 * b for a, b in zip(v2, v2[1:])), v2


def test_bad_inputs():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="pos"):
        drifting_loss({"a": x}, {"b": x})
    with pytest.raises(ValueError, match="temperatures"):
        drifting_loss(x, x, temperatures=[0.1, -1])
    with pytest.raises(ValueError, match="temperatures"):
        drifting_loss(x, x, temperatures=[])
    with pytest.raises(ValueError, match="gen"):
        drifting_loss(torch.full_like(x, float("nan")), x)
    with pytest.raises(ValueError, match="pos"):
        drifting_loss(x, torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match="pos"):
        drifting_loss(x, torch.randn(2, 4, 2))
    with pytest.raises(ValueError, match="neg_weights"):
        drifting_loss(x, x, neg_weights=torch.ones(4))
    with pytest.raises(ValueError, match="neg_weights"):
        drifting_loss(x, x, torch.randn(2, 5, 3), neg_weights=torch.ones(4))
    with pytest.raises(ValueError, match="gen_as_negatives"):
        drifting_loss(x, x, gen_as_negatives=False)
    with pytest.raises(ValueError, match="normalize"):
        drifting_loss(x, x, normalize="bad")
    with pytest.raises(ValueError, match="shape"):
        drifting_loss(torch.randn(4, 3), torch.randn(4, 3))


def test_mmd_kernel_loss_gradient_is_mmd2_gradient():
    """kernel='mmd' without drift normalization (S = 1): the loss gradient is the gradient of the
    squared MMD (U-statistic for the q-q term) summed over the bandwidths, divided by C (the MSE's mean)."""
    g = torch.Generator().manual_seed(3)
    N, P, C, temps = 6, 7, 5, (0.3, 0.8)
    gen = torch.randn(1, N, C, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(1, P, C, generator=g, dtype=torch.float64) + 0.4
    loss, _ = drifting_loss(gen, pos, temperatures=temps, kernel="mmd", normalize_features=False,
                            normalize_drift=False)
    (grad,) = torch.autograd.grad(loss, gen)
    x, y = gen[0], pos[0]
    mmd2 = 0.0
    for tau in temps:
        s = tau * math.sqrt(C)
        xi = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * s**2))  # noqa: E731
        off = ~torch.eye(N, dtype=torch.bool)
        mmd2 = mmd2 + xi(x, x)[off].mean() - 2 * xi(x, y).mean() + xi(y, y).mean()
    (ref,) = torch.autograd.grad(mmd2, gen)
    assert torch.allclose(grad * C, ref, atol=1e-10)
    assert ref.abs().max() > 1e-3  # a real gradient, not two zeros


def test_mmd_kernel_rejects_laplace_options():
    x = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match="kernel"):
        drifting_loss(x, x, kernel="gauss")
    with pytest.raises(ValueError, match="Laplace"):
        drifting_loss(x, x, kernel="mmd", normalize="none")


@pytest.mark.parametrize("per_problem_S", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_frozen_target_sq_equals_autograd_of_the_plain_formula(dtype, per_problem_S):
    """Each problem's sum((x / S - goal)^2), with S a scalar or one per problem, and its gradient under an
    upstream gradient that differs per problem, equal autograd of the plain formula."""
    from drifting.loss import _frozen_target_sq

    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, 6, generator=g, dtype=dtype).requires_grad_(True)
    S = torch.tensor(1.7, dtype=dtype)
    if per_problem_S:
        S = torch.rand(7, 1, 1, generator=g, dtype=dtype) + 0.5
    goal = torch.randn(7, 5, 6, generator=g, dtype=dtype)
    up = torch.arange(1.0, 8.0, dtype=dtype)  # an upstream gradient other than 1, one per problem
    sq = _frozen_target_sq(x, S, goal)
    (grad,) = torch.autograd.grad((up * sq).sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = ((x_ref / S - goal) ** 2).sum(dim=(1, 2))
    (grad_ref,) = torch.autograd.grad((up * ref).sum(), x_ref)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert sq.dtype == dtype and sq.shape == (7,) and torch.allclose(sq, ref.detach(), rtol=tol, atol=0)
    assert torch.allclose(grad, grad_ref, rtol=tol, atol=0)


@pytest.mark.parametrize("normalize_features", [True, False])
@pytest.mark.parametrize("kernel", ["laplace", "mmd"])
def test_one_bad_feature_anywhere_is_named(normalize_features, kernel):
    """The loss runs no validation pass over finite features (issue 16): a NaN or inf in one value of one
    problem of gen, pos or neg must still make it raise, naming that input and group."""
    g = torch.Generator().manual_seed(0)
    gen0 = torch.randn(3, 6, 4, 5, generator=g)  # [B, N, L, C]
    pos0 = torch.randn(3, 7, 4, 5, generator=g)
    neg0 = torch.randn(3, 2, 4, 5, generator=g)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for name, where in (("gen", (2, 5, 3, 4)), ("pos", (0, 6, 1, 0)), ("neg", (1, 1, 2, 2))):
            t = {"gen": gen0.clone(), "pos": pos0.clone(), "neg": neg0.clone()}
            t[name][where] = bad
            with pytest.raises(ValueError, match=rf"^{name}\['a'\] contains non-finite"):
                drifting_loss({"b": gen0, "a": t["gen"]}, {"b": pos0, "a": t["pos"]},
                              {"b": neg0, "a": t["neg"]}, neg_weights=torch.tensor([1.0, 0.0]),
                              normalize_features=normalize_features, kernel=kernel)


def test_field_options_are_one_validated_frozen_carrier():
    """FieldOptions: errors name the field; a list becomes a tuple; it cannot be changed in place."""
    import dataclasses

    from drifting import FieldOptions

    assert FieldOptions(temperatures=[0.1, 0.2]).temperatures == (0.1, 0.2)
    for kw, name in ((dict(temperatures=()), "temperatures"), (dict(temperatures=(0.1, -1)), "temperatures"),
                     (dict(temperatures="abc"), "temperatures"), (dict(normalize="rows"), "normalize"),
                     (dict(attraction=-1.0), "attraction"), (dict(repulsion=float("nan")), "repulsion"),
                     (dict(kernel="gauss"), "kernel"), (dict(kernel="mmd", normalize="y"), "Laplace")):
        with pytest.raises(ValueError, match=name):
            FieldOptions(**kw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FieldOptions().normalize = "y"


def test_field_options_and_keywords_are_the_same_loss():
    """``options=FieldOptions(...)`` and the same fields as keywords give one loss; keywords override the
    options; a keyword that is no field option is a TypeError that lists them."""
    from drifting import FieldOptions, compute_V

    g = torch.Generator().manual_seed(0)
    gen = torch.randn(2, 6, 4, generator=g, requires_grad=True)
    pos = torch.randn(2, 5, 4, generator=g)
    opts = FieldOptions(temperatures=(0.05,), normalize="y", attraction=1.5)
    a, sa = drifting_loss(gen, pos, options=opts)
    b, sb = drifting_loss(gen, pos, temperatures=(0.05,), normalize="y", attraction=1.5)
    c, _ = drifting_loss(gen, pos, options=FieldOptions(temperatures=(0.2,), normalize="y", attraction=1.5),
                         temperatures=(0.05,))
    default, _ = drifting_loss(gen, pos)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert sa.keys() == sb.keys() == {"x/loss", "x/S", "x/V2@0.05", "x/lambda@0.05"}
    assert not torch.equal(a, default)
    with pytest.raises(TypeError, match="temperatures"):
        drifting_loss(gen, pos, temprature=(0.05,))
    x, yp = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    V1 = compute_V(x, yp, x, 0.5, options=FieldOptions(normalize="y", repulsion=0.5))
    assert torch.equal(V1, compute_V(x, yp, x, 0.5, normalize="y", repulsion=0.5))
    with pytest.raises(TypeError, match="normalize"):  # a kernel takes T, not the loss's temperatures
        compute_V(x, yp, x, 0.5, temperatures=(0.5,))


@pytest.mark.parametrize("kernel", ["laplace", "mmd"])
def test_groups_of_one_width_computed_together_equal_each_alone(kernel):
    """Groups of equal width (a tap's locations and its pooled statistics) are stacked and computed in one
    pass, each with its own S_j and lambda_j: the loss, every statistic and the gradient equal those of each
    group computed alone, with CFG weights and a group of another width beside them."""
    from drifting.loss import _group_targets, _stackable

    g = torch.Generator().manual_seed(5)
    B, N, P, U, C = 3, 6, 7, 2, 5
    shapes = {"loc": (B, N, 4, C), "mean": (B, N, C), "p2": (B, N, 2, C), "other": (B, N, 3)}
    scale = {"loc": 1.0, "mean": 5.0, "p2": 0.2, "other": 2.0}  # S_j differ by 25x between the groups
    gen = {j: (scale[j] * torch.randn(*s, generator=g, dtype=torch.float64)).requires_grad_(True)
           for j, s in shapes.items()}
    pos = {j: scale[j] * (torch.randn(s[0], P, *s[2:], generator=g, dtype=torch.float64) + 0.3)
           for j, s in shapes.items()}
    neg = {j: scale[j] * torch.randn(s[0], U, *s[2:], generator=g, dtype=torch.float64)
           for j, s in shapes.items()}
    w = torch.rand(B, U, generator=g, dtype=torch.float64) * 3
    groups = {j: _group_targets(j, gen[j], pos[j], neg[j], True, None) for j in gen}
    assert _stackable(groups) == [["loc", "mean", "p2"], ["other"]]
    opts = dict(kernel=kernel) if kernel == "mmd" else {}
    total, stats = drifting_loss(gen, pos, neg, neg_weights=w, **opts)
    grads = torch.autograd.grad(total, list(gen.values()))
    alone_total = 0.0
    for (j, x), grad in zip(gen.items(), grads):
        alone, alone_stats = drifting_loss({j: x}, {j: pos[j]}, {j: neg[j]}, neg_weights=w, **opts)
        alone_total = alone_total + alone
        assert set(alone_stats) <= set(stats)
        for k, v in alone_stats.items():
            assert torch.allclose(stats[k], v, rtol=1e-10, atol=0), k
        (alone_grad,) = torch.autograd.grad(alone, x)
        assert torch.allclose(grad, alone_grad, rtol=1e-9, atol=1e-14), j
    assert torch.allclose(total, alone_total, rtol=1e-12)
    # the groups' S_j really differ, so one shared S would fail the comparison above
    assert stats["mean/S"] / stats["p2/S"] > 5

"""The fast field (drifting.field.fast) against a literal Alg. 2: every normalization, weights,
Table 1 scales, chunked and streamed columns, several temperatures at once, bf16 inputs."""

import pytest
import torch

from drifting import compute_V
from drifting.field import drift_from_distances
from drifting.field.fast import Distances, drift_fields, plan_chunks


def literal(x, y, P, T, *, normalize="both", mask=True, w=None, a=1.0, r=1.0):
    """Alg. 2 one problem and one temperature at a time, float64, directly evaluated distances."""
    out = []
    for b in range(x.shape[0]):
        xb, yb = x[b:b + 1].double(), y[b:b + 1].double()
        wb = None if w is None else w[b:b + 1].double()
        out.append(drift_from_distances(yb, torch.cdist(xb, yb), P, T, normalize=normalize, mask_self=mask,
                                        neg_weights=wb, attraction=a, repulsion=r, x=xb)[0])
    return torch.stack(out)  # [B, N, D]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def problem(B=3, N=12, P=10, extra=9, D=48, offset=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g) + offset
    y_pos = torch.randn(B, P, D, generator=g) + offset + 0.3
    # [B, P+N+extra, D]
    y = torch.cat([y_pos, x, torch.randn(B, extra, D, generator=g) * 1.5 + offset], dim=1)
    return x, y, P


def budget_for_block(N, D, K, block):
    """The max_elements that makes plan_chunks stream columns in blocks of ``block``."""
    return N * D + block * (3 * K * N + D)


@pytest.mark.parametrize("normalize", ["both", "y", "none", "separate"])
@pytest.mark.parametrize("block", [None, 7, 1])  # dense, 7-column blocks, 1-column blocks
def test_equals_literal_alg2(normalize, block):
    x, y, P = problem(extra=200)  # Y = 222 targets: enough that a small budget must stream them
    max_elements = None if block is None else budget_for_block(12, 48, 3, block)
    assert (plan_chunks(3, 12, y.shape[1], 3, 48, max_elements)
            == ((3, y.shape[1]) if block is None else (1, block)))
    temps = [2.0, 5.0, 20.0]
    w = torch.rand(3, 1, y.shape[1] - P, generator=torch.Generator().manual_seed(5)) + 0.5
    for weights in (None, w):
        for a, r in ((1.0, 1.0), (1.0, 0.3)):
            V = drift_fields(Distances(x, y, self_col=P), P, temps, normalize=normalize, neg_weights=weights,
                             attraction=a, repulsion=r, max_elements=max_elements)
            assert V.shape == (3, 3, 12, 48) and V.dtype == torch.float32
            for k, T in enumerate(temps):
                ref = literal(x, y, P, T, normalize=normalize, w=weights, a=a, r=r)
                assert rel(V[:, k], ref) < 1e-5, (weights is not None, a, r, T)


def test_plan_bounds_a_chunks_temporaries():
    B, N, Y, K, D = 64, 64, 224, 3, 256
    per_problem = 3 * K * N * Y + Y * D + N * D  # three logit buffers, centered targets and samples
    chunk, block = plan_chunks(B, N, Y, K, D, 1 << 20)
    assert block == Y and chunk * per_problem <= 1 << 20 < (chunk + 1) * per_problem
    # one problem exceeds the budget: stream; the temporaries no longer grow with Y
    for Y in (10_000, 100_000):
        chunk, block = plan_chunks(4, N, Y, K, D, 1 << 20)
        assert chunk == 1 and block < Y
        assert N * D + block * (3 * K * N + D) <= 1 << 20
    with pytest.raises(ValueError, match="max_elements"):
        plan_chunks(1, 1, 1, 1, 1, 0)


def test_streaming_is_exact_at_large_Y_and_extreme_temperature():
    """Many targets in 1-column blocks at a temperature where most kernel values underflow."""
    x, y, P = problem(B=2, N=6, P=40, extra=60, D=16, seed=3)
    for T in (0.05, 1.0):
        V = drift_fields(Distances(x, y, self_col=P), P, [T], max_elements=6)[:, 0]
        assert rel(V, literal(x, y, P, T)) < 1e-5


@pytest.mark.parametrize("normalize", ["both", "y", "none", "separate"])
def test_only_masked_negatives_and_a_small_temperature(normalize):
    """One sample whose only negative is itself: a column, and for "separate" a whole negative set, of
    masked pairs only. At T = 1e-3 nearly every kernel value underflows."""
    x, y, P = problem(B=2, N=1, P=5, extra=0, D=8, seed=6)
    for T in (1.0, 1e-3):
        for block in (None, 1):
            max_elements = None if block is None else budget_for_block(1, 8, 1, block)
            V = drift_fields(Distances(x, y, self_col=P), P, [T], normalize=normalize,
                             max_elements=max_elements)
            ref = literal(x, y, P, T, normalize=normalize)
            assert torch.isfinite(V).all() and torch.isfinite(ref).all()
            assert (V[:, 0].double() - ref).abs().max() <= 1e-5 * (1 + ref.abs().max()), (T, block)


def test_several_temperatures_equal_separate_calls_and_no_mask():
    x, y, P = problem(seed=1)
    d = Distances(x, y)  # no self column: nothing masked
    V = drift_fields(d, P, [1.0, 4.0])
    for k, T in enumerate((1.0, 4.0)):
        assert rel(V[:, k], literal(x, y, P, T, mask=False)) < 1e-5
        assert rel(V[:, k], drift_fields(d, P, [T])[:, 0]) < 1e-6


def test_near_duplicates_far_from_the_origin_keep_their_precision():
    """Pairs 1e-3 apart at offset 1e3: the plain |x|^2 + |y|^2 - 2 x.y form would get their distance
    wrong by ~1e-1; the refined pairs keep the field equal to the literal one."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 32, generator=g) + 1000.0
    y_pos = x + 1e-3 * torch.randn(2, 8, 32, generator=g)  # a near copy of each sample
    y = torch.cat([y_pos, x, x + 0.1 * torch.randn(2, 8, 32, generator=g)], dim=1)
    V = drift_fields(Distances(x, y, self_col=8), 8, [0.01])[:, 0]
    assert rel(V, literal(x, y, 8, 0.01)) < 1e-4


def test_bf16_inputs_give_fp32_field_of_the_rounded_inputs():
    x, y, P = problem(seed=2)
    xb, yb = x.bfloat16(), y.bfloat16()
    V = drift_fields(Distances(xb, yb, self_col=P), P, [3.0])[:, 0]
    assert V.dtype == torch.float32
    assert rel(V, literal(xb.float(), yb.float(), P, 3.0)) < 1e-5


def test_float64_stays_float64_and_cache_gives_the_same_field():
    x, y, P = problem(seed=6)
    d = Distances(x.double(), y.double(), self_col=P, cache_elements=10**9)
    s1 = d.weighted_sum(P, None)  # fills the cache
    V = drift_fields(d, P, [2.0])[:, 0]
    assert V.dtype == torch.float64 and rel(V, literal(x, y, P, 2.0)) < 1e-5
    assert torch.allclose(s1, torch.cdist(x.double(), y.double()).sum())


def test_weighted_sum_is_eq21_numerator():
    x, y, P = problem(seed=7)
    w = torch.rand(3, 1, y.shape[1] - P) + 0.2
    d = torch.cdist(x.double(), y.double())
    want = d[..., :P].sum() + (d[..., P:] * w.double()).sum()
    for me in (None, 5):
        got = Distances(x, y, self_col=P).weighted_sum(P, w, me)
        assert abs(got.item() - want.item()) < 1e-5 * want.item()


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_compute_V_impls_agree(impl):
    x, y, P = problem(B=2, seed=8)
    V = compute_V(x, y[:, :P], y[:, P:], 4.0, impl=impl)
    assert rel(V, literal(x, y, P, 4.0)) < 1e-5
    with pytest.raises(ValueError, match="impl"):
        compute_V(x, y[:, :P], y[:, P:], 4.0, impl="slow")


def test_errors_name_the_argument():
    x, y, P = problem(B=1)
    d = Distances(x, y, self_col=P)
    with pytest.raises(ValueError, match="normalize"):
        drift_fields(d, P, [1.0], normalize="rows")
    with pytest.raises(ValueError, match="temperatures"):
        drift_fields(d, P, [0.0])
    with pytest.raises(ValueError, match="P must be"):
        drift_fields(d, 0, [1.0])
    with pytest.raises(ValueError, match="self_col"):
        Distances(x, y, self_col=y.shape[1])


def test_compiled_weights_equal_eager():
    """torch.compile of the fused elementwise part gives the eager result (one shape: one compile)."""
    x, y, P = problem(B=2, N=8, P=6, extra=4, D=16, seed=9)
    w = torch.rand(2, 1, y.shape[1] - P) + 0.5
    eager = drift_fields(Distances(x, y, self_col=P), P, [1.0, 3.0], neg_weights=w)
    fused = drift_fields(Distances(x, y, self_col=P), P, [1.0, 3.0], neg_weights=w, compile=True)
    assert rel(fused, eager) < 1e-5


def test_equals_the_line_by_line_alg2_transcription():
    from drifting.field import alg2_literal

    x, y, P = problem(B=2, N=16, P=24, extra=8, D=64, seed=10)
    temps = [1.0, 3.0, 9.0]
    V = drift_fields(Distances(x, y, self_col=P), P, temps)
    for k, T in enumerate(temps):
        ref = torch.stack([alg2_literal(x[b].double(), y[b, :P].double(), y[b, P:].double(), T)
                           for b in range(2)])
        assert rel(V[:, k], ref) < 1e-5


def test_the_loss_computes_each_distance_once(monkeypatch):
    """The S_j pass fills the cache and the field pass reads it: one distance product per chunk."""
    from drifting.loss import drifting_loss

    calls = {"n": 0}
    real = torch.baddbmm

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)
    monkeypatch.setattr(torch, "baddbmm", counting)
    x, y, P = problem(B=4, N=8, P=6, extra=4, D=16, seed=11)
    drifting_loss(x.requires_grad_(True), y[:, :P], max_elements=3 * 3 * 8 * 26)  # chunks of ~1 problem
    first = calls["n"]
    calls["n"] = 0
    from drifting.field.fast import Distances as D_

    d = D_(x, torch.cat([y[:, :P], x], 1), self_col=P)
    d.weighted_sum(P, None, 3 * 3 * 8 * 26, K=3)
    assert first == calls["n"] >= 2  # the loss did no more products than its S_j pass alone


@pytest.mark.parametrize("shape", [(640, 8, 8, 64), (64, 64, 64, 256), (8, 64, 128, 1024)])
def test_repeated_calls_are_bit_identical(shape):
    """Issue 16: one seeded check once differed from Alg. 2 by 1e-3 in one run of three. The same call on
    the same inputs must give the same bits every time (no thread-order reductions, no flipping branch)."""
    B, N, P, D = shape
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, N, D, generator=g)
    y_pos = torch.randn(B, P, D, generator=g) + 0.1
    y_neg = torch.cat([x, torch.randn(B, 16, D, generator=g)], dim=1)
    first = compute_V(x, y_pos, y_neg, 0.05)
    for _ in range(5):
        assert torch.equal(compute_V(x, y_pos, y_neg, 0.05), first)


def test_the_loss_value_and_gradient_are_bit_identical_on_repeat():
    """Issue 16: drifting_loss (3 temperatures, feature and drift normalization) and its gradient, twice."""
    from drifting.loss import drifting_loss

    g = torch.Generator().manual_seed(3)
    gen0 = torch.randn(64, 8, 64, generator=g)
    pos = torch.randn(64, 8, 64, generator=g) + 0.2
    neg = torch.randn(64, 8, 64, generator=g)
    w = torch.rand(64, 8, generator=g)

    def run():
        gen = gen0.clone().requires_grad_()
        loss, _ = drifting_loss({"f": gen}, {"f": pos}, {"f": neg}, neg_weights=w)
        loss.backward()
        return loss.detach(), gen.grad

    loss, grad = run()
    for _ in range(3):
        l2, g2 = run()
        assert torch.equal(l2, loss) and torch.equal(g2, grad)


@pytest.mark.parametrize("precision", ["medium", "high"])
def test_reduced_matmul_precision_does_not_reach_the_field(precision):
    """``torch.set_float32_matmul_precision("medium")`` makes oneDNN run fp32 products in bf16 on CPUs with
    AMX (and TF32 on CUDA for "high"): the field keeps IEEE fp32 products, so its bits do not change, and the
    process's setting is back after the call. (At this size the unguarded products differ even on an AMD EPYC
    with AVX-512 BF16.)"""
    x, y, P = problem(B=8, N=64, P=64, extra=8, D=256)
    y_pos, y_neg = y[:, :P], y[:, P:]
    exact = compute_V(x, y_pos, y_neg, 5.0)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        before = torch.backends.mkldnn.matmul.fp32_precision
        assert before != "ieee"
        assert torch.equal(compute_V(x, y_pos, y_neg, 5.0), exact)
        assert torch.backends.mkldnn.matmul.fp32_precision == before
        assert torch.get_float32_matmul_precision() == precision
    finally:
        torch.set_float32_matmul_precision(old)


def test_per_problem_temperatures_equal_each_problem_alone():
    """``drift_fields`` with a ``[B, K]`` tensor of temperatures gives every problem the field of its own
    temperatures, in the dense and the streaming (column-blocked) paths; a wrong shape is an error."""
    g = torch.Generator().manual_seed(8)
    B, N, P, M, D = 4, 5, 6, 3, 3
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    y = torch.cat([torch.randn(B, P, D, generator=g, dtype=torch.float64), x,
                   torch.randn(B, M, D, generator=g, dtype=torch.float64)], 1)
    T = torch.tensor([[0.5, 2.0], [1.0, 4.0], [0.1, 0.3], [3.0, 9.0]], dtype=torch.float64)
    for max_elements in (None, 3 * 2 * N * 4 + 4 * D + N * D):  # the second streams blocks of columns
        V = drift_fields(Distances(x, y, self_col=P), P, T, max_elements=max_elements)
        for b in range(B):
            alone = drift_fields(Distances(x[b:b + 1], y[b:b + 1], self_col=P), P, T[b].tolist())
            assert torch.allclose(V[b], alone[0], rtol=1e-10, atol=1e-14), (b, max_elements)
    with pytest.raises(ValueError, match=r"per-problem temperatures must be \[B=4"):
        drift_fields(Distances(x, y, self_col=P), P, T[:3])
    with pytest.raises(ValueError, match="positive finite"):
        drift_fields(Distances(x, y, self_col=P), P, -T)


def test_weighted_sum_per_problem():
    """``weighted_sum(per_problem=True)``: each problem's weighted distance sum, ``[B]``, summing to the
    total."""
    g = torch.Generator().manual_seed(9)
    B, N, P, M, D = 3, 4, 5, 2, 3
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    y = torch.cat([torch.randn(B, P, D, generator=g, dtype=torch.float64),
                   torch.randn(B, M, D, generator=g, dtype=torch.float64)], 1)
    w = torch.rand(B, 1, M, generator=g, dtype=torch.float64)
    d = torch.cdist(x, y)
    want = d[..., :P].sum((1, 2)) + (d[..., P:] * w).sum((1, 2))
    got = Distances(x, y).weighted_sum(P, w, per_problem=True)
    assert got.shape == (B,) and torch.allclose(got, want, rtol=1e-12)
    assert torch.allclose(Distances(x, y).weighted_sum(P, w), want.sum(), rtol=1e-12)

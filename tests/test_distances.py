"""Tests for drifting.eval.distances: energy distance, MMD^2, noise floor."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from drifting.eval.distances import compare, energy_distance, median_bandwidths, mmd2, noise_floor


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_set(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64) + shift


# literal reference implementations (plain Python loops, no vectorisation) -------------


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.double().tolist()


def literal_energy(a: torch.Tensor, b: torch.Tensor) -> float:
    A, B = _rows(a), _rows(b)
    ab = sum(math.dist(u, v) for u in A for v in B) / (len(A) * len(B))
    aa = sum(math.dist(u, v) for u in A for v in A) / len(A) ** 2
    bb = sum(math.dist(u, v) for u in B for v in B) / len(B) ** 2
    return 2 * ab - aa - bb


def literal_mmd2(a: torch.Tensor, b: torch.Tensor, bandwidths) -> float:
    A, B = _rows(a), _rows(b)

    def k(u, v):
        d2 = sum((x - y) ** 2 for x, y in zip(u, v))
        return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths)

    aa = sum(k(u, v) for u in A for v in A) / len(A) ** 2
    bb = sum(k(u, v) for u in B for v in B) / len(B) ** 2
    ab = sum(k(u, v) for u in A for v in B) / (len(A) * len(B))
    return aa + bb - 2 * ab


def literal_median_bandwidths(a, b):
    P = _rows(a) + _rows(b)
    pairs = [math.dist(P[i], P[j]) for i in range(len(P)) for j in range(i + 1, len(P))]
    med = statistics.median_low(pairs)  # torch.median returns the lower median
    return (0.5 * med, med, 2 * med)


# energy distance -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "d", "seed"),
                         [(13, 13, 2, 0), (9, 17, 3, 1), (1, 5, 1, 2), (20, 7, 5, 3)])
def test_energy_matches_literal(n, m, d, seed):
    a = rand_set(n, d, seed)
    b = rand_set(m, d, seed + 100, shift=0.3)
    assert energy_distance(a, b) == pytest.approx(literal_energy(a, b), abs=1e-10, rel=1e-10)


def test_energy_point_masses():
    a = torch.zeros(1, 2)
    b = torch.tensor([[3.0, 4.0]])
    assert energy_distance(a, b) == pytest.approx(10.0, abs=1e-12)


def test_energy_identical_sets_is_zero():
    a = rand_set(40, 3, 0)
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(a, a.clone().float()) == pytest.approx(0.0, abs=1e-7)
    assert energy_distance(a, a) >= 0.0


def test_energy_symmetric():
    a, b = rand_set(30, 2, 0), rand_set(45, 2, 1, shift=0.5)
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a), rel=1e-12)


def test_energy_grows_with_shift_and_floor_is_small():
    a, b = rand_set(400, 2, 0), rand_set(400, 2, 1)
    values = [energy_distance(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    assert values[0] > 0.0  # positive noise floor for two independent samples
    assert values[0] < 0.1 * values[2]


def test_energy_chunking_invariant():
    a, b = rand_set(157, 3, 0), rand_set(203, 3, 1, shift=0.2)
    ref = energy_distance(a, b, chunk_size=10**6)
    for c in (1, 7, 64, 156, 157, 158):
        assert energy_distance(a, b, chunk_size=c) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    assert energy_distance(a, b) == pytest.approx(ref, rel=1e-12, abs=1e-14)


def test_default_chunking_on_larger_sets():
    # 3000 x 3000 is split into several chunks by default; compare with one big block
    a, b = rand_set(3000, 2, 0), rand_set(3000, 2, 1, shift=0.1)
    ref = energy_distance(a, b, chunk_size=3000)
    assert energy_distance(a, b) == pytest.approx(ref, rel=1e-11)
    bw = (0.7,)
    assert mmd2(a, b, bandwidths=bw) == pytest.approx(mmd2(a, b, bandwidths=bw, chunk_size=3000), rel=1e-10,
                                                      abs=1e-14)


# MMD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bandwidths", [(1.0,), (0.3, 1.0, 2.5), (0.5, 1.0, 2.0), [0.2, 1.7]])
def test_mmd2_matches_literal(bandwidths):
    a, b = rand_set(15, 2, 0), rand_set(11, 2, 1, shift=0.4)
    assert mmd2(a, b, bandwidths=bandwidths) == pytest.approx(literal_mmd2(a, b, bandwidths), abs=1e-10,
                                                              rel=1e-10)


def test_mmd2_scalar_bandwidth():
    a, b = rand_set(10, 3, 0), rand_set(10, 3, 1)
    assert mmd2(a, b, bandwidths=1.3) == pytest.approx(literal_mmd2(a, b, (1.3,)), abs=1e-10)


def test_mmd2_default_bandwidths_median_heuristic():
    a, b = rand_set(14, 2, 0), rand_set(9, 2, 1, shift=0.7)
    bw = literal_median_bandwidths(a, b)
    assert median_bandwidths(torch.cat([a, b])) == pytest.approx(bw, rel=1e-12)
    assert mmd2(a, b) == pytest.approx(literal_mmd2(a, b, bw), abs=1e-10, rel=1e-10)


def test_median_bandwidths_subsample_is_deterministic():
    x = rand_set(2500, 2, 0)
    bw = median_bandwidths(x)
    assert bw == median_bandwidths(x)
    assert bw[1] == pytest.approx(2 * bw[0]) and bw[2] == pytest.approx(4 * bw[0])
    # |u - v| for 2-D standard normals is Rayleigh(sqrt 2): median 2 sqrt(ln 2) ~ 1.665
    assert 1.5 < bw[1] < 1.8
    assert median_bandwidths(torch.zeros(5, 2)) == (0.5, 1.0, 2.0)  # all-equal points fall back to 1


def test_mmd2_point_masses():
    a, b = torch.zeros(1, 1), torch.full((1, 1), 2.0)
    assert mmd2(a, b, bandwidths=(1.0,)) == pytest.approx(2 - 2 * math.exp(-2.0), abs=1e-14)


def test_mmd2_identical_symmetric_shift():
    a, b = rand_set(300, 2, 0), rand_set(300, 2, 1)
    bw = (0.5, 1.0, 2.0)
    assert mmd2(a, a, bandwidths=bw) == pytest.approx(0.0, abs=1e-12)
    assert mmd2(a, b, bandwidths=bw) == pytest.approx(mmd2(b, a, bandwidths=bw), rel=1e-10)
    values = [mmd2(a, b + s, bandwidths=bw) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    assert 0.0 < values[0] < 0.1 * values[2]


def test_mmd2_chunking_invariant():
    a, b = rand_set(101, 2, 0), rand_set(77, 2, 1, shift=0.3)
    ref = mmd2(a, b, chunk_size=10**6)
    for c in (1, 10, 100, 101):
        assert mmd2(a, b, chunk_size=c) == pytest.approx(ref, rel=1e-10, abs=1e-14)


# errors and non-finite input --------------------------------------------------------------


@pytest.mark.parametrize("fn", [energy_distance, mmd2])
def test_dim_mismatch(fn):
    with pytest.raises(ValueError, match=r"a and b must have the same dimension"):
        fn(torch.zeros(4, 2), torch.zeros(4, 3))


@pytest.mark.parametrize("fn", [energy_distance, mmd2])
def test_bad_shapes(fn):
    with pytest.raises(ValueError, match=r"^a must be a 2-D"):
        fn(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"^b must be a 2-D"):
        fn(torch.zeros(4, 1), torch.zeros(0, 1))


@pytest.mark.parametrize("bw", [(), (0.0,), (-1.0,), (float("nan"),), "abc"])
def test_bad_bandwidths(bw):
    with pytest.raises(ValueError, match="bandwidths"):
        mmd2(torch.zeros(3, 2), torch.ones(3, 2), bandwidths=bw)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        energy_distance(torch.zeros(3, 2), torch.ones(3, 2), chunk_size=0)


def test_nonfinite_gives_nan():
    a = torch.zeros(3, 2)
    b = torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])
    assert math.isnan(energy_distance(a, b))
    assert math.isnan(mmd2(a, b))


# noise floor and compare -------------------------------------------------------------------


def test_noise_floor():
    data = rand_set(800, 2, 0)
    floor = noise_floor(data, generator=gen(1))
    assert set(floor) == {"energy_distance", "mmd2"}
    assert floor == noise_floor(data, generator=gen(1))
    assert floor != noise_floor(data, generator=gen(2))
    assert floor["energy_distance"] > 0 and floor["mmd2"] > 0
    shifted = compare(rand_set(400, 2, 5, shift=1.0), data[:400])
    assert shifted["energy_distance"] > 10 * floor["energy_distance"]
    assert shifted["mmd2"] > 10 * floor["mmd2"]
    assert noise_floor(data) == noise_floor(data)  # default generator is seeded
    with pytest.raises(ValueError, match="at least 4 rows"):
        noise_floor(torch.zeros(3, 2))


def test_compare_matches_direct_calls():
    s, r = rand_set(50, 2, 0, shift=0.5), rand_set(60, 2, 1)
    out = compare(s, r)
    assert out == {"energy_distance": energy_distance(s, r), "mmd2": mmd2(s, r)}
    assert compare(s, r, bandwidths=(1.0,))["mmd2"] == pytest.approx(literal_mmd2(s, r, (1.0,)), abs=1e-10)
    with pytest.raises(ValueError, match="samples and reference"):
        compare(torch.zeros(3, 2), torch.zeros(3, 1))

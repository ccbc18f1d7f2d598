"""Tests for drifting.data.points: built-in targets, file loaders, resolve_points and samplers."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from drifting.data.points import (
    TARGETS,
    PointSampler,
    TargetSampler,
    load_points,
    resolve_points,
    sample_target,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------


def test_targets_tuple():
    assert set(TARGETS) == {"bimodal", "8gaussians", "checkerboard", "swissroll", "moons", "ring"}


@pytest.mark.parametrize("name", TARGETS)
def test_target_shape_dtype_finite(name):
    x = sample_target(name, 513, generator=gen(0))
    assert x.shape == (513, 2)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.abs().max() < 5.0  # coordinates of order 1-4
    assert x.std(dim=0).min() > 0.3  # not collapsed


@pytest.mark.parametrize("name", TARGETS)
def test_target_reproducible_with_seed(name):
    a = sample_target(name, 200, generator=gen(123))
    b = sample_target(name, 200, generator=gen(123))
    c = sample_target(name, 200, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_target_uses_global_rng_without_generator():
    torch.manual_seed(5)
    a = sample_target("ring", 50)
    torch.manual_seed(5)
    b = sample_target("ring", 50)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("alias", "name"),
    [("8-gaussians", "8gaussians"), ("two-moons", "moons"), ("swiss-roll", "swissroll"), ("Ring", "ring")],
)
def test_target_aliases(alias, name):
    assert torch.equal(sample_target(alias, 64, generator=gen(1)), sample_target(name, 64, generator=gen(1)))


def test_unknown_target_raises():
    with pytest.raises(ValueError, match="name") as info:
        sample_target("spiral", 10)
    for t in TARGETS:
        assert t in str(info.value)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_target("ring", n)


def test_bimodal_shape():
    x = sample_target("bimodal", 4000, generator=gen(0)).double()
    upper = x.sum(dim=1) > 0
    assert 0.45 < upper.double().mean() < 0.55
    assert torch.allclose(x[upper].mean(0), torch.tensor([2.0, 2.0], dtype=torch.float64), atol=0.06)
    assert torch.allclose(x[~upper].mean(0), torch.tensor([-2.0, -2.0], dtype=torch.float64), atol=0.06)
    assert torch.allclose(x[upper].std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.05)


def test_ring_shape():
    x = sample_target("ring", 4000, generator=gen(0)).double()
    r = x.norm(dim=1)
    assert abs(r.mean() - 2.0) < 0.01
    assert abs(r.std() - 0.05) < 0.01
    angle = torch.atan2(x[:, 1], x[:, 0])
    counts = torch.histc(angle, bins=8, min=-math.pi, max=math.pi)
    assert counts.min() > 0.8 * 4000 / 8  # uniform in angle


def test_8gaussians_shape():
    x = sample_target("8gaussians", 4000, generator=gen(0)).double()
    k = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centers = 2.0 * torch.stack([k.cos(), k.sin()], dim=1)  # [8, 2]
    dist = torch.cdist(x, centers)  # [n, 8]
    nearest = dist.argmin(dim=1)
    assert dist.min(dim=1).values.max() < 0.8  # every point close to one of the 8 centres
    counts = torch.bincount(nearest, minlength=8)
    assert counts.min() > 0.8 * 4000 / 8
    for j in range(8):
        members = x[nearest == j]
        assert torch.allclose(members.mean(0), centers[j], atol=0.03)
        assert torch.allclose(members.std(0), torch.full((2,), 0.15, dtype=torch.float64), atol=0.03)


def test_checkerboard_shape():
    x = sample_target("checkerboard", 4000, generator=gen(0)).double()
    assert x.min() >= -2.0 and x.max() <= 2.0
    cells = torch.floor(x).long()  # [n, 2], each in {-2, -1, 0, 1}
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the 8 "black" squares
    ids = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = torch.bincount(ids, minlength=16)
    assert (counts > 0).sum() == 8
    assert counts[counts > 0].min() > 0.8 * 4000 / 8


def test_swissroll_shape():
    x = sample_target("swissroll", 4000, generator=gen(0)).double()
    t = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 3000, dtype=torch.float64)
    curve = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 7  # noise-free spiral [3000, 2]
    gap = torch.cdist(x, curve).min(dim=1).values  # [n]
    assert gap.max() < 0.25  # every point lies on the spiral (noise std 0.05)
    assert 0.04 < gap.mean() < 0.07
    # the whole curve is covered: every stretch of it has points nearby
    assert torch.cdist(curve, x).min(dim=1).values.max() < 0.1
    assert x.abs().max() < 2.6


def test_moons_shape():
    x = sample_target("moons", 4000, generator=gen(0)).double()
    u = x * 0.75 + torch.tensor([0.5, 0.25], dtype=torch.float64)  # back to sklearn coordinates
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    # distance to the upper half circle around (0, 0) and to the lower half circle around (1, 0.5)
    d_upper = torch.where(u[:, 1] > -0.2, (u.norm(dim=1) - 1).abs(), inf)
    lower = u - torch.tensor([1.0, 0.5], dtype=torch.float64)
    d_lower = torch.where(lower[:, 1] < 0.2, (lower.norm(dim=1) - 1).abs(), inf)
    assert torch.minimum(d_upper, d_lower).max() < 0.3
    assert 0.45 < (d_upper < d_lower).double().mean() < 0.55
    assert abs(x[:, 0].min() + 2) < 0.3 and abs(x[:, 0].max() - 2) < 0.3


# ---------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------


def test_load_npy_2d(tmp_path):
    arr = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    p = tmp_path / "pts.npy"
    np.save(p, arr)
    x = load_points(p)
    assert x.dtype == torch.float32 and x.shape == (4, 3)
    assert torch.allclose(x, torch.from_numpy(arr).float())
    assert torch.equal(load_points(str(p)), x)


def test_load_npy_1d_and_int(tmp_path):
    p = tmp_path / "pts.npy"
    np.save(p, np.array([1, 2, 3], dtype=np.int64))
    x = load_points(p)
    assert x.shape == (3, 1) and x.dtype == torch.float32
    assert x[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_load_csv_plain_and_header(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("1,2\n3.5,-4\n\n5e-1, 6\n")
    assert load_points(p).tolist() == [[1.0, 2.0], [3.5, -4.0], [0.5, 6.0]]
    q = tmp_path / "b.csv"
    q.write_text("x,y\n1,2\n3,4\n")
    assert load_points(q).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_load_csv_single_column(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("value\n1\n2\n3\n")
    x = load_points(p)
    assert x.shape == (3, 1) and x[:, 0].tolist() == [1.0, 2.0, 3.0]


def _write_npy(tmp_path, arr, name="bad.npy"):
    p = tmp_path / name
    np.save(p, arr)
    return p


def test_missing_file(tmp_path):
    p = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_points(p)


def test_unsupported_extension(tmp_path):
    p = tmp_path / "pts.txt"
    p.write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"pts\.txt.*\.npy, \.csv"):
        load_points(p)


def test_directory_rejected(tmp_path):
    d = tmp_path / "dir.npy"
    d.mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        load_points(d)


@pytest.mark.parametrize("arr", [np.zeros((2, 2, 2)), np.array(3.0)])
def test_bad_ndim(tmp_path, arr):
    p = _write_npy(tmp_path, arr)
    with pytest.raises(ValueError, match=r"bad\.npy.*1-D or 2-D"):
        load_points(p)


def test_too_few_rows_npy(tmp_path):
    p = _write_npy(tmp_path, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"bad\.npy.*at least 2 rows"):
        load_points(p)


def test_zero_columns_npy(tmp_path):
    p = _write_npy(tmp_path, np.zeros((3, 0)))
    with pytest.raises(ValueError, match="at least 1 column"):
        load_points(p)


def test_too_few_rows_csv(tmp_path):
    p = tmp_path / "one.csv"
    p.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"one\.csv.*at least 2 rows"):
        load_points(p)


@pytest.mark.parametrize("text", ["", "\n\n", "x,y\n"])
def test_empty_csv(tmp_path, text):
    p = tmp_path / "empty.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=r"empty\.csv.*2 rows"):
        load_points(p)


@pytest.mark.parametrize("text",
                         ["1,2\n3,abc\n", "1,2\n3,\n", "1,2\n3,4,5\n", "x,y\na,b\n1,2\n", "x,1\n2,3\n4,5\n"])
def test_non_numeric_csv(tmp_path, text):
    p = tmp_path / "junk.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=r"junk\.csv.*comma-separated numbers"):
        load_points(p)


def test_binary_csv(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81\x92")
    with pytest.raises(ValueError, match=r"bin\.csv.*UTF-8"):
        load_points(p)


def test_nan_npy_names_row(tmp_path):
    arr = np.zeros((5, 2))
    arr[3, 1] = np.nan
    p = _write_npy(tmp_path, arr)
    with pytest.raises(ValueError, match=r"bad\.npy: row 3 .*NaN or inf"):
        load_points(p)


def test_inf_csv_names_row(tmp_path):
    p = tmp_path / "inf.csv"
    p.write_text("x,y\n1,2\n3,inf\n5,6\n")
    with pytest.raises(ValueError, match=r"inf\.csv: row 1 .*NaN or inf"):
        load_points(p)


def test_float32_overflow(tmp_path):
    p = _write_npy(tmp_path, np.array([[1.0], [1e300]]))
    with pytest.raises(ValueError, match="row 1 .*overflows float32"):
        load_points(p)


def test_object_npy(tmp_path):
    p = _write_npy(tmp_path, np.array([[1, "a"], [2, None]], dtype=object))
    with pytest.raises(ValueError, match=r"bad\.npy.*object array or pickled"):
        load_points(p)


def test_pickled_file_named_npy(tmp_path):
    p = tmp_path / "pickled.npy"
    p.write_bytes(pickle.dumps([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"pickled\.npy.*pickled"):
        load_points(p)


def test_string_dtype_npy(tmp_path):
    p = _write_npy(tmp_path, np.array([["1", "2"], ["3", "4"]]))
    with pytest.raises(ValueError, match=r"bad\.npy.*non-numeric"):
        load_points(p)


def test_npz_named_npy(tmp_path):
    p = tmp_path / "arch.npy"
    with open(p, "wb") as f:
        np.savez(f, a=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"arch\.npy.*single array"):
        load_points(p)


# ---------------------------------------------------------------------------
# resolve_points
# ---------------------------------------------------------------------------


def test_resolve_target():
    x, desc = resolve_points("8-gaussians", 100, generator=gen(0))
    assert x.shape == (100, 2)
    assert "8gaussians" in desc
    assert torch.equal(x, sample_target("8gaussians", 100, generator=gen(0)))


def test_resolve_file_uses_all_rows(tmp_path):
    p = _write_npy(tmp_path, np.random.default_rng(0).normal(size=(37, 3)), "data.npy")
    x, desc = resolve_points(str(p), 10)
    assert x.shape == (37, 3)
    assert "data.npy" in desc


def test_resolve_neither(tmp_path):
    with pytest.raises(ValueError, match="neither") as info:
        resolve_points(str(tmp_path / "missing.csv"), 10)
    assert "checkerboard" in str(info.value) and "missing.csv" in str(info.value)


# ---------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------


def test_point_sampler_epoch_without_replacement():
    data = torch.arange(24, dtype=torch.float32).reshape(12, 2)
    s = PointSampler(data)
    g = gen(0)
    batches = [s.sample(4, g) for _ in range(3)]
    assert all(b.shape == (4, 2) for b in batches)
    rows = torch.cat(batches)[:, 0].long().tolist()
    assert sorted(rows) == list(range(0, 24, 2))  # the epoch covers every row exactly once
    assert s.epoch == 1
    s.sample(4, g)
    assert s.epoch == 2


def test_point_sampler_drops_remainder_and_no_duplicates():
    data = torch.arange(10, dtype=torch.float32)[:, None]
    s = PointSampler(data)
    g = gen(1)
    for _ in range(20):
        b = s.sample(4, g)[:, 0].tolist()
        assert len(set(b)) == 4


def test_point_sampler_reproducible_and_rows_of_data():
    data = torch.randn(50, 3, generator=gen(2))
    a = [PointSampler(data).sample(7, gen(3)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    # each returned row is a row of data
    assert (a[0][:, None, :] == data[None]).all(dim=2).any(dim=1).all()


def test_point_sampler_with_replacement_when_k_exceeds_n():
    data = torch.arange(5, dtype=torch.float32)[:, None]
    b = PointSampler(data).sample(12, gen(0))
    assert b.shape == (12, 1)
    assert set(b[:, 0].tolist()) <= set(range(5))


def test_point_sampler_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        PointSampler(torch.zeros(5))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        PointSampler(torch.zeros(5, 2)).sample(0)


def test_target_sampler():
    s = TargetSampler("two-moons")
    assert s.name == "moons" and s.dim == 2
    assert torch.equal(s.sample(30, gen(4)), sample_target("moons", 30, generator=gen(4)))
    with pytest.raises(ValueError, match="name"):
        TargetSampler("nope")

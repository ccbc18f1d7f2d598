import io

import numpy as np
import pytest
import torch

from drifting.data.queue import ClassBalancedSampler, SampleQueue, _sample_slots, make_sampler


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def dataset_labels(n=300, k=5, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n).astype(np.int64)


def rows_distinct(t: torch.Tensor) -> bool:
    return all(len(set(r)) == len(r) for r in t.tolist())


# ---------------------------------------------------------------------------
# subset sampling helper: both code paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dense_limit", [1 << 20, 0])
def test_sample_slots_uniform_without_replacement(dense_limit):
    pop = torch.tensor([5, 3, 8, 3])
    out = _sample_slots(pop, 3, gen(1), dense_limit=dense_limit)
    assert out.shape == (4, 3) and rows_distinct(out)
    assert bool((out < pop[:, None]).all()) and bool((out >= 0).all())
    # every slot of a population of 6 is chosen about equally often, in every position
    many = _sample_slots(torch.full((6000,), 6), 2, gen(2), dense_limit=dense_limit)
    assert rows_distinct(many)
    for pos in range(2):
        freq = torch.bincount(many[:, pos], minlength=6).double() / 6000
        assert torch.allclose(freq, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.03)
    assert _sample_slots(pop, 0, gen()).shape == (4, 0)
    assert _sample_slots(torch.zeros(0, dtype=torch.int64), 2, gen()).shape == (0, 2)


# ---------------------------------------------------------------------------
# SampleQueue
# ---------------------------------------------------------------------------


def test_fifo_capacity_and_oldest_dropped():
    q = SampleQueue(num_classes=2, per_class=3, global_size=4)
    q.push([10, 11], [0, 1])
    assert q.class_contents(0).tolist() == [10] and q.global_contents().tolist() == [10, 11]
    q.push([12, 13, 14], [0, 0, 0])
    assert q.class_contents(0).tolist() == [12, 13, 14]  # 10 dropped
    assert q.class_contents(1).tolist() == [11]
    assert q.global_contents().tolist() == [11, 12, 13, 14]  # 10 dropped
    q.push([20, 21, 22, 23, 24, 25, 26], [1, 0, 1, 1, 0, 1, 0])  # more than a queue holds at once
    assert q.class_contents(0).tolist() == [21, 24, 26]
    assert q.class_contents(1).tolist() == [22, 23, 25]
    assert q.global_contents().tolist() == [23, 24, 25, 26]
    # one at a time gives the same as a batch
    r = SampleQueue(num_classes=2, per_class=3, global_size=4)
    for i, lab in zip([10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 25, 26], [0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0]):
        r.push([i], [lab])
    for k in ("class_buffer", "class_count", "global_buffer"):
        assert torch.equal(getattr(r, k), getattr(q, k))
    q.push([], [])
    assert q.is_full() and "SampleQueue" in repr(q)


def test_refill_pushes_uniform_draws_with_right_labels():
    labels = dataset_labels()
    q = SampleQueue(5, per_class=128, global_size=1000)
    q.refill(labels, n_push=64, generator=gen())
    assert int(q.global_count) == 64 and int(q.class_count.sum()) == 64
    for c in range(5):
        content = q.class_contents(c).numpy()
        assert np.all(labels[content] == c)
    q.refill(torch.from_numpy(labels), generator=gen(1))  # tensors work too
    assert int(q.global_count) == 128


def test_warm_up_fills_all_queues_and_positives_are_correct():
    labels = dataset_labels(n=400, k=4)
    labels[:3] = 3
    labels[labels == 3] = 0
    labels[:2] = 3  # a rare class: 2 samples
    q = SampleQueue(4, per_class=16, global_size=50)
    q.refill(labels, n_push=10, generator=gen(0))
    q.warm_up(labels, gen(1))
    assert q.is_full()
    assert q.class_count.tolist() == [16] * 4 and int(q.global_count) == 50
    for c in range(4):
        assert np.all(labels[q.class_contents(c).numpy()] == c)
    assert set(q.class_contents(3).tolist()) <= {0, 1}
    classes = torch.tensor([0, 2, 2, 1, 3])
    pos = q.sample_positives(classes, 16, gen(2))  # whole queue
    assert pos.shape == (5, 16) and pos.dtype == torch.int64
    for row, c in zip(pos, classes.tolist()):
        assert np.all(labels[row.numpy()] == c)
        assert sorted(row.tolist()) == sorted(q.class_contents(c).tolist())  # no slot drawn twice
    unc = q.sample_unconditional(3, 50, gen(3))
    for row in unc:
        assert sorted(row.tolist()) == sorted(q.global_contents().tolist())
    q.warm_up(labels, gen(4))  # already full: nothing changes
    assert q.is_full()


def test_queue_samples_without_replacement_from_slots():
    q = SampleQueue(2, per_class=8, global_size=20)
    q.push(torch.arange(100, 120), torch.arange(20) % 2)
    pos = q.sample_positives(torch.tensor([0, 1, 0]), 5, gen())
    assert rows_distinct(pos)
    assert bool((pos[[0, 2]] % 2 == 0).all()) and bool((pos[1] % 2 == 1).all())
    unc = q.sample_unconditional(4, 12, gen())
    assert unc.shape == (4, 12) and rows_distinct(unc)
    assert set(unc.flatten().tolist()) <= set(range(100, 120))
    assert q.sample_unconditional(0, 3, gen()).shape == (0, 3)
    assert q.sample_positives(torch.tensor([1]), 0, gen()).shape == (1, 0)


def test_queue_errors():
    q = SampleQueue(3, per_class=4, global_size=6)
    q.push([0, 1, 2], [0, 0, 1])
    with pytest.raises(ValueError, match=r"n must be <= per_class = 4"):
        q.sample_positives(torch.tensor([0]), 5, gen())
    with pytest.raises(ValueError, match=r"n = 3 positives requested but the queues of classes \[0, 1\]"):
        q.sample_positives(torch.tensor([0, 1]), 3, gen())
    with pytest.raises(ValueError, match="warm_up"):
        q.sample_positives(torch.tensor([2]), 1, gen())
    with pytest.raises(ValueError, match=r"n must be <= global_size = 6"):
        q.sample_unconditional(1, 7, gen())
    with pytest.raises(ValueError,
                       match="n = 4 unconditional samples requested but the global queue holds 3"):
        q.sample_unconditional(1, 4, gen())
    with pytest.raises(ValueError, match=r"classes must lie in \[0, num_classes\) = \[0, 3\)"):
        q.sample_positives(torch.tensor([3]), 1, gen())
    with pytest.raises(ValueError, match="classes must hold integers"):
        q.sample_positives(torch.tensor([0.0]), 1, gen())
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        q.sample_positives(torch.tensor([0]), 1, None)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        q.sample_unconditional(1, -1, gen())
    with pytest.raises(ValueError, match="n_rows must be an int >= 0"):
        q.sample_unconditional(1.5, 1, gen())
    with pytest.raises(ValueError, match="same length"):
        q.push([1, 2], [0])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        q.push([1], [3])
    with pytest.raises(ValueError, match="indices must be >= 0"):
        q.push([-1], [0])
    with pytest.raises(ValueError, match="indices must be a 1-D integer"):
        q.push([0.5], [0])
    with pytest.raises(ValueError, match="no sample of them"):
        q.warm_up(np.array([0, 0, 1]), gen())
    with pytest.raises(ValueError, match="n_push must be an int >= 0"):
        q.refill(np.array([0, 1, 2]), n_push=-1, generator=gen())
    with pytest.raises(ValueError, match="dataset_labels must be a non-empty"):
        q.refill(np.array([], np.int64), generator=gen())
    for kw, name in ((dict(num_classes=0), "num_classes"), (dict(num_classes=2, per_class=0), "per_class"),
                     (dict(num_classes=2, global_size=0), "global_size")):
        with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
            SampleQueue(**kw)
    with pytest.raises(ValueError, match=r"c must lie in \[0, 3\)"):
        q.class_contents(3)


def draws(sampler, g, labels):
    """A short stretch of training-like use: refill, positives, unconditional."""
    out = []
    for _ in range(3):
        sampler.refill(labels, n_push=7, generator=g)
        out.append(sampler.sample_positives(torch.tensor([0, 1, 2, 1]), 4, g))
        out.append(sampler.sample_unconditional(2, 5, g))
    return out


@pytest.mark.parametrize("kind", ["queue", "balanced"])
def test_state_round_trip_reproduces_draws(kind):
    labels = dataset_labels(n=120, k=3)
    kw = dict(per_class=8, global_size=20) if kind == "queue" else {}
    a = make_sampler(kind, labels, 3, **kw)
    g = gen(7)
    a.warm_up(labels, g)
    draws(a, g, labels)
    buf = io.BytesIO()
    torch.save({"sampler": a.state_dict(), "rng": g.get_state()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    expected = draws(a, g, labels)

    b = make_sampler(kind, labels, 3, **kw)
    b.load_state_dict(saved["sampler"])
    g2 = torch.Generator()
    g2.set_state(saved["rng"])
    got = draws(b, g2, labels)
    assert all(torch.equal(x, y) for x, y in zip(expected, got))


def test_load_state_dict_checks_sizes():
    q = SampleQueue(3, per_class=4, global_size=6)
    with pytest.raises(ValueError, match="per_class = 5, this queue has per_class = 4"):
        q.load_state_dict(SampleQueue(3, per_class=5, global_size=6).state_dict())
    state = q.state_dict()
    del state["class_head"]
    with pytest.raises(ValueError, match="missing 'class_head'"):
        q.load_state_dict(state)
    s = ClassBalancedSampler(np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="num_samples = 4, this sampler has num_samples = 3"):
        s.load_state_dict({"num_classes": 2, "num_samples": 4})


# ---------------------------------------------------------------------------
# ClassBalancedSampler and make_sampler
# ---------------------------------------------------------------------------


def test_balanced_sampler_draws():
    labels = dataset_labels(n=200, k=4, seed=3)
    s = ClassBalancedSampler(labels, 4)
    s.warm_up(labels, gen())  # no-ops
    s.refill(labels, 64, gen())
    classes = torch.tensor([3, 0, 0, 2, 1])
    pos = s.sample_positives(classes, 20, gen(1))
    assert pos.shape == (5, 20) and rows_distinct(pos)
    for row, c in zip(pos, classes.tolist()):
        assert np.all(labels[row.numpy()] == c)
    whole = int((labels == 2).sum())
    assert (sorted(s.sample_positives(torch.tensor([2]), whole, gen())[0].tolist())
            == np.flatnonzero(labels == 2).tolist())
    unc = s.sample_unconditional(6, 50, gen(2))
    assert unc.shape == (6, 50) and rows_distinct(unc) and int(unc.max()) < 200 and int(unc.min()) >= 0
    # large dataset: the Floyd path, still distinct and in range
    big = ClassBalancedSampler(np.arange(100_000) % 10, 10)
    u = big.sample_unconditional(16, 64, gen(3))
    assert u.shape == (16, 64) and rows_distinct(u) and int(u.max()) < 100_000
    # uniform over the dataset
    u = s.sample_unconditional(2000, 2, gen(4))
    freq = torch.bincount(u.flatten(), minlength=200).double() / 4000
    assert float(freq.max()) < 0.015 and "ClassBalancedSampler" in repr(s)


def test_balanced_sampler_errors():
    labels = np.array([0, 0, 0, 1, 2, 2])
    s = ClassBalancedSampler(labels, 4)
    with pytest.raises(ValueError, match=r"n = 2 positives requested but classes \[1, 3\] have fewer"):
        s.sample_positives(torch.tensor([0, 1, 3]), 2, gen())
    with pytest.raises(ValueError, match="n must be <= the dataset size 6"):
        s.sample_unconditional(1, 7, gen())
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        s.sample_unconditional(1, 1, 0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        ClassBalancedSampler(labels, 2)
    with pytest.raises(ValueError, match="labels must be non-empty"):
        ClassBalancedSampler(np.array([], np.int64), 2)


def test_make_sampler():
    labels = np.array([0, 1, 1, 2])
    q = make_sampler("queue", labels, 3, per_class=4, global_size=5)
    assert isinstance(q, SampleQueue) and q.per_class == 4 and q.global_size == 5
    q = make_sampler("queue", labels, 3)
    assert q.per_class == 128 and q.global_size == 1000  # paper A.8
    assert isinstance(make_sampler("balanced", labels, 3), ClassBalancedSampler)
    with pytest.raises(ValueError, match=r"kind must be one of \['queue', 'balanced'\]"):
        make_sampler("loader", labels, 3)
    with pytest.raises(ValueError, match="takes no extra options"):
        make_sampler("balanced", labels, 3, per_class=4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        make_sampler("queue", labels, 2)

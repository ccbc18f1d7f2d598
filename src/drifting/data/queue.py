"""Sources of real samples (positives and unconditional negatives) for training.

The drifting loss needs, at every step, ``n`` real samples of each class in the
batch (positives) and, for CFG, ``n`` real samples of any class per row
(unconditional samples). Both samplers here return dataset *indices*; the
caller turns them into images (e.g. :meth:`ImageDataset.to_tensor`) or features.

* :class:`SampleQueue` is the paper's sample queue (A.8, after MoCo): one FIFO of
  128 indices per class and a global FIFO of 1000 indices; each step pushes the
  latest 64 real samples (:meth:`SampleQueue.refill`) and draws positives and
  unconditional samples from the queues without replacement.
* :class:`ClassBalancedSampler` is the "specialized data loader" the paper calls
  more principled: it draws straight from the dataset.

Both share one API (``sample_positives``, ``sample_unconditional``, ``refill``,
``warm_up``, ``state_dict``, ``load_state_dict``) so a trainer can use either;
:func:`make_sampler` builds one by name. All randomness comes from the
``generator`` argument, and a state dict holds only tensors and ints, so it can
be stored in a checkpoint read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SampleQueue", "ClassBalancedSampler", "make_sampler", "SAMPLER_KINDS"]

SAMPLER_KINDS: tuple[str, ...] = ("queue", "balanced")
"""Names accepted by :func:`make_sampler`."""

# Below this many random keys a call draws subsets by sorting random keys (one
# vectorized op); above it, by Floyd's algorithm (n small steps, O(rows * n^2)).
_DENSE_KEYS_LIMIT = 1 << 20


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _check_count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _as_labels(labels, num_classes: int, name: str = "labels") -> torch.Tensor:
    """``labels`` (array, list or tensor) as a CPU int64 tensor ``[N]`` with values in [0, num_classes)."""
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.numel() == 0:
        t = t.to(torch.int64)  # an empty list arrives as float
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, num_classes) = [0, {num_classes}), "
            f"found values in [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _sample_slots(
    pop: torch.Tensor, n: int, generator: torch.Generator, dense_limit: int = _DENSE_KEYS_LIMIT
) -> torch.Tensor:
    """For each row r, ``n`` distinct slots of ``range(pop[r])`` in random order.

    ``pop`` is int64 ``[R]`` with every ``pop[r] >= n``; returns int64 ``[R, n]``.
    Each row is a uniformly random ordered subset (sampling without replacement).
    """
    rows = pop.numel()
    if rows == 0 or n == 0:
        return torch.zeros(rows, n, dtype=torch.int64)
    width = int(pop.max())
    if rows * width <= dense_limit:
        # random keys, invalid slots pushed past every valid one, keep the n smallest
        keys = torch.rand(rows, width, generator=generator, dtype=torch.float64)  # [R, W]
        keys.masked_fill_(torch.arange(width)[None, :] >= pop[:, None], 2.0)
        return keys.argsort(dim=1)[:, :n].contiguous()  # [R, n]
    # Floyd's algorithm, vectorized over rows: for j = pop-n .. pop-1, pick t in [0, j];
    # take t unless already taken, else take j. Gives a uniform n-subset per row.
    out = torch.empty(rows, n, dtype=torch.int64)
    for k in range(n):
        j = pop - n + k  # [R]
        u = torch.rand(rows, generator=generator, dtype=torch.float64)  # [R]
        t = torch.minimum((u * (j + 1).to(torch.float64)).floor().to(torch.int64), j)  # [R]
        taken = (out[:, :k] == t[:, None]).any(dim=1)  # [R]
        out[:, k] = torch.where(taken, j, t)
    # Floyd's order is biased (late slots land late); shuffle each row
    perm = torch.rand(rows, n, generator=generator).argsort(dim=1)  # [R, n]
    return out.gather(1, perm)


def _ring_push(
    buffer: torch.Tensor,
    count: torch.Tensor,
    head: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
) -> None:
    """Push ``values`` (in order) into the ring buffers ``buffer[rows[i]]``, in place.

    ``buffer`` ``[Q, cap]``, ``count`` / ``head`` ``[Q]`` (valid entries / next write
    slot), ``rows`` and ``values`` ``[n]``. Newest in, oldest out: when a row is
    full the write slot is its oldest entry.
    """
    q, cap = buffer.shape
    if values.numel() == 0:
        return
    # rank of every item among the items pushed to the same row in this call
    order = torch.sort(rows, stable=True).indices  # [n]
    per_row = torch.bincount(rows, minlength=q)  # [Q]
    start = torch.cumsum(per_row, 0) - per_row  # [Q]
    rank = torch.empty_like(rows)
    rank[order] = torch.arange(rows.numel()) - start[rows[order]]  # [n]
    # only the last `cap` items of a row survive; dropping the rest keeps write slots unique
    keep = rank >= per_row[rows] - cap  # [n]
    r, v, k = rows[keep], values[keep], rank[keep]
    buffer[r, (head[r] + k) % cap] = v
    head.copy_((head + per_row) % cap)
    count.copy_(torch.clamp(count + per_row, max=cap))


def _ordered(buffer: torch.Tensor, count: int, head: int) -> torch.Tensor:
    """Valid entries of one ring buffer ``[cap]``, oldest first."""
    cap = buffer.numel()
    if count < cap:
        return buffer[:count].clone()
    return torch.cat([buffer[head:], buffer[:head]])


# ---------------------------------------------------------------------------
# the paper's sample queue
# ---------------------------------------------------------------------------


class SampleQueue:
    """Per-class FIFO queues plus one global FIFO of dataset indices (paper A.8).

    Args:
        num_classes: number of classes K.
        per_class: capacity of each class queue (paper: 128).
        global_size: capacity of the global queue for unconditional samples (paper: 1000).

    Every pushed index enters its class's queue and the global queue. Draws are
    without replacement *from queue slots*: if the same dataset index was pushed
    twice it can appear twice in one draw, as with the paper's queue.
    """

    def __init__(self, num_classes: int, per_class: int = 128, global_size: int = 1000) -> None:
        self.num_classes = _check_count("num_classes", num_classes, 1)
        self.per_class = _check_count("per_class", per_class, 1)
        self.global_size = _check_count("global_size", global_size, 1)
        self.class_buffer = torch.zeros(self.num_classes, self.per_class, dtype=torch.int64)  # [K, P]
        self.class_count = torch.zeros(self.num_classes, dtype=torch.int64)  # [K] valid entries
        self.class_head = torch.zeros(self.num_classes, dtype=torch.int64)  # [K] next write slot
        self.global_buffer = torch.zeros(1, self.global_size, dtype=torch.int64)  # [1, G]
        self.global_count = torch.zeros(1, dtype=torch.int64)
        self.global_head = torch.zeros(1, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"SampleQueue(num_classes={self.num_classes}, per_class={self.per_class}, "
            f"global_size={self.global_size}, filled={int(self.class_count.sum())}/"
            f"{self.num_classes * self.per_class}, global={int(self.global_count)}/{self.global_size})"
        )

    # -- filling -------------------------------------------------------------

    def push(self, indices, labels) -> None:
        """Push dataset ``indices`` ``[n]`` with their ``labels`` ``[n]`` (newest in, oldest out)."""
        idx = torch.as_tensor(indices)
        if idx.numel() == 0:
            idx = idx.to(torch.int64)  # an empty list arrives as float
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.ndim != 1:
            raise ValueError(f"indices must be a 1-D integer array [n], got dtype {idx.dtype} "
                             f"shape {tuple(idx.shape)}")
        idx = idx.detach().to("cpu", torch.int64)
        lab = _as_labels(labels, self.num_classes)
        if lab.numel() != idx.numel():
            raise ValueError("indices and labels must have the same length, "
                             f"got {idx.numel()} and {lab.numel()}")
        if idx.numel() and int(idx.min()) < 0:
            raise ValueError(f"indices must be >= 0, found {int(idx.min())}")
        _ring_push(self.class_buffer, self.class_count, self.class_head, lab, idx)
        _ring_push(self.global_buffer, self.global_count, self.global_head, torch.zeros_like(idx), idx)

    def refill(self, dataset_labels, n_push: int = 64, generator: torch.Generator | None = None) -> None:
        """Push ``n_push`` dataset indices drawn uniformly (with replacement) from the dataset.

        ``dataset_labels`` ``[N]`` are the labels of the whole dataset. The paper pushes
        the latest 64 real samples each step; a uniform draw stands in for a loader.
        """
        n_push = _check_count("n_push", n_push, 0)
        generator = _check_generator(generator)
        labels = torch.as_tensor(np.asarray(dataset_labels) if not isinstance(dataset_labels, torch.Tensor)
                                 else dataset_labels)
        if labels.ndim != 1 or labels.numel() == 0:
            raise ValueError("dataset_labels must be a non-empty 1-D array [N], got "
                             f"shape {tuple(labels.shape)}")
        idx = torch.randint(labels.numel(), (n_push,), generator=generator)  # [n_push]
        self.push(idx, labels.detach().cpu()[idx])

    def warm_up(self, dataset_labels, generator: torch.Generator | None = None) -> None:
        """Fill every class queue and the global queue to capacity.

        The result has the same distribution as pushing uniform draws until every
        queue is full (a uniform draw restricted to class c is uniform over class
        c), but costs O(capacity) even for rare classes: the global queue gets
        uniform draws over the dataset and each class queue is topped up with
        uniform draws from its own class.
        """
        generator = _check_generator(generator)
        labels = _as_labels(dataset_labels, self.num_classes, "dataset_labels")
        if labels.numel() == 0:
            raise ValueError("dataset_labels must be non-empty to warm up the queue")
        members = torch.bincount(labels, minlength=self.num_classes)  # [K]
        empty = torch.nonzero((members == 0) & (self.class_count < self.per_class)).flatten().tolist()
        if empty:
            raise ValueError(
                f"cannot fill the queues of classes {empty[:10]}{' ...' if len(empty) > 10 else ''}: "
                "dataset_labels has no sample of them"
            )
        # global queue: uniform over the dataset
        g_missing = self.global_size - int(self.global_count)
        idx = torch.randint(labels.numel(), (g_missing,), generator=generator)  # [g_missing]
        _ring_push(self.global_buffer, self.global_count, self.global_head, torch.zeros_like(idx), idx)
        # class queues: uniform within each class
        order = torch.sort(labels, stable=True).indices  # [N] dataset indices grouped by class
        start = torch.cumsum(members, 0) - members  # [K]
        missing = self.per_class - self.class_count  # [K]
        rows = torch.repeat_interleave(torch.arange(self.num_classes), missing)  # [M]
        u = torch.rand(rows.numel(), generator=generator, dtype=torch.float64)  # [M]
        pick = torch.minimum((u * members[rows]).floor().to(torch.int64), members[rows] - 1)  # [M]
        _ring_push(self.class_buffer, self.class_count, self.class_head, rows, order[start[rows] + pick])

    # -- inspection -----------------------------------------------------------

    def is_full(self) -> bool:
        """True when every class queue and the global queue are at capacity."""
        return bool((self.class_count == self.per_class).all()) and int(self.global_count) == self.global_size

    def class_contents(self, c: int) -> torch.Tensor:
        """Dataset indices in class ``c``'s queue, oldest first ``[count]``."""
        if not 0 <= int(c) < self.num_classes:
            raise ValueError(f"c must lie in [0, {self.num_classes}), got {c}")
        return _ordered(self.class_buffer[c], int(self.class_count[c]), int(self.class_head[c]))

    def global_contents(self) -> torch.Tensor:
        """Dataset indices in the global queue, oldest first ``[count]``."""
        return _ordered(self.global_buffer[0], int(self.global_count), int(self.global_head))

    # -- sampling -------------------------------------------------------------

    def sample_positives(self, classes, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """For each class in ``classes`` ``[Nc]``, ``n`` distinct queue entries: LongTensor ``[Nc, n]``."""
        n = _check_count("n", n, 0)
        generator = _check_generator(generator)
        if n > self.per_class:
            raise ValueError(f"n must be <= per_class = {self.per_class} (the class queue size), got n = {n}")
        cls = _as_labels(classes, self.num_classes, "classes")  # [Nc]
        counts = self.class_count[cls]  # [Nc]
        if cls.numel() and int(counts.min()) < n:
            short = sorted(set(cls[counts < n].tolist()))
            raise ValueError(
                f"n = {n} positives requested but the queues of classes {short[:10]} hold fewer "
                f"(counts {self.class_count[short[:10]].tolist()}); call warm_up() or refill() first"
            )
        slots = _sample_slots(counts, n, generator)  # [Nc, n]
        return self.class_buffer[cls[:, None], slots]  # [Nc, n]

    def sample_unconditional(self, n_rows: int, n: int,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """``n_rows`` rows of ``n`` distinct global-queue entries each: LongTensor ``[n_rows, n]``."""
        n_rows = _check_count("n_rows", n_rows, 0)
        n = _check_count("n", n, 0)
        generator = _check_generator(generator)
        if n > self.global_size:
            raise ValueError(f"n must be <= global_size = {self.global_size} (the global "
                             f"queue size), got n = {n}")
        have = int(self.global_count)
        if have < n:
            raise ValueError(
                f"n = {n} unconditional samples requested but the global queue holds {have}; "
                "call warm_up() or refill() first"
            )
        slots = _sample_slots(torch.full((n_rows,), have, dtype=torch.int64), n, generator)  # [n_rows, n]
        return self.global_buffer[0][slots]  # [n_rows, n]

    # -- state ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Queue contents and sizes (tensors and ints only; safe for ``weights_only`` loading)."""
        return {
            "num_classes": self.num_classes,
            "per_class": self.per_class,
            "global_size": self.global_size,
            "class_buffer": self.class_buffer.clone(),
            "class_count": self.class_count.clone(),
            "class_head": self.class_head.clone(),
            "global_buffer": self.global_buffer.clone(),
            "global_count": self.global_count.clone(),
            "global_head": self.global_head.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; sizes must match this queue's."""
        for key in ("num_classes", "per_class", "global_size"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}; expected a SampleQueue.state_dict()")
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"state has {key} = {int(state[key])}, this queue has {key} "
                                 f"= {getattr(self, key)}")
        for key in ("class_buffer", "class_count", "class_head", "global_buffer", "global_count",
                    "global_head"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}; expected a SampleQueue.state_dict()")
            value = torch.as_tensor(state[key])
            mine = getattr(self, key)
            if value.shape != mine.shape:
                raise ValueError(f"state {key!r} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(mine.shape)}")
            mine.copy_(value)


# ---------------------------------------------------------------------------
# drawing straight from the dataset
# ---------------------------------------------------------------------------


class ClassBalancedSampler:
    """Draws positives and unconditional samples directly from the dataset.

    Args:
        labels: labels of the whole dataset ``[N]``.
        num_classes: number of classes K.

    Positives of a class are ``n`` distinct dataset indices of that class (without
    replacement within a call; rows are independent); unconditional rows are ``n``
    distinct indices drawn uniformly from the whole dataset. Holds no random state.
    """

    def __init__(self, labels, num_classes: int) -> None:
        self.num_classes = _check_count("num_classes", num_classes, 1)
        lab = _as_labels(labels, self.num_classes)
        if lab.numel() == 0:
            raise ValueError("labels must be non-empty")
        self.num_samples = lab.numel()
        self.class_sizes = torch.bincount(lab, minlength=self.num_classes)  # [K]
        order = torch.sort(lab, stable=True).indices  # [N] dataset indices grouped by class
        self._members = order
        self._start = torch.cumsum(self.class_sizes, 0) - self.class_sizes  # [K]

    def __repr__(self) -> str:
        return f"ClassBalancedSampler(num_classes={self.num_classes}, num_samples={self.num_samples})"

    def refill(self, dataset_labels=None, n_push: int = 64, generator: torch.Generator | None = None) -> None:
        """No-op (kept for API parity with :class:`SampleQueue`)."""

    def warm_up(self, dataset_labels=None, generator: torch.Generator | None = None) -> None:
        """No-op (kept for API parity with :class:`SampleQueue`)."""

    def sample_positives(self, classes, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """For each class in ``classes`` ``[Nc]``, ``n`` distinct dataset indices of it: ``[Nc, n]``."""
        n = _check_count("n", n, 0)
        generator = _check_generator(generator)
        cls = _as_labels(classes, self.num_classes, "classes")  # [Nc]
        sizes = self.class_sizes[cls]  # [Nc]
        if cls.numel() and int(sizes.min()) < n:
            short = sorted(set(cls[sizes < n].tolist()))
            raise ValueError(
                f"n = {n} positives requested but classes {short[:10]} have fewer samples "
                f"(sizes {self.class_sizes[short[:10]].tolist()}); n must be <= the smallest class size"
            )
        slots = _sample_slots(sizes, n, generator)  # [Nc, n]
        return self._members[self._start[cls][:, None] + slots]  # [Nc, n]

    def sample_unconditional(self, n_rows: int, n: int,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """``n_rows`` rows of ``n`` distinct dataset indices each (uniform): ``[n_rows, n]``."""
        n_rows = _check_count("n_rows", n_rows, 0)
        n = _check_count("n", n, 0)
        generator = _check_generator(generator)
        if n > self.num_samples:
            raise ValueError(f"n must be <= the dataset size {self.num_samples}, got n = {n}")
        return _sample_slots(torch.full((n_rows,), self.num_samples, dtype=torch.int64), n, generator)

    def state_dict(self) -> dict:
        """Sizes only (the sampler has no random state of its own)."""
        return {"num_classes": self.num_classes, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        """Check that ``state`` comes from a sampler over a dataset of the same size."""
        for key in ("num_classes", "num_samples"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}; expected a ClassBalancedSampler.state_dict()")
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"state has {key} = {int(state[key])}, this sampler has {key} "
                                 f"= {getattr(self, key)}")


def make_sampler(kind: str, labels, num_classes: int, **kw) -> SampleQueue | ClassBalancedSampler:
    """Build a real-sample source: ``kind="queue"`` (:class:`SampleQueue`, ``kw``:
    ``per_class``, ``global_size``) or ``kind="balanced"`` (:class:`ClassBalancedSampler`).

    ``labels`` ``[N]`` are the dataset labels (checked against ``num_classes``). A queue
    starts empty: call ``warm_up(labels, generator)`` before the first draw.
    """
    if kind == "queue":
        _as_labels(labels, _check_count("num_classes", num_classes, 1))
        return SampleQueue(num_classes, **kw)
    if kind == "balanced":
        if kw:
            raise ValueError(f"kind='balanced' takes no extra options, got {sorted(kw)}")
        return ClassBalancedSampler(labels, num_classes)
    raise ValueError(f"kind must be one of {list(SAMPLER_KINDS)}, got {kind!r}")

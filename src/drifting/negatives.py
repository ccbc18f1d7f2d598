"""A queue of generated features from earlier steps: extra, detached negatives (issue 33's lever).

With ``N`` generated samples per class, the repulsion of the field (the ``V^-`` half of Alg. 2) is an
average over ``N - 1`` other samples, a noisy estimate when ``N`` is small (8 in the CPU presets). The
queue keeps the encoder features of the last ``Q`` generated samples of every class and hands them to the
loss as extra negatives with weight 1, next to the unconditional real negatives of CFG (A.7): ``V^-``
then averages over ``N - 1 + Q`` samples at no encoder cost. They are a few steps old and carry no
gradient, like Drift-RAE's detached extra negatives (Zhang et al. 2026, §3).

The features are stored at every location (the step's random subset of locations is taken after
:meth:`NegativeQueue.take`), per class, as a ring of ``Q`` slots. A class's queue is used once it is
full; a step uses the queue only when every class in it has a full queue, so that all classes see the
same number of negatives. The state (features, fill counts, write positions) goes into the checkpoint,
so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["NegativeQueue"]


class NegativeQueue:
    """Ring buffers of ``size`` generated feature rows per class (``num_classes`` classes).

    Args:
        size: ``Q``, the queued samples per class (>= 1).
        num_classes: ``K``, the classes of the data set.
        device: where a loaded state's features go (a new queue's follow the first push).
    """

    def __init__(self, size: int, num_classes: int, device: torch.device | str = "cpu"):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size: the queue length per class must be an integer >= 1, got {size!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
        self.size, self.num_classes, self.device = size, num_classes, device
        self.feats: dict[str, torch.Tensor] = {}  # {key: [K, Q, L, C]}, allocated by the first push
        self.count = torch.zeros(num_classes, dtype=torch.long)  # filled slots per class (<= Q)
        self.head = torch.zeros(num_classes, dtype=torch.long)  # the next slot to write per class

    def ready(self, classes: torch.Tensor) -> bool:
        """Whether every class in ``classes`` ``[Nc]`` has a full queue."""
        return bool(self.feats) and bool((self.count[classes.cpu()] >= self.size).all())

    def take(self, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The queued features of ``classes`` ``[Nc]``, class-major: ``{key: [Nc*Q, L, C]}``."""
        if not self.ready(classes):
            raise RuntimeError("take: the queue of some class is not full yet (check ready() first)")
        idx = classes.to(next(iter(self.feats.values())).device)
        return {k: t.index_select(0, idx).flatten(0, 1) for k, t in self.feats.items()}

    @torch.no_grad()
    def push(self, feats: Mapping[str, torch.Tensor], classes: torch.Tensor) -> None:
        """Store the generated features ``{key: [Nc*N, L, C]}`` (class-major, at every location) of
        ``classes`` ``[Nc]``; each class's ``N`` rows overwrite its oldest slots."""
        Nc = len(classes)
        for key, t in feats.items():
            if t.dim() != 3 or t.shape[0] % Nc:
                raise ValueError(f"feats[{key!r}]: expected [Nc*N, L, C] with Nc = {Nc}, "
                                 f"got {tuple(t.shape)}")
        if not self.feats:
            self.feats = {k: t.new_zeros(self.num_classes, self.size, *t.shape[1:]) for k, t in feats.items()}
        elif set(feats) != set(self.feats):
            raise ValueError(f"feats: groups {sorted(feats)} differ from the queue's {sorted(self.feats)}")
        N = next(iter(feats.values())).shape[0] // Nc
        n = min(N, self.size)  # a class with more new rows than slots keeps its last `size`
        cls = classes.cpu()
        slots = (self.head[cls, None] + torch.arange(n)) % self.size  # [Nc, n], the oldest slots first
        for key, t in feats.items():
            rows = t.detach().reshape(Nc, N, *t.shape[1:])[:, N - n:]  # [Nc, n, L, C]
            dev = self.feats[key].device
            self.feats[key][cls[:, None].to(dev), slots.to(dev)] = rows.to(self.feats[key].dtype)
        self.head[cls] = (self.head[cls] + n) % self.size
        self.count[cls] = (self.count[cls] + n).clamp(max=self.size)

    def state_dict(self) -> dict:
        return {"size": self.size, "num_classes": self.num_classes, "count": self.count.clone(),
                "head": self.head.clone(), "feats": {k: t.cpu() for k, t in self.feats.items()}}

    def load_state_dict(self, state: Mapping, device: torch.device | str | None = None) -> None:
        if (int(state["size"]), int(state["num_classes"])) != (self.size, self.num_classes):
            raise ValueError(f"the saved queue holds {int(state['size'])} samples of "
                             f"{int(state['num_classes'])} classes; this run's holds {self.size} of "
                             f"{self.num_classes}")
        self.count, self.head = state["count"].clone(), state["head"].clone()
        self.feats = {k: t.to(device or self.device) for k, t in state["feats"].items()}

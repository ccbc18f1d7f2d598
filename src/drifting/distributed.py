"""Multi-process training: ``torchrun`` + DistributedDataParallel, and the drifting loss across ranks.

Layout. ``W`` ranks form ``W / S`` *class groups* of ``S = ranks_per_class`` ranks each. A step's
global batch (``Nc`` classes x ``N`` generated, ``P`` positives, ``N_unc`` unconditional samples per
class) is split so that class group ``k`` owns ``Nc / (W / S)`` classes and each of its ``S`` ranks
holds ``N / S``, ``P / S`` and ``N_unc / S`` of every such class.

* ``S = 1``: classes sharded, nothing gathered; only the group-wide means of the loss (the feature
  scale ``S_j``, Eq. 21, and the drift scale ``lambda_j``, Eq. 25) are summed across ranks.
* ``S > 1``: the positives, generated samples (as negatives) and unconditional samples of a class are
  gathered across its group without gradient, so the field of each local sample sees all ``N``
  and ``P``; the column softmax of Alg. 2 (over generated samples) is reduced across the group and
  the self pair of local sample ``i`` is column ``P + rank_in_group * N / S + i``.

Either way the loss of every rank is the mean over its own samples; DDP's gradient average then
equals the gradient of the 1-rank loss on the whole global batch (tests/test_distributed.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class LossComm:
    """Collectives the drifting loss needs. ``group`` spans the ranks that share classes (None when
    ``group_size == 1``); sums run over the default (world) group."""

    group: object | None = None
    group_rank: int = 0
    group_size: int = 1

    def gather(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Concatenate every group rank's ``t`` along ``dim`` in rank order (no gradient)."""
        if self.group_size == 1:
            return t.detach()
        parts = [torch.empty_like(t) for _ in range(self.group_size)]
        dist.all_gather(parts, t.detach().contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over all ranks (a new tensor; no gradient)."""
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over all ranks (every rank holds an equal share)."""
        return self.sum(t) / dist.get_world_size()

    def column_lse(self, lse: torch.Tensor) -> torch.Tensor:
        """``log sum exp`` over the group of per-rank column log-sum-exps (exact: max-shifted)."""
        if self.group_size == 1:
            return lse
        m = lse.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=self.group)
        s = (lse - m).exp_()
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=self.group)
        return s.log_().add_(m)


@dataclass
class Layout:
    """Where this rank sits: ``rank`` of ``world``, in class group ``class_group`` (of ``W / S``) at
    position ``group_rank`` (of ``S``)."""

    rank: int = 0
    world: int = 1
    ranks_per_class: int = 1

    @property
    def class_groups(self) -> int:
        return self.world // self.ranks_per_class

    @property
    def class_group(self) -> int:
        return self.rank // self.ranks_per_class

    @property
    def group_rank(self) -> int:
        return self.rank % self.ranks_per_class

    def check(self, classes: int, n_gen: int, n_pos: int, n_uncond: int, n_extra_neg: int = 0) -> None:
        """Raise a ValueError unless the global batch splits evenly over this layout."""
        S, G = self.ranks_per_class, self.class_groups
        if S < 1 or self.world % S:
            raise ValueError(f"ranks_per_class must divide the world size {self.world}; got {S}")
        if classes % G:
            raise ValueError(f"classes_per_step={classes} must be a multiple of the {G} class groups "
                             f"(world size {self.world} / ranks_per_class {S})")
        counts = (("n_gen", n_gen), ("n_pos", n_pos), ("n_uncond", n_uncond), ("n_extra_neg", n_extra_neg))
        for name, n in counts:
            if n % S:
                raise ValueError(f"{name}={n} must be a multiple of ranks_per_class={S}")
        if n_gen // S < 1:
            raise ValueError(f"n_gen={n_gen} leaves no generated sample per rank with ranks_per_class={S}")

    def rows(self, n: int) -> slice:
        """This rank's slice of the ``n`` per-class samples."""
        k = n // self.ranks_per_class
        return slice(self.group_rank * k, (self.group_rank + 1) * k)

    def classes(self, n: int) -> slice:
        """This rank's slice of the ``n`` class slots of a step."""
        k = n // self.class_groups
        return slice(self.class_group * k, (self.class_group + 1) * k)


def init_from_env(ranks_per_class: int = 1,
                  device: torch.device | None = None) -> tuple[Layout, LossComm | None]:
    """Join the process group that ``torchrun`` describes (``RANK``/``WORLD_SIZE`` in the environment;
    NCCL on CUDA, gloo on CPU) and build the class groups. Without ``torchrun``: one rank, no comm."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if ranks_per_class != 1:
            raise ValueError(f"ranks_per_class={ranks_per_class} needs a multi-process run (torchrun)")
        return Layout(), None
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    layout = Layout(dist.get_rank(), dist.get_world_size(), ranks_per_class)
    if ranks_per_class < 1 or layout.world % ranks_per_class:
        raise ValueError(f"ranks_per_class must divide the world size {layout.world}; got {ranks_per_class}")
    group = None
    if ranks_per_class > 1:
        for k in range(layout.class_groups):  # every rank must create every group, in the same order
            ranks = list(range(k * ranks_per_class, (k + 1) * ranks_per_class))
            g = dist.new_group(ranks) if ranks_per_class < layout.world else dist.group.WORLD
            if k == layout.class_group:
                group = g
    return layout, LossComm(group, layout.group_rank, ranks_per_class)


def is_main() -> bool:
    """True on rank 0 (or without a process group): the rank that logs, samples and checkpoints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group together: wait for every rank (rank 0 may still be writing the final
    export), then destroy it. A rank that exits while another still uses the group can abort in gloo's
    threads ("terminate called without an active exception"). No-op without a process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

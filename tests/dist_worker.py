"""Worker for tests/test_distributed.py, launched by ``torchrun --nproc-per-node 2`` (gloo, CPU).

``dist_worker.py loss OUT``: the drifting loss on this rank's share of a fixed global batch, for
several layouts; saves each rank's loss and gradient to ``OUT/loss_rank{r}.pt``.
``dist_worker.py train OUT CONFIG.json RANKS_PER_CLASS [CRASH_AT]``: ``train_images`` under torchrun,
optionally crashing in the loss's CRASH_AT-th call (to test resuming on another world size).
``dist_worker.py distill OUT CONFIG.json``: the Drift-RAE distiller under torchrun (classes sharded).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from drifting.distributed import LossComm, init_from_env, shutdown
from drifting.loss import drifting_loss


def global_batch(seed=0, B=4, N=6, P=4, U=2, L=3, C=5):
    g = torch.Generator().manual_seed(seed)
    gen = {"a": torch.randn(B, N, L, C, generator=g), "b": torch.randn(B, N, C, generator=g) + 2}
    pos = {"a": torch.randn(B, P, L, C, generator=g) + 0.3, "b": torch.randn(B, P, C, generator=g) + 2.5}
    neg = {"a": torch.randn(B, U, L, C, generator=g), "b": torch.randn(B, U, C, generator=g) + 1}
    w = (torch.rand(B, generator=g) * 3 + 0.5)[:, None].expand(B, U).contiguous()  # one CFG weight per class
    return gen, pos, neg, w


CASES = {  # name: (ranks_per_class, loss options)
    "classes": (1, {}),
    "samples": (2, {}),
    "samples-streamed": (2, {"max_elements": 16}),  # column blocks: the column softmax reduced per block
    "samples-y": (2, {"normalize": "y"}),
}


def shard(t, layout, B_all):
    """This rank's share of a global ``[B, n, ...]`` tensor: its classes, and its rows of each."""
    k = B_all // layout.class_groups
    t = t[layout.class_group * k: (layout.class_group + 1) * k]
    n = t.shape[1] // layout.ranks_per_class
    return t[:, layout.group_rank * n: (layout.group_rank + 1) * n]


def run_loss(out: Path) -> None:
    dist.init_process_group("gloo")
    results = {}
    for name, (S, opts) in CASES.items():
        from drifting.distributed import Layout

        layout = Layout(dist.get_rank(), dist.get_world_size(), S)
        comm = LossComm(dist.group.WORLD if S > 1 else None, layout.group_rank, S)
        gen, pos, neg, w = global_batch()
        B = w.shape[0]
        gen = {k: shard(v, layout, B).clone().requires_grad_(True) for k, v in gen.items()}
        pos = {k: shard(v, layout, B) for k, v in pos.items()}
        neg = {k: shard(v, layout, B) for k, v in neg.items()}
        loss, stats = drifting_loss(gen, pos, neg, neg_weights=shard(w, layout, B), comm=comm, **opts)
        loss.backward()
        results[name] = {"loss": loss.detach(), "grad": {k: v.grad for k, v in gen.items()},
                         "S": {k: v for k, v in stats.items() if k.endswith("/S")}}
    torch.save(results, out / f"loss_rank{dist.get_rank()}.pt")
    shutdown()


def run_train(out: Path, config: Path, ranks_per_class: int, crash_at: int | None) -> None:
    import drifting.recipes.image_training as images
    from drifting.field import FieldOptions
    from drifting.recipes.image_config import ImageTrainConfig
    from drifting.recipes.mae_pretrain import MAEConfig

    cfg_dict = json.loads(config.read_text())
    cfg_dict["mae"] = MAEConfig(**cfg_dict["mae"])
    cfg_dict["field_options"] = FieldOptions(**cfg_dict["field_options"])
    cfg = ImageTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})
    if crash_at is not None:
        real, calls = images.drifting_loss, {"n": 0}

        def crashing(*a, **k):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise RuntimeError("simulated crash")
            return real(*a, **k)
        images.drifting_loss = crashing
    layout, _ = init_from_env(ranks_per_class)
    try:
        images.train_images(cfg, out, progress=False, resume=(out / "checkpoint.pt").is_file(),
                            ranks_per_class=ranks_per_class)
    except RuntimeError as e:
        if "simulated crash" not in str(e):
            raise
        (out / f"crashed_rank{layout.rank}").write_text("1")
    shutdown()


def run_distill(out: Path, config: Path) -> None:
    from drifting.recipes.distill import DistillConfig, distill

    cfg = DistillConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in json.loads(config.read_text()).items()})
    distill(cfg, out, progress=False, resume=False)
    shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "loss":
        run_loss(out)
    elif mode == "distill":
        run_distill(out, Path(sys.argv[3]))
    else:
        run_train(out, Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else None)

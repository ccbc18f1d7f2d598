"""Where a main-job step's time goes (issue 33's "step's cost" lever): the parts of one training step of
an image preset, each timed on its own, and their shares.

The parts, in the order of ``train_images``' step (same modules, shapes and feature groups as the preset;
positives, unconditional negatives and classes drawn at random, no sample queue):

* ``generator fwd``: ``x = G(noise, labels, alpha)``, ``[Nc*N, C, H, W]``;
* ``encoder fwd``: the generated samples' tap maps and groups, with the graph for the backward, and the
  step's location subset;
* ``real features``: the real images' groups at those locations, gathered from the feature cache (no grad);
* ``field + loss``: the drifting field (Alg. 2) of every group and temperature, and the loss
  (``drifting_loss``' forward);
* ``encoder bwd``: the gradient of the loss with respect to ``x`` (through the groups and the encoder);
* ``generator bwd``: ``x.backward(dL/dx)`` into the generator's weights;
* ``optimizer + EMA``: gradient clipping, AdamW and the EMA update.

Each part is timed ``--repeat`` times after a warm-up step, on a fresh step each time; the table gives the
median seconds and each part's share of their sum. ``--neg-queue Q`` adds Q extra negatives per class
(the size the field sees with a queue of generated negatives, drifting.negatives).

    python benchmarks/step_cost.py --threads 2                    # the cpu preset
    python benchmarks/step_cost.py --threads 1 --neg-queue 0 32   # and with 32 queued negatives per class
    python benchmarks/step_cost.py --quick                        # cpu-tiny, seconds
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, print_report, setup_threads, write_json  # noqa: E402
from drifting.data.images import load_dataset  # noqa: E402
from drifting.feature_cache import RealFeatureCache  # noqa: E402
from drifting.features import group_by_class, sample_locations, take_locations  # noqa: E402
from drifting.guidance import sample_alpha, uncond_neg_weights  # noqa: E402
from drifting.loss import drifting_loss  # noqa: E402
from drifting.models.generators import build_generator, generator_config  # noqa: E402
from drifting.recipes.image_config import train_preset  # noqa: E402
from drifting.recipes.image_training import encode, feature_encoder  # noqa: E402
from drifting.training.ema import EMA  # noqa: E402

NAME = "step_cost"
PARTS = ("generator fwd", "encoder fwd", "real features", "field + loss", "encoder bwd", "generator bwd",
         "optimizer + EMA")


def make_step(cfg, queue: int):
    """A closure running one step of ``cfg`` and returning the seconds of each part."""
    ds = load_dataset(cfg.data, "train")
    H, W, C = ds.shape
    K = ds.num_classes
    enc = feature_encoder(cfg, ds, None, progress=False)
    G = build_generator(generator_config(cfg.generator, input_size=H, in_channels=C, num_classes=K))
    opt = torch.optim.AdamW(G.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(G, cfg.ema_decays, warmup_steps=cfg.ema_warmup)
    def real(i: torch.Tensor) -> dict[str, torch.Tensor]:
        return encode(enc, ds.to_tensor(i.numpy()), cfg.feature_sets, cfg.vanilla, groups=cfg.groups)

    cache = (RealFeatureCache.build(real, len(ds), max_gb=cfg.real_feature_cache_gb)
             if cfg.real_feature_cache_gb > 0 else None)
    cfgc = cfg.guidance_config
    Nc, N, P, U = cfg.classes_per_step, cfg.n_gen, cfg.n_pos, cfgc.n_uncond
    g = torch.Generator().manual_seed(0)

    def step() -> dict[str, float]:
        t = {}
        classes = torch.randperm(K, generator=g)[:Nc]
        alpha = sample_alpha(Nc, cfgc, generator=g)
        idx = torch.randint(len(ds), (Nc * (P + U),), generator=g)
        noise = torch.randn(Nc * N, C, H, W, generator=g)

        t0 = time.perf_counter()
        x = G(noise, classes.repeat_interleave(N), alpha.repeat_interleave(N))  # [Nc*N, C, H, W]
        t["generator fwd"], t0 = time.perf_counter() - t0, time.perf_counter()
        xl = x.detach().requires_grad_(True)  # the encoder's backward is timed apart from the generator's
        f_gen = encode(enc, xl, cfg.feature_sets, cfg.vanilla, xl, groups=cfg.groups)
        subsets = sample_locations(f_gen, cfg.max_locations, g)
        f_gen = take_locations(f_gen, subsets)
        t["encoder fwd"], t0 = time.perf_counter() - t0, time.perf_counter()
        with torch.no_grad():  # as DriftingStep.real_features
            if cache is not None:
                f_real = cache.take(idx, subsets)
            else:
                f_real = take_locations(real(idx), subsets)
        t["real features"], t0 = time.perf_counter() - t0, time.perf_counter()
        pos = group_by_class({k: v[: Nc * P] for k, v in f_real.items()}, Nc)
        neg = group_by_class({k: v[Nc * P:] for k, v in f_real.items()}, Nc)
        w = uncond_neg_weights(alpha, N, U)
        if queue:  # stand-ins for the queued generated negatives: detached features of the right shape
            neg = {k: torch.cat([v, v[:, :1].expand(-1, queue, *v.shape[2:]).clone()], 1)
                   for k, v in neg.items()}
            w = torch.cat([w, torch.ones(Nc, queue)], 1)
        loss, _ = drifting_loss(group_by_class(f_gen, Nc), pos, neg, neg_weights=w, options=cfg.field_options)
        t["field + loss"], t0 = time.perf_counter() - t0, time.perf_counter()
        (gx,) = torch.autograd.grad(loss, xl)
        t["encoder bwd"], t0 = time.perf_counter() - t0, time.perf_counter()
        opt.zero_grad(set_to_none=True)
        x.backward(gx)
        t["generator bwd"], t0 = time.perf_counter() - t0, time.perf_counter()
        torch.nn.utils.clip_grad_norm_(G.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(G)
        t["optimizer + EMA"] = time.perf_counter() - t0
        return t

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, NAME)
    p.add_argument("--preset", default="cpu", help="image training preset (default: cpu)")
    p.add_argument("--neg-queue", type=int, nargs="+", default=[0],
                   help="queued negatives per class to time the field with (one row block each)")
    a = p.parse_args()
    setup_threads(a.threads)
    preset = "cpu-tiny" if a.quick else a.preset
    repeat = 2 if a.quick else max(3, a.repeat)
    rows, record = [], {}
    for q in a.neg_queue:
        step = make_step(train_preset(preset), q)
        step()  # warm-up: allocator growth, lazy kernel set-up
        samples = [step() for _ in range(repeat)]
        med = {k: statistics.median(s[k] for s in samples) for k in PARTS}
        total = sum(med.values())
        record[f"Q={q}"] = {"median_s": med, "total_s": total, "samples": samples}
        rows += [[f"Q={q}", k, f"{med[k] * 1e3:.1f}", f"{100 * med[k] / total:.0f}%"] for k in PARTS]
        rows.append([f"Q={q}", "**step**", f"{total * 1e3:.1f}", "100%"])
    table = markdown_table(["queue", "part", "ms (median)", "share"], rows)
    print_report(f"**One {preset} step, part by part** ({torch.get_num_threads()} threads)", table)
    write_json(a.out, NAME, {"preset": preset, "repeat": repeat, "results": record}, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The drifting loss against the feature encoder: time per training step of each part.

The paper says the loss costs little next to the encoder. Per setting, with the feature groups
built exactly as :func:`drifting.recipes.image_training.train_images` builds them (``encode`` -> sample
the locations -> ``take_locations`` -> ``group_by_class``; CFG weights of the unconditional
negatives from ``uncond_neg_weights`` with alpha drawn as in training), this times:

* ``enc fwd gen``: the encoder (and the A.5 feature statistics) on the generated samples, with
  autograd recording (they carry the generator's gradient);
* ``enc fwd real``: the encoder on the positives and unconditional real samples, under no_grad;
* ``enc bwd``: the backward pass of the generated samples' features into the encoder input (from
  the scalar ``sum_j <f_j, c_j>`` with fixed random ``c_j``; the forward is untimed);
* ``loss``: ``drifting_loss`` forward + backward w.r.t. the features only (features precomputed
  and detached, ``requires_grad`` on the generated ones);

and the ratio ``loss / (enc fwd gen + enc fwd real + enc bwd)``. ``field GFLOP`` counts the field's
matrix products, ``sum_j 2 B_j N Y C_j (1 + K)`` (B_j = classes x locations of group j).

Settings (the encoder is randomly initialised: its cost does not depend on its weights):

* ``cpu``: ``train_preset("cpu")`` - Nc classes x (n_gen generated, n_pos positives, n_uncond
  unconditional), ``max_locations``, ``feature_sets`` and ``vanilla`` of the preset; the
  ResNet-MAE preset ``cfg.mae.encoder`` on 1 x 28 x 28 inputs.
* ``latent``: Table 8's ablation setting (``train_preset("ablation")``: the ``latent-256``
  ResNet-MAE, N = P = 64) at a CPU-sized class count: ``--latent-classes`` (2) x (64 generated +
  64 positives + ``--latent-uncond`` (32) unconditional) on 4 x 32 x 32 latents, at most
  ``--latent-max-locations`` (64; 0 = all) locations per feature group. The encoder dominates
  (~36 GFLOP per image forward): one step is ~20 TFLOP of convolutions for 2 classes.

``--quick``: the cpu setting as is, and the latent one at width 32 with 1 class x (16 + 16 + 8).

    python benchmarks/loss_vs_encoder.py
    python benchmarks/loss_vs_encoder.py --quick
    python benchmarks/loss_vs_encoder.py --settings latent --latent-classes 1 --repeat 3 --threads 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_args,
    fmt_ms,
    markdown_table,
    print_report,
    run_each,
    setup_threads,
    time_call,
    write_json,
)
from drifting.features import group_by_class, sample_locations, take_locations  # noqa: E402
from drifting.guidance import sample_alpha, uncond_neg_weights  # noqa: E402
from drifting.loss import drifting_loss  # noqa: E402
from drifting.models.resnet_mae import ResNetMAE, resnet_mae_config  # noqa: E402
from drifting.recipes.image_config import ImageTrainConfig, train_preset  # noqa: E402
from drifting.recipes.image_training import encode  # noqa: E402

NAME = "loss_vs_encoder"


def setting_config(name: str, a: argparse.Namespace) -> tuple[ImageTrainConfig, tuple[int, int, int], dict]:
    """The training config of a setting, its encoder input ``(C, H, W)`` and the encoder overrides."""
    if name == "cpu":
        return train_preset("cpu"), (1, 28, 28), {}
    ml = a.latent_max_locations or None
    if a.quick:
        cfg = train_preset("ablation", classes_per_step=1, n_gen=16, n_pos=16, n_uncond=8, max_locations=ml)
        return cfg, (4, 32, 32), {"base_width": 32}
    cfg = train_preset("ablation", classes_per_step=a.latent_classes, n_uncond=a.latent_uncond,
                       max_locations=ml)
    return cfg, (4, 32, 32), ({"base_width": a.latent_width} if a.latent_width else {})


def build_encoder(cfg: ImageTrainConfig, chw: tuple[int, int, int], overrides: dict):
    """A randomly initialised ResNet-MAE encoder of ``cfg.mae.encoder``, frozen as build_encoder freezes
    it."""
    C, H, _ = chw
    width = {} if cfg.mae.width is None else {"base_width": cfg.mae.width}
    torch.manual_seed(0)
    mae = ResNetMAE(resnet_mae_config(cfg.mae.encoder, in_channels=C, input_size=H, **{**width, **overrides}))
    return mae.encoder.eval().requires_grad_(False)


def bench_setting(name: str, a: argparse.Namespace) -> dict:
    cfg, chw, enc_over = setting_config(name, a)
    encoder = build_encoder(cfg, chw, enc_over)
    cfgc = cfg.guidance_config
    Nc, N, P, U = cfg.classes_per_step, cfg.n_gen, cfg.n_pos, cfgc.n_uncond
    g = torch.Generator().manual_seed(0)
    alpha = sample_alpha(Nc, cfgc, generator=g)  # [Nc]
    x_gen = (torch.rand(Nc * N, *chw, generator=g) * 2 - 1).requires_grad_()  # the generator's output
    real = torch.rand(Nc * (P + U), *chw, generator=g) * 2 - 1  # positives, then unconditional
    sets, vanilla = cfg.feature_sets, cfg.vanilla
    rep = dict(repeat=a.repeat, warmup=1)

    def fwd_gen():
        return encode(encoder, x_gen, sets, vanilla)

    def fwd_real():
        with torch.no_grad():
            return encode(encoder, real, sets, vanilla)

    t = {"enc_fwd_gen": time_call(fwd_gen, **rep), "enc_fwd_real": time_call(fwd_real, **rep)}

    # the features of one step, grouped as train_images groups them
    f_real = fwd_real()
    f_gen = {k: v.detach() for k, v in fwd_gen().items()}
    # cotangents of the encoder backward
    cot = {k: torch.randn(v.shape, generator=g) for k, v in f_gen.items()}
    subsets = sample_locations(f_gen, cfg.max_locations, g)
    f_gen, f_real = take_locations(f_gen, subsets), take_locations(f_real, subsets)
    gen = {k: v.requires_grad_() for k, v in group_by_class(f_gen, Nc).items()}  # {j: [Nc, N, L, C]}
    pos = group_by_class({k: v[: Nc * P] for k, v in f_real.items()}, Nc)  # {j: [Nc, P, L, C]}
    neg, w = None, None
    if U > 0:
        neg = group_by_class({k: v[Nc * P:] for k, v in f_real.items()}, Nc)  # {j: [Nc, U, L, C]}
        w = uncond_neg_weights(alpha, N, U)  # [Nc, U]
    K = len(cfg.field_options.temperatures)
    groups = {k: tuple(v.shape) for k, v in gen.items()}
    Y = P + N + U
    field_flops = sum(2 * s[0] * s[2] * N * Y * s[3] * (1 + K) for s in groups.values())

    def loss_step():
        for v in gen.values():
            v.grad = None
        loss, _ = drifting_loss(gen, pos, neg, neg_weights=w, options=cfg.field_options)
        loss.backward()

    t["loss"] = time_call(loss_step, **rep)

    def bwd_setup():
        x_gen.grad = None
        feats = fwd_gen()
        return sum((feats[k] * c).sum() for k, c in cot.items())

    t["enc_bwd"] = time_call(lambda s: s.backward(), setup=bwd_setup, **rep)
    s = {k: v[a.stat] for k, v in t.items()}
    enc = s["enc_fwd_gen"] + s["enc_fwd_real"] + s["enc_bwd"]
    return {
        "setting": name, "encoder": cfg.mae.encoder, "encoder_overrides": enc_over,
        "encoder_params": sum(p.numel() for p in encoder.parameters()), "input_chw": list(chw),
        "classes": Nc, "n_gen": N, "n_pos": P, "n_uncond": U, "max_locations": cfg.max_locations,
        "feature_sets": sets, "vanilla": vanilla, "temperatures": list(cfg.field_options.temperatures),
        "groups": {k: list(v) for k, v in groups.items()},
        "problems": sum(v[0] * v[2] for v in groups.values()),
        "field_gflop": field_flops / 1e9, "times": t, "encoder_seconds": enc, "loss_seconds": s["loss"],
        "ratio_loss_to_encoder": s["loss"] / enc, "loss_gflops": field_flops / s["loss"] / 1e9,
    }


def table(rows: list[dict], stat: str) -> str:
    headers = ["setting", "encoder", "classes x (N + P + U)", "locations", "groups / problems",
               "enc fwd gen ms", "enc fwd real ms", "enc bwd ms", "encoder total ms", "loss fwd+bwd ms",
               "field GFLOP (GFLOP/s)", "loss / encoder"]
    out = []
    for r in rows:
        s = {k: v[stat] for k, v in r["times"].items()}
        enc = r["encoder"] + ("" if not r["encoder_overrides"] else f" {r['encoder_overrides']}")
        out.append([r["setting"], enc, f"{r['classes']} x ({r['n_gen']} + {r['n_pos']} + {r['n_uncond']})",
                    r["max_locations"] or "all", f"{len(r['groups'])} / {r['problems']}",
                    fmt_ms(s["enc_fwd_gen"]), fmt_ms(s["enc_fwd_real"]), fmt_ms(s["enc_bwd"]),
                    fmt_ms(r["encoder_seconds"]), fmt_ms(s["loss"]),
                    f"{r['field_gflop']:.3g} ({r['loss_gflops']:.3g})", f"{r['ratio_loss_to_encoder']:.3f}"])
    return markdown_table(headers, out)


def main() -> None:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, NAME)
    p.set_defaults(repeat=3)
    p.add_argument("--settings", nargs="+", choices=("cpu", "latent"), default=["cpu", "latent"])
    p.add_argument("--latent-classes", type=int, default=2)
    p.add_argument("--latent-uncond", type=int, default=32)
    p.add_argument("--latent-max-locations", type=int, default=64, help="0: every location")
    p.add_argument("--latent-width", type=int, default=None,
                   help="override latent-256's base width (default: 256)")
    a = p.parse_args()
    setup_threads(a.threads)
    rows = run_each(a.settings, lambda name: bench_setting(name, a))
    print_report(f"**Drifting loss vs feature encoder, per training step** ({a.stat} of {a.repeat} samples, "
                 f"ms; {torch.get_num_threads()} "
                 f"threads{'; --quick' if a.quick else ''})", table(rows, a.stat))
    write_json(a.out, NAME, {"stat": a.stat, "rows": rows}, a, started)


if __name__ == "__main__":
    main()

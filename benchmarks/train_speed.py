"""Training speed of the CPU image presets: steps/s and seconds per step of ``train_images``.

For each preset: one throwaway 1-step run first, which pre-trains the preset's ResNet-MAE (or
finds it in the cache, ``~/.cache/drifting/mae`` or ``$DRIFTING_CACHE``) and loads the data; its
wall time is reported apart (``setup s``; ``MAE cached`` says whether the MAE was already there,
so whether that time includes the pre-training). Then the timed run::

    train_images(train_preset(name, steps=S, eval_samples=0, sample_every=10**9, ckpt_every=10**9,
                              log_every=1), out=tmpdir, progress=False)

``run.history["time"][i]`` is the time from the start of the training loop (after the encoder,
the generator and the sampler are set up) to the end of step i + 1, so the per-step times are its
differences. Reported: steps/s over all S steps (S / time[-1]) and over the steps after the first
(the first step pays one-time costs: allocator growth, lazy kernel set-up), and the median and
minimum seconds per step. The final checkpoint and sample grid are written after the last
history entry and are not counted.

    python benchmarks/train_speed.py                    # cpu-tiny (40 steps) and cpu (20 steps)
    python benchmarks/train_speed.py --quick            # 5 steps of cpu-tiny
    python benchmarks/train_speed.py --presets cpu --steps 50 --threads 2
    python benchmarks/train_speed.py --presets cpu --steps 50 --nchw    # U-Net: channels-last against NCHW
    python benchmarks/train_speed.py --presets cpu --steps 40 --precision fp32 bf16 fp32 bf16  # autocast
    # the real-feature cache's gain:
    python benchmarks/train_speed.py --presets cpu --steps 50 --no-feature-cache
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, print_report, run_each, setup_threads, write_json  # noqa: E402
from drifting.cache import cache_root, content_key  # noqa: E402
from drifting.data.images import load_dataset  # noqa: E402
from drifting.models import convnet  # noqa: E402
from drifting.recipes.image_config import train_preset  # noqa: E402
from drifting.recipes.image_training import train_images  # noqa: E402
from drifting.training.checkpoint import jsonable  # noqa: E402

NAME = "train_speed"
DEFAULT_STEPS = {"cpu-tiny": 40, "cpu": 20}
NO_EXTRAS = dict(eval_samples=0, sample_every=10**9, ckpt_every=10**9, log_every=1, minutes=0)  # steps only


def mae_cached(cfg) -> bool | None:
    """Whether the preset's MAE is already in the cache (the key of ``cached_mae_dir``); None if unknown."""
    if cfg.encoder != "mae" or cfg.mae_dir or cfg.tokenizer:
        return None
    ds = load_dataset(cfg.data, "train")
    key = content_key(jsonable(asdict(cfg.mae)), ds.images, ds.labels, None)
    return (cache_root() / "mae" / key / ".complete").is_file()


def nchw_generator(name: str) -> str | None:
    """The preset's U-Net generator with ``channels_last=False``, registered as ``NAME-nchw`` (None: not a
    U-Net)."""
    gen = train_preset(name).generator
    if gen not in convnet.PRESETS:
        return None
    convnet.PRESETS[f"{gen}-nchw"] = replace(convnet.PRESETS[gen], channels_last=False)
    return f"{gen}-nchw"


def bench_preset(name: str, steps: int, **overrides) -> dict:
    cached = mae_cached(train_preset(name, steps=1, **NO_EXTRAS))
    with tempfile.TemporaryDirectory(prefix=f"train_speed_{name}_") as tmp:
        t0 = time.perf_counter()
        train_images(train_preset(name, steps=1, **NO_EXTRAS, **overrides), Path(tmp) / "setup",
                     progress=False)
        setup_s = time.perf_counter() - t0
        cfg = train_preset(name, steps=steps, **NO_EXTRAS, **overrides)
        t0 = time.perf_counter()
        run = train_images(cfg, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t0
    times = run.history["time"]
    if len(times) != steps:
        raise RuntimeError(f"{name}: expected {steps} history entries, got {len(times)}")
    per_step = [times[0]] + [b - a for a, b in zip(times, times[1:])]
    rest = per_step[1:] or per_step
    return {
        "preset": name, "steps": steps, "mae_cached_before": cached, "setup_seconds": setup_s,
        "wall_seconds": wall, "loop_seconds": times[-1], "steps_per_second": steps / times[-1],
        "steps_per_second_after_first": len(rest) / sum(rest), "first_step_seconds": per_step[0],
        "median_step_seconds": statistics.median(rest), "min_step_seconds": min(rest),
        "step_seconds": per_step, "classes_per_step": cfg.classes_per_step, "n_gen": cfg.n_gen,
        "n_pos": cfg.n_pos, "n_uncond": cfg.guidance_config.n_uncond, "generator": cfg.generator,
        "mae_encoder": cfg.mae.encoder, "max_locations": cfg.max_locations, "precision": cfg.precision,
    }


def table(rows: list[dict]) -> str:
    headers = ["preset", "generator / MAE", "classes x (N + P + U)", "steps", "steps/s", "steps/s after 1st",
               "s/step median", "s/step min", "1st step s", "setup s (MAE cached)"]
    out = [[r["preset"], f"{r['generator']} / {r['mae_encoder']}",
            f"{r['classes_per_step']} x ({r['n_gen']} + {r['n_pos']} + {r['n_uncond']})", r["steps"],
            f"{r['steps_per_second']:.2f}", f"{r['steps_per_second_after_first']:.2f}",
            f"{r['median_step_seconds']:.3f}", f"{r['min_step_seconds']:.3f}",
            f"{r['first_step_seconds']:.2f}", f"{r['setup_seconds']:.1f} "
            f"({'-' if r['mae_cached_before'] is None else ('yes' if r['mae_cached_before'] else 'no')})"]
           for r in rows]
    return markdown_table(headers, out)


def main() -> None:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, NAME, timing=False)
    p.add_argument("--presets", nargs="+", default=None, help="default: cpu-tiny cpu (--quick: cpu-tiny)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per preset (default: 40 for cpu-tiny, 20 for cpu; --quick: 5)")
    p.add_argument("--nchw", action="store_true",
                   help="after each preset with a U-Net generator, the same preset with its convolutions on "
                        "NCHW activations (ConvGenConfig.channels_last=False)")
    p.add_argument("--precision", nargs="+", choices=("auto", "fp32", "bf16"), default=None,
                   help="run each preset once per precision (TrainImagesConfig.precision; default: the "
                        "preset's own), interleaved, to compare bf16 autocast with fp32 in one run")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="after each preset that caches the real images' features "
                        "(real_feature_cache_gb > 0), the same preset encoding them every step (the "
                        "cache's build is in the first step's time)")
    a = p.parse_args()
    setup_threads(a.threads)
    presets = a.presets or (["cpu-tiny"] if a.quick else ["cpu-tiny", "cpu"])
    steps = {n: a.steps or (5 if a.quick else DEFAULT_STEPS.get(n, 20)) for n in presets}
    rows = []
    for name in presets:
        for prec in a.precision or [None]:
            over = {} if prec is None else {"precision": prec}
            rows += run_each([name], lambda n: {**bench_preset(n, steps[n], **over),
                                                **({} if prec is None else {"preset": f"{n} ({prec})"})})
        gen = nchw_generator(name) if a.nchw else None
        if gen is not None:
            rows += run_each([name],
                             lambda n: {**bench_preset(n, steps[n], generator=gen), "preset": f"{n} (NCHW)"})
        if a.no_feature_cache and train_preset(name).real_feature_cache_gb > 0:
            rows += run_each([name], lambda n: {**bench_preset(n, steps[n], real_feature_cache_gb=0.0),
                                                "preset": f"{n} (no feature cache)"})
    print_report("**Training speed of the CPU presets** (train_images, MAE pre-trained or cached "
                 f"beforehand; {torch.get_num_threads()} threads)", table(rows))
    write_json(a.out, NAME, {"rows": rows}, a, started)


if __name__ == "__main__":
    main()

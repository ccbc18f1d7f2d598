"""Which of a finished image run's weights to sample from: the raw generator or one of its EMAs.

``drifting train`` keeps an EMA of the generator per decay of ``ema_decays`` (the CPU presets: 0.99 and 0.999,
with a 1000-step warm-up) and exports the slowest one. Whether that is the best choice at a short run's length
is an empirical question; this script answers it for finished runs at no training cost: it loads each run's
last checkpoint (``OUT/checkpoint.pt``), and scores the raw weights and every EMA with the run's own metrics
(the in-domain classifier's accuracy and classifier FID of ``--n`` samples at alpha 1, the same seed for all).

    python benchmarks/ema_choice.py runs/job_s0 runs/job_s1 --n 2000
    python benchmarks/ema_choice.py --quick       # a 6-step cpu-tiny run, seconds
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, print_report, setup_threads, write_json  # noqa: E402
from drifting.recipes.image_config import ImageTrainConfig, train_preset  # noqa: E402
from drifting.recipes.image_sampling import load_generator  # noqa: E402
from drifting.recipes.image_training import evaluate_generator, train_images  # noqa: E402
from drifting.training.checkpoint import load_state  # noqa: E402

NAME = "ema_choice"


def weights_of(run: Path) -> tuple[dict, dict[str, torch.nn.Module], object]:
    """``(config, {"raw": G, "ema 0.99": ..., ...}, tokenizer)``: the run's exported generator (its
    architecture and tokenizer) with the weights of the last checkpoint loaded into a copy per weight set."""
    state = load_state(run / "checkpoint.pt")
    exported, tok = load_generator(run / "model")

    def model(sd: dict) -> torch.nn.Module:
        G = copy.deepcopy(exported)
        G.load_state_dict(sd)
        return G.eval()

    out = {"raw": model(state["model"])}
    for d, sd in state["ema"]["models"].items():
        out[f"ema {d}"] = model(sd)
    return {**state["config"], "step": int(state["step"])}, out, tok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, NAME, timing=False)
    p.add_argument("runs", nargs="*", help="finished `drifting train` output folders (with checkpoint.pt)")
    p.add_argument("--n", type=int, default=2000, help="samples per weight set (default 2000)")
    a = p.parse_args()
    setup_threads(a.threads)
    runs = [Path(r) for r in a.runs]
    if a.quick:
        tmp = Path(tempfile.mkdtemp()) / "tiny"
        tiny: ImageTrainConfig = train_preset("cpu-tiny", steps=6, ema_warmup=0, eval_samples=0,
                                              sample_every=0)
        train_images(tiny, tmp, progress=False)
        runs, a.n = [tmp], 100
    if not runs:
        p.error("runs: give at least one run folder (or --quick)")
    rows, record = [], {}
    for run in runs:
        cfg, models, tok = weights_of(run)
        record[str(run)] = {"step": cfg["step"], "seed": cfg["seed"], "results": {}}
        for name, G in models.items():
            m = evaluate_generator(G, cfg["data"], a.n, tokenizer=tok, seed=cfg["seed"] + 1)
            record[str(run)]["results"][name] = m
            rows.append([run.name, cfg["step"], name, f"{m['accuracy']:.3f}", f"{m['classifier_fid']:.1f}"])
    table = markdown_table(["run", "steps", "weights", "accuracy", "classifier FID"], rows)
    print_report(f"**Raw weights against their EMAs**, {a.n} samples at alpha 1", table)
    write_json(a.out, NAME, {"n": a.n, "runs": record}, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

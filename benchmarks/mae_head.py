"""How well a pre-trained ResNet-MAE's features separate the classes: the accuracy of its A.3 linear head.

The MAE's classification fine-tuning (A.3) trains a linear head on the pooled last map of half-masked crops.
Applied to the unmasked test images it is a cheap probe of the encoder the drifting loss works in: session 19
found the 15-minute job's quality to follow it (0.661 -> 0.778 when the MAE's training doubled). This script
scores one or more MAE exports (``config.json`` + ``model.safetensors``, e.g. what ``drifting train-mae --out
DIR`` writes, or the package's own under ``drifting/weights/mae``) on the test split, and also reports the
masked-pixel reconstruction MSE at the training mask ratio (one fixed mask per image, the same for every MAE).

    python benchmarks/mae_head.py runs/mae16_3200 src/drifting/weights/mae/5d193fd2cc2e13fe
    python benchmarks/mae_head.py --quick     # the shipped MAEs on 500 test images, seconds
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, print_report, setup_threads, write_json  # noqa: E402
from drifting.cache import shipped_root  # noqa: E402
from drifting.data.images import load_dataset  # noqa: E402
from drifting.models.resnet_mae import ResNetMAE, masked_mse  # noqa: E402

NAME = "mae_head"


@torch.no_grad()
def score(mae: ResNetMAE, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> dict:
    """``{"head_accuracy", "masked_mse"}`` of ``mae`` on images ``x [n, C, H, W]`` with labels ``y [n]``: the
    head on the unmasked images (None without a head), the reconstruction on masks drawn from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    correct, se, n_batches = 0, 0.0, 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        _, logits = mae(xb)
        if logits is not None:
            correct += int((logits.argmax(-1) == y[i:i + batch]).sum())
        mask = mae.draw_mask(xb, g)  # [b, 1, H, W]
        x_hat, _ = mae(xb, mask)
        se += float(masked_mse(x_hat, xb, mask))
        n_batches += 1
    acc = correct / len(x) if mae.head is not None else None
    return {"head_accuracy": acc, "masked_mse": se / n_batches}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, NAME, timing=False)
    p.add_argument("maes", nargs="*", help="MAE export folders (config.json + model.safetensors)")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec of `drifting train --data`")
    p.add_argument("--n", type=int, default=None, help="test images (default: all)")
    a = p.parse_args()
    setup_threads(a.threads)
    maes = [Path(m) for m in a.maes]
    if a.quick:
        maes, a.n = sorted((shipped_root() / "mae").iterdir()), 500
    if not maes:
        p.error("maes: give at least one MAE export folder (or --quick)")
    ds = load_dataset(a.data, split="test")
    n = len(ds) if a.n is None else min(a.n, len(ds))
    x, y = ds.to_tensor(np.arange(n)), torch.from_numpy(ds.labels[:n]).long()
    rows, record = [], {}
    for d in maes:
        mae = ResNetMAE.from_pretrained(d).eval()
        if mae.config.in_channels != x.shape[1]:
            print(f"skipping {d}: made for {mae.config.in_channels}-channel inputs, not {x.shape[1]}")
            continue
        m = score(mae, x, y)
        record[str(d)] = {**m, "base_width": mae.config.base_width}
        acc = "no head" if m["head_accuracy"] is None else f"{m['head_accuracy']:.4f}"
        rows.append([str(d), mae.config.base_width, acc, f"{m['masked_mse']:.4f}"])
    table = markdown_table(["MAE", "width", "head accuracy (unmasked)", "masked-pixel MSE"], rows)
    print_report(f"**The MAE's A.3 head and reconstruction** on {n} {a.data} test images", table)
    write_json(a.out, NAME, {"data": a.data, "n": n, "maes": record}, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

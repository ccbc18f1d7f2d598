"""The main job's speed on a busy machine (issue 34 item 6): steps/s of the ``cpu`` preset's training step
alone and beside 1 and 2 other busy single-thread processes, at 2 threads, 1 thread and ``--threads auto``
(drifting.threads: the cores idle at start).

The other processes are single-thread torch matrix products in a loop (another training job's kind of
load). Each cell times ``--repeat`` steps after one warm-up step, with the step of
``benchmarks/step_cost.py`` (the same modules, shapes and feature groups as ``drifting train``); the table
gives steps/s and the slowdown against the quiet machine at its best thread count.

    python benchmarks/busy_machine.py             # the cpu preset, about 5 minutes on 2 cores
    python benchmarks/busy_machine.py --quick     # cpu-tiny, under a minute
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, markdown_table, print_report, write_json  # noqa: E402
from drifting.recipes.image_config import train_preset  # noqa: E402
from drifting.threads import choose_threads, free_cores  # noqa: E402
from step_cost import make_step  # noqa: E402

NAME = "busy_machine"
BUSY = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")


def start_busy(k: int) -> list[subprocess.Popen]:
    """``k`` single-thread busy processes, returned once they compute (torch imported)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(k)]
    time.sleep(4.0 if k else 0.0)  # their torch import, then the loop
    return procs


def steps_per_s(step, threads: int, repeat: int) -> tuple[float, list[float]]:
    torch.set_num_threads(threads)
    step()  # warm-up at this thread count
    secs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        secs.append(time.perf_counter() - t0)
    return repeat / sum(secs), secs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, NAME)
    p.add_argument("--preset", default="cpu", help="image training preset (default: cpu)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="other busy processes per row")
    a = p.parse_args()
    preset = "cpu-tiny" if a.quick else a.preset
    repeat = 3 if a.quick else max(3, a.repeat)
    step = make_step(train_preset(preset), 0)
    rows, record = [], {}
    for k in a.busy:
        procs = start_busy(k)
        try:
            free = free_cores()
            auto, why = choose_threads("auto", free=free)
            cell = {"free_cores": free, "auto_threads": auto}
            for label, n in (("2 threads", 2), ("1 thread", 1), ("auto", auto or torch.get_num_threads())):
                sps, secs = steps_per_s(step, n, repeat)
                cell[label] = {"threads": n, "steps_per_s": sps, "step_s": secs}
        finally:
            for q in procs:
                q.kill()
                q.wait()
        record[f"busy={k}"] = cell
    best_quiet = max(record[f"busy={a.busy[0]}"][c]["steps_per_s"] for c in ("2 threads", "1 thread", "auto"))
    for k in a.busy:
        c = record[f"busy={k}"]
        row = [str(k), f"{c['free_cores']:.2f}" if c["free_cores"] is not None else "?"]
        for label in ("2 threads", "1 thread", "auto"):
            sps = c[label]["steps_per_s"]
            auto = f", {c[label]['threads']}t" if label == "auto" else ""
            row.append(f"{sps:.2f} ({best_quiet / sps:.1f}x){auto}")
        rows.append(row)
    table = markdown_table(["other busy processes", "free cores seen", "2 threads: steps/s (slowdown)",
                            "1 thread", "auto"], rows)
    print_report(f"**The {preset} step beside busy single-thread processes** ({repeat} steps per cell; "
                 "slowdown against the quiet machine's best)", table)
    write_json(a.out, NAME, {"preset": preset, "repeat": repeat, "results": record}, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

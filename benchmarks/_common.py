"""Shared helpers of the speed benchmarks (field.py, loss_vs_encoder.py, train_speed.py): the
common command-line flags, timing, Markdown tables and the JSON record (command line, machine,
torch version and threads).

Timing statistic: every call is repeated after a warm-up and each sample is timed on its own.
On a machine shared with other jobs the noise only ever *adds* time, so the minimum is the
least noisy estimate of a call's own cost and the median the typical one; both are recorded
(with every raw sample) and ``--stat`` picks the one the tables and ratios use (default: median).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def add_common_args(p: argparse.ArgumentParser, name: str, timing: bool = True) -> None:
    """``--quick``, ``--threads``, ``--out`` (every benchmark) and, with ``timing``, ``--repeat``,
    ``--stat``."""
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, finishes in well under a minute (smoke test)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--out", default=str(RESULTS / f"{name}.json"),
                   help=f"JSON output (default benchmarks/results/{name}.json)")
    if not timing:
        return
    p.add_argument("--repeat", type=int, default=5,
                   help="timed samples per measurement after the warm-up (>= 3)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the timed samples used in the tables and ratios (both are in the JSON)")


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def machine_info() -> dict:
    """Where the numbers come from: CPU, core count, load, torch build and thread settings."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def time_call(fn: Callable[..., object], *, repeat: int = 5, warmup: int = 1, min_sample_s: float = 0.0,
              setup: Callable[[], object] | None = None) -> dict:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``repeat`` timed samples.

    With ``min_sample_s`` > 0 (and no ``setup``) a sample runs ``fn`` as many times as needed to
    last that long (the count is fixed after the warm-up, as ``timeit`` does) and is divided by the
    count, so calls of microseconds are not dominated by the timer. With ``setup``, each call is
    ``fn(setup())`` and only ``fn`` is timed (e.g. a backward pass after an untimed forward).
    Returns ``{"median", "min", "max", "samples", "number"}`` in seconds per call.
    """
    repeat = max(1, repeat)

    def once() -> float:
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn(arg) if setup is not None else fn()
        return time.perf_counter() - t0

    first = None
    for _ in range(warmup):
        first = once()
    number = 1
    if setup is None and min_sample_s > 0:
        probe = first if first is not None else once()
        number = max(1, int(min_sample_s / max(probe, 1e-9)))
    samples = []
    for _ in range(repeat):
        if number == 1:
            samples.append(once())
        else:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - t0) / number)
    return _summary(samples, number)


def _summary(samples: list[float], number: int) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples, "number": number}


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeat: int = 5, warmup: int = 1,
                     min_sample_s: float = 0.0) -> dict[str, dict]:
    """:func:`time_call` for several functions whose ratio is the result: their samples alternate
    (A B A B ...), so that a slow spell of a noisy machine hits all of them alike. Returns one
    :func:`time_call` dict per name."""
    numbers = {}
    for name, fn in fns.items():
        probe = 0.0
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            fn()
            probe = time.perf_counter() - t0
        numbers[name] = max(1, int(min_sample_s / max(probe, 1e-9))) if min_sample_s > 0 else 1
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / numbers[name])
    return {name: _summary(samples[name], numbers[name]) for name in fns}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; cells are printed with ``str`` (format them before)."""
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt(v, spec: str = "{:.3g}", none: str = "-") -> str:
    return none if v is None else spec.format(v)


def fmt_ms(seconds: float | None) -> str:
    """Milliseconds with 3 significant digits."""
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def write_json(path: str | Path, name: str, results: dict, args: argparse.Namespace | None = None,
               started: float | None = None) -> Path:
    """``results`` plus the record of how they were made, written to ``path``; returns the path."""
    record = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "argv": sys.argv,
        "args": vars(args) if args is not None else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "wall_seconds": None if started is None else time.perf_counter() - started,
        **results,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out}")
    return out


def run_each(items: Sequence, bench: Callable[[object], dict],
             label: Callable[[object], str] = str) -> list[dict]:
    """``[bench(item) for item in items]``, printing each item's wall time as it finishes."""
    rows = []
    for item in items:
        t0 = time.perf_counter()
        rows.append(bench(item))
        print(f"  {label(item)}: {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def print_report(title: str, table: str) -> None:
    """The bold title line and the markdown table, as every benchmark prints them."""
    print(f"\n{title}\n\n{table}")

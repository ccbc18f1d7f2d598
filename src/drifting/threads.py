"""How many torch CPU threads a command uses: the cores that are free when it starts.

torch's default is one thread per core. On a machine where another busy process holds a core, its
OpenMP threads then wait for each other at every barrier and a 2-thread job runs several times slower
than at one thread (docs/performance.md, "A busy machine"). ``--threads auto`` (every command's
default) counts the cores left idle by other processes over a short window at start and uses that
many threads (at least one, at most the cores this process may run on). ``OMP_NUM_THREADS`` in the
environment, and torchrun's ranks, keep torch's own setting.

Linux only (``/proc/stat``); elsewhere ``auto`` keeps torch's default. A job that starts *after* this
one is not seen: give both ``--threads`` explicitly (one each on two cores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

AUTO = "auto"
WINDOW_S = 0.2  # how long the idle time is sampled; /proc/stat counts in 10 ms ticks


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity mask), or ``range(os.cpu_count())``."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _idle_ticks(stat: str, cores: list[int]) -> tuple[int, int]:
    """(idle + iowait ticks, all ticks) summed over ``cores`` from the text of ``/proc/stat``."""
    want = {f"cpu{c}" for c in cores}
    idle = total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name in want:
            ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle += ticks[3] + ticks[4]
            total += sum(ticks)
    return idle, total


def free_cores(window_s: float = WINDOW_S, read=lambda: Path("/proc/stat").read_text(),
               sleep=time.sleep) -> float | None:
    """Idle cores among :func:`usable_cores` over ``window_s`` seconds (this process sleeps meanwhile, so
    what is busy is other processes' work), or ``None`` where ``/proc/stat`` cannot be read."""
    cores = usable_cores()
    try:
        idle0, total0 = _idle_ticks(read(), cores)
        sleep(window_s)
        idle1, total1 = _idle_ticks(read(), cores)
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return len(cores) * (idle1 - idle0) / (total1 - total0)


def choose_threads(requested: int | str | None = AUTO, free: float | None = None) -> tuple[int | None, str]:
    """``(threads, why)``: ``requested`` if it is a number; for ``"auto"`` the free cores rounded to the
    nearest whole core, at least 1 and at most the usable cores (``free`` is measured when not given);
    ``(None, why)`` when nothing should change (``None`` requested, or ``/proc/stat`` unreadable)."""
    if requested is None:
        return None, "torch's default"
    if requested != AUTO:
        return int(requested), "--threads"
    if os.environ.get("OMP_NUM_THREADS"):  # the user's own choice, which torch already follows
        return None, "OMP_NUM_THREADS"
    if os.environ.get("WORLD_SIZE", "1") != "1":  # torchrun's ranks start together and would see each other
        return None, "torch's default under torchrun"
    n = len(usable_cores())
    if free is None:
        free = free_cores()
    if free is None:
        return None, "torch's default (free cores unknown)"
    k = max(1, min(n, round(free)))
    return k, f"auto: {free:.1f} of {n} cores free"

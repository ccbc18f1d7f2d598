"""Argument types and options that several ``drifting`` commands share.

Each type is an argparse ``type=``: it parses one string and raises ``argparse.ArgumentTypeError``
with a message that says what was expected, so a bad value exits with status 2 and a usage line.
"""

from __future__ import annotations

import argparse

from ..recipes.evaluate import METRICS
from ..threads import AUTO


def _whole_number(s: str, minimum: int, expected: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {v}")
    return v


def positive_int(s: str) -> int:
    return _whole_number(s, 1, "a positive integer")


def count(s: str) -> int:
    """A whole number >= 0 (a count where 0 means none or off)."""
    return _whole_number(s, 0, "a whole number >= 0 (0: off)")


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s}")
    return v


def time_budget(s: str) -> float:
    """``--minutes M`` of ``drifting train``: a wall-time budget in minutes, or 0 for none (a preset's own
    budget, as the ``cpu`` preset's, is then lifted and only ``--steps`` ends the run)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes (a number >= 0; 0: no time budget), "
                                         f"got {s!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected minutes >= 0 (0: no time budget), got {s}")
    return v


def temperatures(s: str) -> tuple[float, ...]:
    """``--temperatures 0.02,0.05,0.2``: comma-separated positive taus."""
    try:
        vals = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--temperatures must be comma-separated numbers, "
                                         f"got {s!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--temperatures must be positive, got {s!r}")
    return vals


def metric_list(s: str) -> tuple[str, ...]:
    """``--metrics fid,prdc``: comma-separated names from :data:`drifting.recipes.evaluate.METRICS`."""
    vals = tuple(v.strip() for v in s.split(",") if v.strip())
    bad = [v for v in vals if v not in METRICS]
    if not vals or bad:
        raise argparse.ArgumentTypeError("--metrics must be comma-separated names "
                                         f"from {', '.join(METRICS)}; got {s!r}")
    return vals


def threads_arg(s: str) -> int | str:
    """``--threads``: a positive integer or ``auto`` (the cores free at start, :mod:`drifting.threads`)."""
    if s == AUTO:
        return AUTO
    try:
        return positive_int(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or {AUTO!r}, got {s!r}") from None


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N|auto``: torch's CPU threads for this command (applied by :func:`drifting.cli.main`)."""
    p.add_argument("--threads", type=threads_arg, default=AUTO,
                   help="torch CPU threads, or 'auto' (default): as many as cores are idle at start, so that "
                        "a job beside another busy one does not fight it for a core")


def add_resume_options(p) -> None:
    """``--resume`` / ``--no-resume`` on a training command. Resume is one behaviour for every training
    command: by default a run continues ``OUT/checkpoint.pt`` when it is there (written by the same kind of
    run with the same configuration) and starts when it is not."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="insist on continuing OUT/checkpoint.pt: an error when there is none (by default a "
                        "run continues it when it is there and starts when it is not)")
    g.add_argument("--no-resume", action="store_true",
                   help="start over, deleting OUT/checkpoint.pt (by default a run continues it)")


def resume_flag(a: argparse.Namespace, out) -> bool:
    """The recipes' ``resume`` from ``--resume`` / ``--no-resume``. With ``--resume`` the checkpoint must be
    there and readable: checked now, before any data is read or encoder trained."""
    from pathlib import Path

    from ..training.checkpoint import load_state

    if getattr(a, "resume", False):
        ckpt = Path(out) / "checkpoint.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: there is no checkpoint at {ckpt}; run without --resume to "
                                    "start there, or give the --out of the run to continue")
        load_state(ckpt)  # CorruptCheckpointError when it cannot be read; the recipe checks its configuration
    return not getattr(a, "no_resume", False)


def add_deprecated_alias(p, old: str, new: str, dest: str, **kw) -> None:
    """``old``: a hidden, deprecated spelling of the option ``new`` (same ``dest``); using it works and says
    the new name on stderr."""
    import sys

    class _Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"drifting: {option_string} is deprecated; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    # no default of its own: the new option's stands
    p.add_argument(old, dest=dest, action=_Alias, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)

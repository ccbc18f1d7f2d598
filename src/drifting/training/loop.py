"""The bookkeeping a step-based trainer shares with the others: resume from ``OUT/checkpoint.pt``,
one JSON log line per logged step, a progress bar, periodic sample grids (left out of the
training time), atomic checkpoints every ``ckpt_every`` steps, at the end and on Ctrl-C, and the
optimizer step with gradient clipping and EMA. Used by the flow-matching and the Drift-RAE trainers;
the loss of a step is the trainer's own.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .checkpoint import fill_defaults, load_state, save_state


def progress_bar(total: int, desc: str, progress: bool, initial: int = 0):
    """A tqdm bar over ``total`` steps (None when ``progress`` is off); sparse updates when not on a TTY."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


class JsonlLogger:
    """One JSON line per logged step in ``OUT/log.jsonl`` (+ TensorBoard scalars under ``OUT/tb``)."""

    def __init__(self, out: Path, tensorboard: bool):
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "log.jsonl", "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # the tensorboard package is optional
                raise ImportError("tensorboard logging needs the tensorboard package: "
                                  "pip install tensorboard") from e
            self.tb = SummaryWriter(str(out / "tb"))

    def write(self, step: int, scalars: dict, stats: dict) -> None:
        groups = {k: round(v.item(), 6) for k, v in stats.items() if "/V2@" in k}  # raw ||V||^2 per group/tau
        # no field stats: no key
        line = {"step": step, **scalars, **({"V2_groups": groups} if groups else {})}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            for k, v in groups.items():
                self.tb.add_scalar(f"V2/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def truncate_log(path: Path, step: int) -> None:
    """Keep only the lines of ``path`` logged at or before ``step`` (a resumed run rewrites the rest)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float,
                   ema=None) -> torch.Tensor:
    """Backward, clip the gradient norm to ``grad_clip`` (<= 0: no clipping, the norm is still
    returned), step, update ``ema``. Returns the pre-clipping gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    if ema is not None:
        ema.update(model)
    return gnorm


class TrainRun:
    """Checkpoint, log and progress of one run in ``out``.

    ``parts``: ``{name: object with state_dict() / load_state_dict()}`` (model, optimizer, EMA) saved
    in the checkpoint; ``config``: the run's JSON-able config, which a resumed checkpoint must match.
    ``defaults``: the config's default values; a checkpoint written before a field existed lacks it
    and is read as holding the default (so adding an option does not orphan old runs).
    With ``resume`` an existing ``checkpoint.pt`` of the same ``kind`` and config is continued
    (``self.start`` is its step); without, it is deleted so that a crash before the first save cannot
    resume the old run. Log lines after ``self.start`` are dropped (a resumed run rewrites them).
    ``minutes``: a wall-time budget (training seconds, sample grids excluded, earlier sessions of a resumed
    run included); the first step to end past it is the run's last: :meth:`end_step` logs and checkpoints
    it and returns True.
    """

    def __init__(self, out: str | Path, kind: str, config: dict, parts: Mapping[str, object], *, steps: int,
                 resume: bool, progress: bool, desc: str, main: bool = True, defaults: dict | None = None,
                 minutes: float | None = None):
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes must be None or > 0, got {minutes!r}")
        self.out, self.kind, self.config, self.parts, self.steps = Path(out), kind, config, dict(parts), steps
        self.minutes = minutes
        self.main = main  # False on ranks > 0 of a multi-process run: they read the checkpoint, write nothing
        self.ckpt = self.out / "checkpoint.pt"
        self.history: dict = {"step": [], "loss": [], "time": []}
        self.start = 0
        if resume and self.ckpt.is_file():
            state = load_state(self.ckpt)
            stored = fill_defaults(state["config"],
                                   {k: v for k, v in (defaults or {}).items() if k in config})
            if state.get("kind") != kind or stored != config:
                raise ValueError(f"{self.ckpt} was written by another run or configuration; use a new --out, "
                                 "or resume=False (--no-resume) to start over there")
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
            self.history = json.loads(state["history"])
            self.start = int(state["step"])
        elif not resume and main:
            self.ckpt.unlink(missing_ok=True)
        if main:
            truncate_log(self.out / "log.jsonl", self.start)
        self.log = JsonlLogger(self.out, tensorboard=False) if main else None
        self.bar = progress_bar(steps, desc, progress and main, initial=self.start)
        self.paused_seconds = 0.0  # seconds of sample grids and evaluations, left out of the training time
        self.t0 = time.perf_counter() - (self.history["time"][-1] if self.history["time"] else 0.0)

    def save(self, step: int) -> None:
        if not self.main:
            return
        save_state(self.ckpt, {"kind": self.kind, "step": step, "config": self.config,
                               "history": json.dumps(self.history),
                               **{name: part.state_dict() for name, part in self.parts.items()}})

    def check_loss(self, loss: torch.Tensor, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}; the last good checkpoint "
                                     f"is {self.ckpt} (resume it, e.g. with a lower --lr)")

    def end_step(self, done: int, loss: float, scalars: dict, *, log_every: int, ckpt_every: int,
                 sample_every: int, interrupted: bool, sample: Callable[[Path], None],
                 postfix: dict | None = None) -> bool:
        """After step ``done`` (1-based): log, advance the bar, write ``samples_<done>.png`` with ``sample``,
        checkpoint; on ``interrupted`` save and raise KeyboardInterrupt. Returns whether this was the run's
        last step (``done == steps``, or the ``minutes`` budget is spent): the caller then stops."""
        last = done == self.steps or (self.minutes is not None and self.elapsed() >= 60.0 * self.minutes)
        if done % log_every == 0 or last:
            self.history["step"].append(done)
            self.history["loss"].append(loss)
            self.history["time"].append(self.elapsed())
            if self.log is not None:
                self.log.write(done, {"loss": loss, **scalars, "time": self.history["time"][-1]}, {})
            if self.bar is not None:
                self.bar.set_postfix(postfix or {"loss": f"{loss:.4f}"})
        if self.bar is not None:
            self.bar.update(1)
        if done % sample_every == 0 and not last and self.main:
            with self.paused():
                sample(self.out / f"samples_{done:06d}.png")
        if done % ckpt_every == 0 or last or interrupted:
            self.save(done)
        if interrupted:
            raise KeyboardInterrupt(f"interrupted after step {done}; run again with the same --out to resume")
        return last

    @contextlib.contextmanager
    def paused(self):
        """A block whose time is not training time (a sample grid, a learning-curve evaluation)."""
        s0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - s0

    def elapsed(self) -> float:
        """Training seconds so far (earlier sessions of a resumed run included, sample grids and
        :meth:`paused` blocks excluded)."""
        return time.perf_counter() - self.t0 - self.paused_seconds

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.bar is not None:
            self.bar.close()

    @property
    def train_seconds(self) -> float:
        return self.history["time"][-1] if self.history["time"] else 0.0

    def finish(self, model: torch.nn.Module, config: dict) -> None:
        """Export ``model`` to ``OUT/model`` (+ ``train_config.json``) and write ``history.json``."""
        model.save_pretrained(self.out / "model")
        (self.out / "model" / "train_config.json").write_text(json.dumps(config, indent=2))
        (self.out / "history.json").write_text(json.dumps(self.history))

"""The training loop every recipe shares: :class:`Trainer` runs a recipe's ``step(i) -> (loss, scalars)``
with the update (lr schedule, clipping, EMA), resume from ``OUT/checkpoint.pt``, atomic checkpoints, the
JSON log, the progress bar, the time budget, sample grids and Ctrl-C. Used by every step-based trainer:
images, points, flow matching and MeanFlow, Drift-RAE distillation, policies.
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
from .interrupt import stop_on_sigint
from .schedules import training_progress


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

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """``scalars``' keys ``"<group>/V2@<tau>"`` (the raw ||V||^2 per feature group and temperature) go
        under ``V2_groups`` (absent when there are none), the others on the line itself."""
        groups = {k: round(v, 6) for k, v in scalars.items() if "/V2@" in k}
        line = {"step": step, **{k: v for k, v in scalars.items() if "/V2@" not in k},
                **({"V2_groups": groups} if groups else {})}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in line.items():
                if k not in ("step", "V2_groups"):
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


class Trainer:
    """One training run: the loop every recipe shares, around the recipe's own step.

    The recipe supplies the model, its optimizer and ``step(i) -> (loss, scalars)``: the forward pass of
    step ``i`` on the batch it draws from ``(seed, i)``. The Trainer owns everything else:

    - **the update**: the learning rate ``lr_at(i, progress)`` (``progress`` in [0, 1] follows the step count,
      or the clock when a ``minutes`` budget is set), backward, gradient clipping at ``grad_clip`` (<= 0:
      none), the optimizer step and the ``ema`` update;
    - **resume**: ``parts`` (``{name: object with state_dict() / load_state_dict()}``: a data sampler, a
      queue) are checkpointed beside the model, optimizer and EMA, with the JSON-able ``config``, which a
      resumed checkpoint must match; ``defaults`` are the config's default values (a checkpoint written
      before a field existed lacks it and is read as holding the default, so adding an option does not
      orphan old runs). With ``resume`` an existing ``OUT/checkpoint.pt`` of the same ``kind`` and config is
      continued (``self.start`` is its step); without, it is deleted, so that a crash before the first save
      cannot resume the old run. Log lines after ``self.start`` are dropped (a resumed run rewrites them).
    - **atomic checkpoints** every ``ckpt_every`` steps, at the last step and on Ctrl-C (the step finishes
      first); a non-finite loss raises before the update, naming the last good checkpoint;
    - **the log**: every ``log_every`` steps one line of ``OUT/log.jsonl`` (loss, lr, grad norm, time and the
      step's ``scalars``; keys ``"<group>/V2@<tau>"`` go under ``V2_groups``), the ``history`` (step, loss,
      time and the scalars named in ``history_keys``) and the progress bar (loss and ``show``'s scalars);
    - **the time budget**: ``minutes`` of training (sample grids and :meth:`paused` blocks excluded, earlier
      sessions of a resumed run included); the first step to end past it is the run's last;
    - **sample grids** ``OUT/samples_<step>.png`` every ``sample_every`` steps through ``sample(path)``;
    - **several processes**: ``comm`` (:mod:`drifting.distributed`) averages the logged loss over the ranks
      and makes them stop together (Ctrl-C on any rank, rank 0's clock); ranks with ``main`` False read the
      checkpoint and write nothing. With ``out`` None nothing is written at all.

    ``model`` is what the gradient clipping and the EMA see (the unwrapped module under DDP).
    """

    def __init__(self, out: str | Path | None, kind: str, config: dict, model: torch.nn.Module,
                 opt: torch.optim.Optimizer, *, steps: int, resume: bool, progress: bool, desc: str,
                 lr_at: Callable[[int, float], float] | None = None, grad_clip: float = 0.0, ema=None,
                 parts: Mapping[str, object] | None = None, defaults: dict | None = None,
                 minutes: float | None = None, log_every: int = 100, ckpt_every: int = 1000,
                 sample_every: int = 0, sample: Callable[[Path], None] | None = None,
                 history_keys: tuple[str, ...] = (), show: tuple[str, ...] = ("V2",), main: bool = True,
                 comm=None, tensorboard: bool = False):
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes must be None or > 0, got {minutes!r}")
        self.out = Path(out) if out is not None else None
        self.kind, self.config, self.steps, self.minutes = kind, config, steps, minutes
        self.model, self.opt, self.ema, self.lr_at, self.grad_clip = model, opt, ema, lr_at, grad_clip
        self.parts = {"model": model, "optimizer": opt, **({"ema": ema} if ema is not None else {}),
                      **(parts or {})}
        self.log_every, self.ckpt_every = log_every, ckpt_every
        self.sample_every, self.sample = sample_every, sample
        self.history_keys, self.show, self.comm = history_keys, show, comm
        # False on ranks > 0 of a multi-process run, and without an output folder: nothing is written
        self.main = main
        self.writes = main and self.out is not None
        self.ckpt = self.out / "checkpoint.pt" if self.out is not None else None
        self.history: dict = {"step": [], "loss": [], "time": [], **{k: [] for k in history_keys}}
        self.start = 0
        if resume and self.ckpt is not None and self.ckpt.is_file():
            self._load(defaults)
        elif not resume and self.writes:
            self.ckpt.unlink(missing_ok=True)
        if self.writes:
            truncate_log(self.out / "log.jsonl", self.start)
        self.log = JsonlLogger(self.out, tensorboard) if self.writes else None
        self.bar = progress_bar(steps, desc, progress and main, initial=self.start)
        self.paused_seconds = 0.0  # seconds of sample grids and evaluations, left out of the training time
        self.t0 = time.perf_counter() - self.train_seconds

    def _load(self, defaults: dict | None) -> None:
        state = load_state(self.ckpt)
        known = {k: v for k, v in (defaults or {}).items() if k in self.config}
        if state.get("kind", self.kind) != self.kind or fill_defaults(state["config"], known) != self.config:
            raise ValueError(f"{self.ckpt} was written by another run or with a different configuration; use "
                             "a new --out, or --no-resume to start over there")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        self.history = json.loads(state["history"])
        self.start = int(state["step"])

    # ------------------------------------------------------------------ the loop
    def fit(self, step: Callable[[int], tuple[torch.Tensor, dict]],
            after: Callable[[int, bool], None] | None = None) -> None:
        """Run steps ``self.start .. steps - 1`` (or until the time budget): ``loss, scalars = step(i)``, the
        update, then the bookkeeping of step ``i + 1``; ``after(done, last)`` runs before its checkpoint (a
        snapshot export, a learning-curve point: wrap evaluations in :meth:`paused`)."""
        if self.start > 0 and self.out_of_time():  # a finished run resumed: its budget was spent
            self.close()
            return
        try:
            with stop_on_sigint() as interrupted:
                for i in range(self.start, self.steps):
                    lr = self.set_lr(i)
                    loss, scalars = step(i)
                    loss_all = loss.detach() if self.comm is None else self.comm.mean(loss)  # the 1-rank loss
                    self.check_loss(loss_all, i)
                    gnorm = optimizer_step(self.model, self.opt, loss, self.grad_clip, self.ema)
                    if self.comm is not None:  # stop together when any rank saw Ctrl-C
                        flag = torch.tensor(float(interrupted["flag"]))
                        interrupted["flag"] = bool(self.comm.sum(flag) > 0)
                    scalars = {**({} if lr is None else {"lr": lr}), "grad_norm": gnorm, **scalars}
                    if self.end_step(i + 1, loss_all, scalars, interrupted=interrupted["flag"], after=after):
                        break
        finally:
            self.close()

    def set_lr(self, i: int) -> float | None:
        """Set the learning rate of step ``i`` (``lr_at(i, progress)``) on every parameter group."""
        if self.lr_at is None:
            return None
        lr = self.lr_at(i, training_progress(i, self.steps, self.elapsed(), self.minutes))
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def check_loss(self, loss: torch.Tensor, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}; the last good checkpoint is "
                                     f"{self.ckpt} (resume it, e.g. with a lower --lr)")

    def out_of_time(self) -> bool:
        """Whether the ``minutes`` budget is spent (several processes follow rank 0's clock)."""
        if self.minutes is None:
            return False
        over = self.main and self.elapsed() >= 60.0 * self.minutes
        if self.comm is None:
            return over
        return bool(self.comm.sum(torch.tensor(float(over))) > 0)

    def end_step(self, done: int, loss, scalars: dict, *, interrupted: bool = False,
                 after: Callable[[int, bool], None] | None = None) -> bool:
        """After step ``done`` (1-based): log, advance the bar, write ``samples_<done>.png``, run ``after``,
        checkpoint; on ``interrupted`` save and raise KeyboardInterrupt. Returns whether this was the run's
        last step (``done == steps``, or the time budget is spent): the caller then stops."""
        last = done == self.steps or self.out_of_time()
        if done % self.log_every == 0 or last:
            self._record(done, float(loss), {k: float(v) for k, v in scalars.items()})
        if self.bar is not None:
            self.bar.update(1)
        if self.sample is not None and self.sample_every and done % self.sample_every == 0 and self.writes:
            with self.paused():
                self.sample(self.out / f"samples_{done:06d}.png")
        if after is not None:
            after(done, last)
        if done % self.ckpt_every == 0 or last or interrupted:
            self.save(done)
        if interrupted:
            raise KeyboardInterrupt(f"interrupted after step {done}; run again with the same --out to resume")
        return last

    def _record(self, done: int, loss: float, scalars: dict[str, float]) -> None:
        self.history["step"].append(done)
        self.history["loss"].append(loss)
        self.history["time"].append(self.elapsed())
        for k in self.history_keys:
            self.history[k].append(scalars[k])
        if self.log is not None:
            self.log.write(done, {"loss": loss, **scalars, "time": self.history["time"][-1]})
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{loss:.4g}", **{k: f"{scalars[k]:.3g}" for k in self.show
                                                           if k in scalars}})

    def save(self, step: int) -> None:
        if not self.writes:
            return
        save_state(self.ckpt, {"kind": self.kind, "step": step, "config": self.config,
                               "history": json.dumps(self.history),
                               **{name: part.state_dict() for name, part in self.parts.items()}})

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
            self.log = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @property
    def train_seconds(self) -> float:
        return self.history["time"][-1] if self.history["time"] else 0.0

    @property
    def steps_done(self) -> int:
        return self.history["step"][-1] if self.history["step"] else self.start

    def finish(self, model: torch.nn.Module, config: dict) -> None:
        """Export ``model`` to ``OUT/model`` (+ ``train_config.json``) and write ``history.json``."""
        model.save_pretrained(self.out / "model")
        (self.out / "model" / "train_config.json").write_text(json.dumps(config, indent=2))
        (self.out / "history.json").write_text(json.dumps(self.history))

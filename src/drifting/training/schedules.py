"""Learning-rate schedules shared by the trainers."""

from __future__ import annotations


def warmup_lr(base: float, step: int, warmup: int, *, decay: float = 0.0,
              progress: float | None = None) -> float:
    """Linear warm-up over ``warmup`` steps, ``base * min(1, (step + 1) / warmup)`` (0-based step), then
    constant; with ``decay > 0`` the last ``decay`` fraction of training ramps it linearly down to 0.

    ``progress`` in [0, 1] is how much of the training is done (the step over the total, or the time spent
    over a time budget); it is needed when ``decay > 0``. The factor is ``min(1, (1 - progress) / decay)``.
    """
    lr = base * min(1.0, (step + 1) / max(1, warmup))
    if decay > 0:
        if progress is None:
            raise ValueError("progress: needed with decay > 0 (the fraction of training done)")
        lr *= min(1.0, max(0.0, 1.0 - progress) / decay)
    return lr


def training_progress(step: int, steps: int, elapsed: float = 0.0, minutes: float | None = None) -> float:
    """The fraction of training done before ``step`` (0-based): of the ``steps``, or of the time budget
    (``elapsed`` seconds of ``minutes``) if that ends sooner; capped at 1. The ``progress`` of
    :func:`warmup_lr` for a run that may end on either."""
    done = step / steps
    if minutes is not None:
        done = max(done, elapsed / (60.0 * minutes))
    return min(done, 1.0)


def linear_decay_lr(step: int, base: float = 3e-5, final: float = 3e-7, total: int = 10_000) -> float:
    """Drift-RAE Table 8: ``max(final, base - (base - final) / total * t)`` at step ``t`` (0-based):
    ``base`` at t = 0, ``final`` from t = ``total`` on."""
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    return max(final, base - (base - final) / total * step)

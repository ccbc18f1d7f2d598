"""Learning-rate schedules: the warm-up and Drift-RAE Table 8's linear decay."""

import pytest

from drifting.training.schedules import linear_decay_lr, training_progress, warmup_lr


def test_warmup_lr():
    assert warmup_lr(1.0, 0, 4) == 0.25 and warmup_lr(1.0, 3, 4) == 1.0 and warmup_lr(1.0, 100, 4) == 1.0
    # the last 20% decays linearly to 0
    assert warmup_lr(2.0, 50, 4, decay=0.2, progress=0.5) == 2.0
    assert warmup_lr(2.0, 90, 4, decay=0.2, progress=0.9) == pytest.approx(1.0)
    assert warmup_lr(2.0, 99, 4, decay=0.2, progress=1.0) == 0.0
    with pytest.raises(ValueError, match="progress"):
        warmup_lr(1.0, 5, 4, decay=0.2)
    assert warmup_lr(2.0, 0, 0) == 2.0  # no warm-up


def test_linear_decay_matches_table8():
    base, final, T = 3e-5, 3e-7, 10_000
    assert linear_decay_lr(0) == base
    assert linear_decay_lr(T // 2) == pytest.approx((base + final) / 2, rel=1e-12)
    assert linear_decay_lr(T) == pytest.approx(final, rel=1e-12) and linear_decay_lr(3 * T) == final
    assert linear_decay_lr(1234) == pytest.approx(max(final, base - (base - final) / T * 1234), rel=1e-15)
    with pytest.raises(ValueError, match="total"):
        linear_decay_lr(0, total=0)


def test_training_progress_follows_the_steps_or_the_clock_whichever_ends_first():
    assert training_progress(25, 100) == 0.25  # no time budget: the steps
    assert training_progress(25, 100, elapsed=30.0, minutes=1.0) == 0.5  # the clock is ahead
    assert training_progress(75, 100, elapsed=30.0, minutes=1.0) == 0.75  # the steps are ahead
    assert training_progress(10, 100, elapsed=600.0, minutes=1.0) == 1.0  # capped past the budget

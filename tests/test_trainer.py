"""The shared training loop (:class:`drifting.training.loop.Trainer`) on a tiny regression: the update, the
schedule, resume, the log, the time budget, a non-finite loss, and the hooks' order."""

import json

import pytest
import torch

from drifting.training.checkpoint import load_state
from drifting.training.ema import EMA
from drifting.training.loop import Trainer
from drifting.training.rng import step_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(out, steps=12, *, resume=False, step_fn=None, **kw):
    """A 3 -> 1 linear regression trained by a Trainer; returns (trainer, model, ema)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    ema = EMA(model, (0.9,))
    w_true = torch.tensor([[1.0, -2.0, 0.5]])

    def step(i):
        g = step_generator(0, i)
        x = torch.randn(16, 3, generator=g)  # [B, 3]
        loss = ((model(x) - x @ w_true.T) ** 2).mean()
        return loss, {"V2": 2 * loss.detach()}

    opts = dict(steps=steps, resume=resume, progress=False, desc="test", lr_at=lambda i, p: 0.3 * (1 - p),
                grad_clip=1.0, ema=ema, log_every=2, ckpt_every=4, history_keys=("V2",))
    opts.update(kw)
    run = Trainer(out, "test", {"lr": 0.1}, model, opt, **opts)
    run.fit(step_fn(step) if step_fn else step)
    return run, model, ema


def test_the_loop_updates_logs_and_checkpoints(tmp_path):
    run, model, _ = _run(tmp_path)
    assert run.history["step"] == [2, 4, 6, 8, 10, 12]
    assert run.history["loss"][-1] < run.history["loss"][0] / 2  # it learns
    assert run.history["V2"] == pytest.approx([2 * v for v in run.history["loss"]])
    lines = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4, 6, 8, 10, 12]
    # the schedule lr_at(i, progress): progress i / steps, so the lr of step 11 is 0.3 * (1 - 11/12)
    assert lines[-1]["lr"] == pytest.approx(0.3 / 12)
    assert {"loss", "lr", "grad_norm", "time", "V2"} <= set(lines[-1])
    state = load_state(tmp_path / "checkpoint.pt")
    assert state["step"] == 12 and state["kind"] == "test"
    assert torch.equal(state["model"]["weight"], model.weight.detach())


def test_a_crash_resumes_to_the_uninterrupted_weights(tmp_path, crash_at, flat_tensors):
    ref, ref_model, ref_ema = _run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "crash", step_fn=lambda s: crash_at(s, 7))  # dies in step 6; checkpoint at 4
    assert load_state(tmp_path / "crash" / "checkpoint.pt")["step"] == 4
    run, model, ema = _run(tmp_path / "crash", resume=True)
    assert run.start == 4
    a = flat_tensors(load_state(tmp_path / "ref" / "checkpoint.pt"))
    b = flat_tensors(load_state(tmp_path / "crash" / "checkpoint.pt"))
    assert a.keys() == b.keys() and "model/weight" in a and any(k.startswith("ema/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert run.history["step"] == ref.history["step"] and run.history["loss"] == ref.history["loss"]
    lines = (tmp_path / "crash" / "log.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [2, 4, 6, 8, 10, 12]  # no step logged twice


def test_a_checkpoint_from_before_an_option_existed_resumes_at_its_default(tmp_path):
    """``defaults``: a stored config lacking a field resumes when the run uses the field's default, and is
    refused when it does not."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    old = Trainer(tmp_path, "policy", {"lr": 0.1}, model, opt, steps=3, resume=False, progress=False,
                  desc="x")
    old.save(2)
    old.close()
    run = Trainer(tmp_path, "policy", {"lr": 0.1, "n_pos": 1}, model, opt, steps=3, resume=True,
                  progress=False, desc="x", defaults={"lr": 0.5, "n_pos": 1})
    assert run.start == 2
    run.close()
    with pytest.raises(ValueError, match="another run or with a different configuration"):
        Trainer(tmp_path, "policy", {"lr": 0.1, "n_pos": 3}, model, opt, steps=3, resume=True,
                progress=False, desc="x", defaults={"lr": 0.5, "n_pos": 1})
    with pytest.raises(ValueError, match="another run"):  # another kind of run
        Trainer(tmp_path, "flow", {"lr": 0.1}, model, opt, steps=3, resume=True, progress=False, desc="x")


def test_a_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint(tmp_path):
    def poisoned(step):
        def s(i):
            loss, sc = step(i)
            return (loss * float("nan") if i == 5 else loss), sc
        return s

    with pytest.raises(FloatingPointError, match="non-finite loss at step 5.*checkpoint.pt"):
        _run(tmp_path, step_fn=poisoned)
    state = load_state(tmp_path / "checkpoint.pt")
    assert state["step"] == 4 and torch.isfinite(state["model"]["weight"]).all()


def test_the_time_budget_ends_the_run_with_a_checkpoint(tmp_path):
    import time

    def slow(step):
        def s(i):
            time.sleep(0.05)
            return step(i)
        return s

    run, _, _ = _run(tmp_path, steps=1000, minutes=0.3 / 60, step_fn=slow)
    done = run.history["step"][-1]
    assert 3 <= done < 20  # the first step to end past 0.3 s is the last
    assert load_state(tmp_path / "checkpoint.pt")["step"] == done
    # the schedule followed the clock: the last step's lr is near the end of the decay, not at 1 - done/1000
    last_lr = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["lr"]
    assert last_lr < 0.3 * 0.5


def test_hooks_run_before_the_checkpoint_and_nothing_is_written_without_out(tmp_path):
    seen = []
    state_steps = []

    def after(done, last):
        seen.append((done, last))
        ck = tmp_path / "checkpoint.pt"
        state_steps.append(load_state(ck)["step"] if ck.is_file() else 0)

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = Trainer(tmp_path, "t", {}, model, opt, steps=5, resume=False, progress=False, desc="x",
                  ckpt_every=2)
    run.fit(lambda i: ((model(torch.ones(1, 2)) ** 2).sum(), {}), after=after)
    assert seen == [(1, False), (2, False), (3, False), (4, False), (5, True)]
    assert state_steps == [0, 0, 2, 2, 4]  # step d's hook sees the checkpoint of before d

    quiet = tmp_path / "quiet"
    run = Trainer(None, "t", {}, model, opt, steps=3, resume=False, progress=False, desc="x")
    run.fit(lambda i: ((model(torch.ones(1, 2)) ** 2).sum(), {}))
    assert run.history["step"] == [3] and not quiet.exists()


def test_a_cache_build_killed_midway_continues_in_its_partial_dir(tmp_path, monkeypatch):
    """cached_dir builds in KEY.partial: a second build after a crash finds what the first left there (a
    trainer's checkpoint), and the finished entry drops the checkpoint."""
    from drifting import cache

    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path))
    seen = []

    def build(d, crash):
        seen.append((d.name, (d / "checkpoint.pt").is_file()))
        d.mkdir(parents=True, exist_ok=True)
        (d / "checkpoint.pt").write_text("step 4")
        if crash:
            raise RuntimeError("killed")
        (d / "model.safetensors").write_text("weights")

    with pytest.raises(RuntimeError, match="killed"):
        cache.cached_dir("mae", "k1", lambda d: build(d, True))
    entry = cache.cached_dir("mae", "k1", lambda d: build(d, False))
    assert seen == [("k1.partial", False), ("k1.partial", True)]  # the second build found the checkpoint
    assert entry == tmp_path / "mae" / "k1" and (entry / ".complete").is_file()
    assert (entry / "model.safetensors").is_file() and not (entry / "checkpoint.pt").exists()
    assert not (tmp_path / "mae" / "k1.partial").exists()
    assert cache.cached_dir("mae", "k1", lambda d: pytest.fail("built again")) == entry
    # rebuild: a fresh partial dir, not the old one's checkpoint
    seen.clear()
    cache.cached_dir("mae", "k1", lambda d: build(d, False), rebuild=True)
    assert seen == [("k1.partial", False)]

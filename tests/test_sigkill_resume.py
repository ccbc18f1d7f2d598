"""Exact resume after SIGKILL (issue 34 item 2): each kind of run starts as a ``drifting`` command in a
subprocess, is killed with SIGKILL right after its first checkpoint, is resumed with the command's resume
flag, and must end with the weights, EMA and optimizer state of an uninterrupted run, bit for bit."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from drifting.cli import main
from drifting.training.checkpoint import load_state

pytestmark = pytest.mark.slow


def kill_after_first_checkpoint(argv: list[str], out, timeout_s: float = 300.0) -> int:
    """Run ``drifting ARGV`` in a subprocess, SIGKILL it as soon as ``out/checkpoint.pt`` exists (written
    atomically, so it is whole), and return the checkpoint's step."""
    proc = subprocess.Popen([sys.executable, "-m", "drifting.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    t0 = time.monotonic()
    try:
        while not ckpt.exists():
            if proc.poll() is not None:
                pytest.fail(f"drifting {argv[0]} ended (rc {proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() - t0 > timeout_s:
                pytest.fail(f"no checkpoint from drifting {argv[0]} within {timeout_s} s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: give it more steps"
    return int(load_state(ckpt)["step"])


def assert_same_final_state(run_dir, ref_dir, parts, flat) -> None:
    a, b = load_state(run_dir / "checkpoint.pt"), load_state(ref_dir / "checkpoint.pt")
    assert a["step"] == b["step"]
    for part in parts:
        ta, tb = flat(a[part]), flat(b[part])
        assert ta.keys() == tb.keys() and ta, part
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{part}/{k}"


def test_fit_points_resumes_bit_for_bit_after_sigkill(tmp_path, flat_tensors):
    # 1200 steps: checkpoints at 500 and 1000 (fit-points' ckpt_every), the kill right after the first
    args = ["moons", "--steps", "1200", "--batch", "32", "--n-pos", "32", "--samples", "200", "--no-progress",
            "--threads", "1"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert main(["fit-points", *args, "--out", str(ref)]) == 0
    assert kill_after_first_checkpoint(["fit-points", *args, "--out", str(run)], run) == 500
    assert main(["fit-points", *args, "--out", str(run), "--resume"]) == 0
    assert_same_final_state(run, ref, ("model", "optimizer"), flat_tensors)
    assert np.array_equal(np.load(run / "samples.npy"), np.load(ref / "samples.npy"))


def test_image_training_resumes_bit_for_bit_after_sigkill(tmp_path, tiny_data, flat_tensors):
    # cpu-tiny checkpoints every 10 steps; the reference run pre-trains the MAE both runs then share (cache)
    args = ["--preset", "cpu-tiny", "--data", tiny_data, "--steps", "40", "--eval-samples", "0",
            "--no-progress", "--threads", "1"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert main(["train", *args, "--out", str(ref)]) == 0
    assert 0 < kill_after_first_checkpoint(["train", *args, "--out", str(run)], run) < 40
    assert main(["train", *args, "--out", str(run), "--resume"]) == 0
    state = load_state(ref / "checkpoint.pt")
    parts = [k for k in ("generator", "model", "ema", "optimizer") if k in state]
    assert "optimizer" in parts and len(parts) >= 3, sorted(state)
    assert_same_final_state(run, ref, parts, flat_tensors)


def test_flow_training_resumes_bit_for_bit_after_sigkill(tmp_path, tiny_data, flat_tensors):
    # train-flow checkpoints every 250 steps and resumes by default when OUT/checkpoint.pt exists
    args = ["--data", tiny_data, "--generator", "cpu-tiny", "--hidden", "32", "--depth", "1",
            "--patch-size", "7", "--steps", "600", "--batch", "8", "--warmup", "2", "--sample-steps", "1",
            "--no-progress", "--threads", "1"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert main(["train-flow", *args, "--out", str(ref)]) == 0
    assert kill_after_first_checkpoint(["train-flow", *args, "--out", str(run)], run) == 250
    assert main(["train-flow", *args, "--out", str(run)]) == 0
    assert_same_final_state(run, ref, ("model", "ema", "optimizer"), flat_tensors)

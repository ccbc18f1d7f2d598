"""Exact resume after SIGKILL (issue 34 item 2): each kind of run starts as a ``drifting`` command in a
subprocess, is killed with SIGKILL right after its first checkpoint, is run again with the same command (a
run continues OUT/checkpoint.pt by default; ``--resume`` insists on it), and must end with the weights, EMA
and optimizer state of an uninterrupted run, bit for bit."""

import os
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


def kill_after_first_checkpoint(argv: list[str], out, timeout_s: float = 300.0, *,
                                python: list[str] | None = None, env: dict | None = None) -> int:
    """Run ``drifting ARGV`` (or ``python PYTHON``) in a subprocess, SIGKILL it as soon as
    ``out/checkpoint.pt`` exists (written atomically, so it is whole), and return the checkpoint's step."""
    cmd = [sys.executable, *python] if python else [sys.executable, "-m", "drifting.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=None if env is None else {**os.environ, **env})
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
    assert main(["fit-points", *args, "--out", str(run)]) == 0  # the same command continues the checkpoint
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


def test_mae_rae_and_vae_training_resume_bit_for_bit_after_sigkill(tmp_path, tiny_data, flat_tensors):
    # the encoder's pre-training (checkpoints every 100 steps here), then the RAE decoder on that encoder and
    # the VAE (every 50 steps here): each killed after its first checkpoint and run again
    mae = ["train-mae", "--data", tiny_data, "--preset", "cpu-tiny", "--steps", "150", "--batch", "16",
           "--no-progress", "--threads", "1"]
    rae = ["train-rae", "--data", tiny_data, "--mae-dir", str(tmp_path / "mae_ref"), "--steps", "70",
           "--batch", "8", "--decoder-width", "16", "--no-progress", "--threads", "1"]
    vae = ["train-vae", "--data", tiny_data, "--latent-channels", "2", "--steps", "70", "--batch", "8",
           "--no-progress", "--threads", "1"]
    for name, args, first in (("mae", mae, 100), ("rae", rae, 50), ("vae", vae, 50)):
        run, ref = tmp_path / f"{name}_run", tmp_path / f"{name}_ref"
        assert main([*args, "--out", str(ref)]) == 0
        assert kill_after_first_checkpoint([*args, "--out", str(run)], run) == first, name
        assert main([*args, "--out", str(run), "--resume"]) == 0
        assert_same_final_state(run, ref, ("model", "ema", "optimizer"), flat_tensors)


def test_the_metrics_classifier_resumes_bit_for_bit_after_sigkill(tmp_path, tiny_data, flat_tensors):
    # train_classifier checkpoints its one stream of random draws with the weights (every 100 steps here)
    script = ("import sys, torch; from drifting.data.images import load_dataset; "
              "from drifting.recipes.classify import train_classifier; torch.set_num_threads(1); "
              "train_classifier(load_dataset(sys.argv[1], 'train'), steps=150, batch=16, out=sys.argv[2])")
    run, ref = tmp_path / "run", tmp_path / "ref"
    for out in (ref, run):
        if out == run:
            assert kill_after_first_checkpoint([], run, python=["-c", script, tiny_data, str(run)]) == 100
        done = subprocess.run([sys.executable, "-c", script, tiny_data, str(out)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert_same_final_state(run, ref, ("model", "optimizer", "rng"), flat_tensors)


def test_distillation_resumes_bit_for_bit_after_sigkill(tmp_path, tiny_data, flat_tensors):
    # Drift-RAE distillation of a tiny flow teacher, checkpoints every 15 steps here
    from drifting.recipes.flow import FlowTrainConfig, train_flow

    teacher = train_flow(FlowTrainConfig(
        data=tiny_data, generator="cpu-tiny", steps=4, batch=8, warmup=2, ema_warmup=0, ema_decays=(0.5,),
        generator_overrides=dict(hidden=32, depth=1, heads=2, patch_size=7, in_context_tokens=2),
        sample_every=100, sample_steps=1), tmp_path / "teacher", progress=False)["model_dir"]
    args = ["distill", "--teacher", teacher, "--data", tiny_data, "--preset", "B", "--steps", "40",
            "--ckpt-every", "15", "--classes-per-step", "2", "--n-pos", "3", "--n-neg", "2",
            "--n-extra-neg", "1", "--temperatures", "0.05,0.2", "--no-progress", "--threads", "1"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    assert kill_after_first_checkpoint([*args, "--out", str(run)], run) == 15
    assert main([*args, "--out", str(run)]) == 0
    assert_same_final_state(run, ref, ("model", "ema", "optimizer"), flat_tensors)

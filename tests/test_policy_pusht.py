"""PushT specifics of the policy study: observation features that never wrap (keypoints, sin/cos),
the imitable chunk expert (a deterministic function of the observation at each 8-step boundary,
clean actions recorded under execution noise), the regression baseline, and a policy run killed
with SIGKILL that resumes to the same weights as an uninterrupted one."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from drifting.policy.envs import make_env
from drifting.policy.experts import (
    PushTChunkExpert,
    PushTChunkExpertConfig,
    check_expert,
    make_expert,
    run_expert_episode,
)
from drifting.policy.obs import T_OUTLINE, check_obs_features, feature_dim, obs_features
from drifting.policy.policies import PolicyConfig, RegressionPolicy, build_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_keypoints_are_the_blocks_world_vertices():
    """The keypoint features equal pymunk's own world coordinates of the T's shape vertices."""
    env = make_env("pusht")
    for seed in (0, 5):
        obs, _ = env.reset(seed=seed)
        f = obs_features(torch.as_tensor(obs, dtype=torch.float64)[None], "keypoints")[0].numpy()
        assert f.shape == (feature_dim(5, "keypoints"),) == (18,)
        np.testing.assert_allclose(f[:2], obs[:2])
        block = env.unwrapped.block
        world = {tuple(np.round(block.local_to_world(v), 3)) for s in block.shapes for v in s.get_vertices()}
        mine = {tuple(np.round(p, 3)) for p in f[2:].reshape(-1, 2)}
        assert mine == world and len(mine) == len(T_OUTLINE)
    env.close()


def test_features_do_not_jump_where_the_angle_wraps():
    """Raw PushT observations jump by 2 pi when the block turns through 0; sincos and keypoints are
    continuous there and agree for angles 2 pi apart."""
    a = torch.tensor([[100.0, 200.0, 250.0, 260.0, 2 * math.pi - 1e-4], [100.0, 200.0, 250.0, 260.0, 1e-4]])
    for mode in ("sincos", "keypoints"):
        f = obs_features(a, mode)
        assert (f[0] - f[1]).abs().max() < 0.05, mode  # a 2e-4 rad turn moves nothing far
        shifted = obs_features(a + torch.tensor([0, 0, 0, 0, 2 * math.pi]), mode)
        torch.testing.assert_close(shifted, f, atol=1e-3, rtol=0)
    assert (obs_features(a, "raw")[0] - obs_features(a, "raw")[1]).abs().max() > 6
    s = obs_features(a, "sincos")
    torch.testing.assert_close(s[:, 4] ** 2 + s[:, 5] ** 2, torch.ones(2))
    with pytest.raises(ValueError, match="obs_features must be one of"):
        obs_features(a, "angles")
    with pytest.raises(ValueError, match="pusht"):
        check_obs_features("lunarlander", "keypoints")


def test_keypoint_policy_conditions_on_the_features():
    cfg = PolicyConfig(kind="regression", obs_dim=5, action_dim=2, horizon=8, n_action_steps=4,
                       down_dims=(8, 16), obs_features="keypoints")
    pol = build_policy(cfg)
    assert pol.model.config.cond_dim == 2 * 18
    out = pol.predict_action(np.zeros((3, 2, 5), np.float32))
    assert out.shape == (3, 4, 2)
    with pytest.raises(ValueError, match="obs_norm has 5 dimensions"):
        from drifting.policy.data import Normalizer

        build_policy(cfg, Normalizer(5))


def test_regression_policy_is_deterministic_l2():
    torch.manual_seed(0)
    cfg = PolicyConfig(kind="regression", obs_dim=5, action_dim=2, horizon=8, n_action_steps=4,
                       down_dims=(8, 16))
    pol = build_policy(cfg)
    assert isinstance(pol, RegressionPolicy) and cfg.nfe == 1 and pol.model.config.time_embed_dim == 0
    obs = torch.randn(4, 2, 5)
    a1 = pol.predict_action(obs, generator=torch.Generator().manual_seed(1))
    a2 = pol.predict_action(obs, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(a1, a2)  # no noise input
    act = torch.randn(4, 8, 2)
    loss, _ = pol.compute_loss({"obs": obs, "action": act})
    expected = (pol.sample(pol._cond(obs)) - pol.action_norm.normalize(act)).square().mean()
    torch.testing.assert_close(loss, expected)


def test_chunk_expert_is_a_function_of_the_observation_at_each_boundary():
    """Two experts (other seeds, other histories) plan the same chunk from the same observation; in a
    recorded episode every 8-step block of actions is the plan of the observation at its start, and the
    executed (noisy) targets are not the recorded ones."""
    assert check_expert("pusht", None) == "chunk"
    with pytest.raises(ValueError, match="expert for 'pusht' must be one of"):
        check_expert("pusht", "human")
    env = make_env("pusht")
    ex = make_expert("pusht", 0)
    assert isinstance(ex, PushTChunkExpert)
    obs, act, score = run_expert_episode("pusht", env, ex, seed=21)
    fresh = PushTChunkExpert(PushTChunkExpertConfig(), seed=99)
    n_chunks = min(3, len(obs) // 8)
    assert n_chunks >= 2
    for c in reversed(range(n_chunks)):  # out of order: no state carries over between plans
        np.testing.assert_array_equal(fresh.plan_chunk(obs[8 * c]), act[8 * c: 8 * c + 8])
    # the next observation is not where a noise-free step would lead: compare with a clean replay
    clean = PushTChunkExpert(PushTChunkExpertConfig(execution_noise=0.0), seed=0)
    obs_clean, _, _ = run_expert_episode("pusht", env, clean, seed=21)
    assert not np.array_equal(obs_clean[:8], obs[:8])
    np.testing.assert_array_equal(obs_clean[0], obs[0])
    env.close()


def _train_args(out, steps: int) -> list[str]:
    return ["policy", "train", "--env", "lunarlander", "--out", str(out), "--demos", "2",
            "--steps", str(steps),
            "--batch", "8", "--ckpt-every", "5", "--snapshots", "1", "--eval-episodes", "1",
            "--eval-max-steps", "5", "--n-gen", "4", "--horizon", "8", "--n-action-steps", "4",
            "--no-progress", "--threads", "1"]


@pytest.mark.slow
def test_policy_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    """A `policy train` process killed with SIGKILL after a checkpoint and run again with the same --out
    ends with bit-identical weights (model and EMA) to an uninterrupted run."""
    from drifting.cli import main
    from drifting.policy.experts import cached_demos
    from drifting.training.checkpoint import load_state

    cached_demos("lunarlander", 2, 0)  # the subprocess reads the demos from the (test-private) cache
    steps = 120
    whole = tmp_path / "whole"
    assert main(_train_args(whole, steps)) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "drifting.cli", *_train_args(killed, steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "checkpoint.pt"
    t0 = time.time()
    while not ckpt.is_file() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    time.sleep(0.3)  # a few more steps, maybe a second checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    stopped = int(load_state(ckpt)["step"])
    assert 0 < stopped < steps
    assert main(_train_args(killed, steps)) == 0
    a, b = load_state(whole / "checkpoint.pt"), load_state(killed / "checkpoint.pt")
    assert a["step"] == b["step"] == steps
    for part in ("model", "ema"):
        sa, sb = a[part], b[part]
        flat_a = {k: v for k, v in _flatten(sa)}
        flat_b = {k: v for k, v in _flatten(sb)}
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]), (part, k, stopped)
    log = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == sorted({r["step"] for r in log})  # no step logged twice


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(d, torch.Tensor):
        yield prefix, d


@pytest.mark.slow
def test_minutes_budget_ends_a_run_and_a_resume_extends_it(tmp_path):
    """--minutes stops a run at its budget; the same --out with more --steps continues from there."""
    from drifting.recipes.policy import PolicyTrainConfig, train_policy

    kw = dict(env="lunarlander", demos=2, batch=8, ckpt_every=2, snapshots=1, eval_episodes=1,
              eval_max_steps=5, n_gen=4, horizon=8, n_action_steps=4, log_every=1)
    m = train_policy(PolicyTrainConfig(steps=10_000, minutes=0.02, **kw), tmp_path, progress=False)
    assert 2 <= m["steps"] < 10_000
    m2 = train_policy(PolicyTrainConfig(steps=m["steps"] + 4, **kw), tmp_path, progress=False)
    assert m2["steps"] == m["steps"] + 4
    log = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, m["steps"] + 5))
    with pytest.raises(ValueError, match="minutes must be"):
        PolicyTrainConfig(minutes=-1).validate()


def test_per_timestep_field_is_the_multi_location_loss():
    """--per-timestep: the drifting loss of the [B, N, Tp, act_dim] layout (one field per timestep), which
    differs from the whole-sequence field."""
    from drifting.loss import drifting_loss

    torch.manual_seed(0)
    cfg = PolicyConfig(kind="drifting", obs_dim=5, action_dim=2, horizon=8, n_action_steps=4,
                       down_dims=(8, 16), n_gen=4, per_timestep=True)
    pol = build_policy(cfg)
    b = {"obs": torch.randn(3, 2, 5), "action": torch.randn(3, 8, 2)}
    loss, _ = pol.compute_loss(b, generator=torch.Generator().manual_seed(4))
    cond, target = pol._check_batch(b)
    x = pol.model(pol._noise(12, torch.Generator().manual_seed(4)), cond.repeat_interleave(4, dim=0))
    want, _ = drifting_loss(x.reshape(3, 4, 8, 2), target.reshape(3, 1, 8, 2), temperatures=cfg.temperatures)
    torch.testing.assert_close(loss, want)
    whole, _ = drifting_loss(x.reshape(3, 4, 16), target.reshape(3, 1, 16), temperatures=cfg.temperatures)
    assert not torch.allclose(loss, whole)


def test_pusht_recipe_and_unknown_fields():
    from drifting.recipes.policy import ENV_RECIPES, policy_recipe

    cfg = policy_recipe("pusht").validate()
    assert cfg.obs_features == "keypoints" and cfg.expert is None and cfg.kind == "drifting"
    assert cfg.steps == ENV_RECIPES["pusht"]["steps"] and cfg.down_dims == (32, 64, 128)
    assert policy_recipe("pusht", "diffusion", batch=8).batch == 8
    ll = policy_recipe("lunarlander")
    assert ll.obs_features == "raw" and (ll.n_gen, ll.n_pos, ll.batch) == (4, 4, 16)
    with pytest.raises(ValueError, match="unknown PolicyTrainConfig fields"):
        policy_recipe("pusht", n_samples=3)
    with pytest.raises(ValueError, match="env must be one of"):
        policy_recipe("cartpole")


@pytest.mark.slow
def test_learning_curve_evaluates_every_snapshot_at_its_training_time(tmp_path, capsys):
    from drifting.cli import main

    out = tmp_path / "run"
    args = _train_args(out, 15)
    assert main(args) == 0
    fig = tmp_path / "curve" / "lunar"
    assert main(["policy", "curve", str(out), "--out", str(fig), "--eval-episodes", "1",
                 "--no-progress"]) == 0
    curves = json.loads(fig.with_suffix(".json").read_text())
    pts = curves[0]["points"]
    assert [p["step"] for p in pts] == [5, 10, 15]
    times = [p["train_seconds"] for p in pts]
    assert times == sorted(times) and times[0] > 0
    assert fig.with_suffix(".png").stat().st_size > 1000
    assert "drifting" in capsys.readouterr().out
    # one --every per run: the same run twice, every snapshot and every 2nd (counted back from the last)
    assert main(["policy", "curve", str(out), str(out), "--out", str(fig), "--eval-episodes", "1",
                 "--every", "1", "2", "--no-progress"]) == 0
    two = json.loads(fig.with_suffix(".json").read_text())
    assert [[p["step"] for p in c["points"]] for c in two] == [[5, 10, 15], [5, 15]]
    # an earlier curve's .json is drawn as it was, beside a run (its cached evaluations: no new episode)
    both = tmp_path / "curve" / "both"
    assert main(["policy", "curve", str(fig.with_suffix(".json")), str(out), "--out", str(both),
                 "--eval-episodes", "1", "--no-progress"]) == 0
    assert json.loads(both.with_suffix(".json").read_text()) == two + [two[0]]
    assert main(["policy", "curve", str(out), "--out", str(fig), "--every", "1", "2", "--no-progress"]) == 2
    assert "one per run" in capsys.readouterr().err
    assert main(["policy", "curve", "--no-progress"]) == 2
    assert "needs run directories" in capsys.readouterr().err


def test_a_missing_gymnasium_names_the_extra_to_install():
    """Installed without the policy extra, `drifting policy eval` says which extra to install."""
    code = ("import sys; sys.modules['gymnasium'] = None\n"
            "from drifting.cli import main\n"
            "sys.exit(main(['policy', 'eval', 'nowhere', '--no-progress']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "pip install 'drifting[policy]'" in r.stderr and "gymnasium" in r.stderr


def test_pusht_score_is_clipped_coverage_over_the_threshold():
    from drifting.policy.envs import pusht_score
    from drifting.recipes.policy import expert_score

    assert pusht_score([0.95, 0.475, 1.0]) == pytest.approx((1 + 0.5 + 1) / 3)
    assert pusht_score([]) == 0.0
    assert expert_score("pusht", np.array([0.19, 0.99])) == pytest.approx(0.6)
    assert expert_score("lunarlander", np.array([100.0, 300.0])) == 200.0

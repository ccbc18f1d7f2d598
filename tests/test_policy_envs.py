"""Policy-study environments, experts, demos and the batched runner (fast: small episode counts)."""

import numpy as np
import pytest

from drifting.policy.envs import (
    ENV_NAMES,
    env_spec,
    get_state,
    make_env,
    run_episodes,
    set_state,
)
from drifting.policy.experts import Demos, PushTExpert, cached_demos, collect_demos


def test_bad_env_name():
    for fn in (make_env, env_spec):
        with pytest.raises(ValueError, match="pusht, lunarlander"):
            fn("pong")
    with pytest.raises(ValueError, match="allowed values"):
        run_episodes("pong", lambda h: h, 1, seed=0, n_obs_steps=1)


def test_env_spec_matches_envs():
    for name in ENV_NAMES:
        spec = env_spec(name)
        env = make_env(name, seed=0)
        assert env.observation_space.shape == (spec.obs_dim,)
        assert env.action_space.shape == (spec.action_dim,)
        np.testing.assert_allclose(env.action_space.low, spec.action_low)
        np.testing.assert_allclose(env.action_space.high, spec.action_high)
        env.close()


def _pushing_actions(obs, n, seed):
    rng = np.random.default_rng(seed)
    return [np.clip(obs[2:4] + rng.normal(0, 25, 2), 0, 512) for _ in range(n)]  # around the block


def test_pusht_set_state_replays_identically():
    env = make_env("pusht")
    obs, _ = env.reset(seed=3)
    acts = _pushing_actions(obs, 25, seed=0)
    for a in acts[:10]:  # get into contact, so the state has non-trivial velocities
        env.step(a)
    s = get_state(env)
    runs = []
    for _ in range(2):
        set_state(env, s)
        np.testing.assert_allclose(get_state(env), s, rtol=0, atol=1e-9)
        runs.append(np.array([np.r_[env.step(a)[0], get_state(env)] for a in acts[10:]]))
    # into a different env instance too
    other = make_env("pusht")
    other.reset(seed=99)
    set_state(other, s)
    runs.append(np.array([np.r_[other.step(a)[0], get_state(other)] for a in acts[10:]]))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    assert np.abs(runs[0][-1, :5] - runs[0][0, :5]).max() > 1.0  # it did move


def test_pusht_expert_actions_in_bounds():
    env = make_env("pusht")
    env.reset(seed=0)
    ex = PushTExpert()
    ex.reset(seed=0)
    for _ in range(15):
        a = ex.act(env)
        assert a.shape == (2,) and a.dtype == np.float32 and (a >= 0).all() and (a <= 512).all()
        env.step(a)


def _check_demos(d: Demos, name: str):
    spec = env_spec(name)
    assert d.obs.dtype == np.float32 and d.action.dtype == np.float32 and d.episode_ends.dtype == np.int64
    assert d.obs.shape == (d.episode_ends[-1], spec.obs_dim)
    assert d.action.shape == (d.episode_ends[-1], spec.action_dim)
    assert (np.diff(np.r_[0, d.episode_ends]) > 0).all()
    assert d.scores.shape == d.seeds.shape == d.episode_ends.shape
    assert d.stats["n_kept"] == d.n_episodes
    assert d.stats["n_attempted"] == d.all_scores.size


def test_demos_shapes_and_npz_round_trip(tmp_path):
    d = collect_demos("lunarlander", 3, seed=0, threshold=-np.inf)
    _check_demos(d, "lunarlander")
    assert d.n_episodes == 3
    o1, a1 = d.episode(1)
    assert len(o1) == d.episode_ends[1] - d.episode_ends[0]
    # episode 0 starts from the seed-0 reset observation
    env = make_env("lunarlander")
    np.testing.assert_array_equal(d.obs[0], env.reset(seed=0)[0].astype(np.float32))
    path = d.save(tmp_path / "lunar")
    assert path.suffix == ".npz" and path.with_suffix(".json").is_file()
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert set(z.files) >= {"obs", "action", "episode_ends"}
    d2 = Demos.load(path)
    for k in Demos._ARRAYS:
        np.testing.assert_array_equal(getattr(d, k), getattr(d2, k))
    assert d2.stats == d.stats and d2.name == "lunarlander"
    # a threshold nothing reaches keeps no episode but still reports the expert's stats
    none = collect_demos("lunarlander", 1, seed=0, threshold=1e9)
    assert none.n_episodes == 0 and none.obs.shape == (0, 8) and none.stats["n_attempted"] == 1


def test_cached_pusht_demos(tmp_path):
    d = cached_demos("pusht", 1, seed=21, cache_dir=tmp_path, threshold=0.0)  # seed 21 succeeds in ~45 steps
    _check_demos(d, "pusht")
    assert len(list(tmp_path.iterdir())) == 1
    d2 = cached_demos("pusht", 1, seed=21, cache_dir=tmp_path, threshold=0.0)  # a cache hit
    np.testing.assert_array_equal(d.obs, d2.obs)
    np.testing.assert_array_equal(d.action, d2.action)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_run_episodes_trivial_policy(name):
    spec = env_spec(name)
    calls = []
    n_obs, k = 3, 4

    def predict(hist):  # hold the agent where it is (PushT) / engines off (LunarLander)
        calls.append(hist.copy())
        assert hist.dtype == np.float32 and hist.shape[1:] == (n_obs, spec.obs_dim)
        if name == "pusht":
            return np.repeat(hist[:, -1:, :2], k, axis=1)  # [E, k, 2]
        return np.zeros((hist.shape[0], k, 2), np.float32)

    out = run_episodes(name, predict, 2, seed=5, n_obs_steps=n_obs, max_steps=10)
    for key in ("mean_score", "success_rate", "scores", "ms_per_action", "ms_per_predict_call", "n_actions"):
        assert key in out
    assert ("mean_coverage" if name == "pusht" else "mean_return") in out
    assert len(out["scores"]) == 2 and out["episode_lengths"] == [10, 10]
    assert out["n_predict_calls"] == 3 and out["n_actions"] == 20  # 4 + 4 + 2 actions each
    first = calls[0]
    for i in range(2):
        env = make_env(name)
        obs0 = env.reset(seed=5 + i)[0].astype(np.float32)
        np.testing.assert_array_equal(first[i], np.repeat(obs0[None], n_obs, axis=0))  # padded start
    if name == "lunarlander":  # the lander falls: after one chunk the history holds 3 distinct observations
        assert not np.array_equal(calls[1][:, 0], calls[1][:, -1])

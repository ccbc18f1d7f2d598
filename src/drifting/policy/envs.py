"""Offline control environments for the policy study (Diffusion Policy vs Drifting Policy, §5.3).

Two tasks, both state-based and run without network access:

* ``"pusht"``: gym-pusht ``gym_pusht/PushT-v0`` with ``obs_type="state"``.
  obs ``[agent_x, agent_y, block_x, block_y, block_angle]`` (float64 from the env, float32 here),
  action = target position of the agent in ``[0, 512]^2``. Score of an episode = the maximum over
  its steps of the env's ``info["coverage"]`` (fraction of the goal T covered by the block);
  success = that maximum > 0.95 (the env then terminates). At most 300 steps, as Diffusion
  Policy's evaluation.
* ``"lunarlander"``: gymnasium ``LunarLander-v3`` with ``continuous=True`` (needs box2d).
  obs [8], action [2] in ``[-1, 1]``. Score = episode return; success = return >= 200
  (gymnasium's "solved" threshold). At most 1000 steps.

:func:`run_episodes` evaluates a chunking policy ``predict(obs_hist) -> actions`` on ``E`` envs
stepped in lockstep (receding horizon, Diffusion-Policy-style observation history).
:func:`get_state` / :func:`set_state` save and restore the PushT physics exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (imported by gym_pusht) needs no display
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402

POLICY_EXTRA_HINT = "the robot-control tasks need the 'policy' extra: pip install 'drifting[policy]'"

try:
    import gymnasium as gym  # noqa: E402
except ModuleNotFoundError as _e:  # name the extra, not just the missing module
    raise ModuleNotFoundError(f"{_e}; {POLICY_EXTRA_HINT}", name=_e.name) from _e

ENV_NAMES = ("pusht", "lunarlander")

PUSHT_SUCCESS_COVERAGE = 0.95  # success = max coverage > this (gym-pusht's own threshold)
LUNAR_SUCCESS_RETURN = 200.0  # success = return >= this (gymnasium's reward_threshold)


@dataclass(frozen=True)
class EnvSpec:
    """Shapes and limits of one task."""

    name: str
    obs_dim: int
    action_dim: int
    action_low: np.ndarray  # [action_dim] float32
    action_high: np.ndarray  # [action_dim] float32
    max_steps: int
    score_name: str  # "max_coverage" (PushT) or "return" (LunarLander)


def _check_name(name: str) -> str:
    if name not in ENV_NAMES:
        raise ValueError(f"unknown env name {name!r}; allowed values: {', '.join(ENV_NAMES)}")
    return name


def env_spec(name: str) -> EnvSpec:
    """The :class:`EnvSpec` of ``name`` (one of :data:`ENV_NAMES`)."""
    _check_name(name)
    if name == "pusht":
        return EnvSpec("pusht", 5, 2, np.zeros(2, np.float32), np.full(2, 512.0, np.float32), 300,
                       "max_coverage")
    return EnvSpec("lunarlander", 8, 2, -np.ones(2, np.float32), np.ones(2, np.float32), 1000, "return")


def make_env(name: str, seed: int | None = None, *, max_episode_steps: int | None = None) -> gym.Env:
    """A new gymnasium env for ``name`` (one of :data:`ENV_NAMES`).

    ``seed``: if given, the env is reset once with it and its action space seeded, so a later
    ``env.reset()`` without a seed continues a reproducible stream. ``max_episode_steps``
    overrides the TimeLimit (default: :func:`env_spec`'s ``max_steps``).
    """
    spec = env_spec(name)
    steps = max_episode_steps or spec.max_steps
    if name == "pusht":
        try:
            import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"{e}; {POLICY_EXTRA_HINT}", name=e.name) from e

        env = gym.make("gym_pusht/PushT-v0", obs_type="state", max_episode_steps=steps)
    else:
        env = gym.make("LunarLander-v3", continuous=True, max_episode_steps=steps)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# ---------------------------------------------------------------------------------------------
# PushT state save / restore


def get_state(env: gym.Env) -> np.ndarray:
    """The PushT physics state, ``[10] float64``:
    ``[agent_x, agent_y, agent_vx, agent_vy, block_x, block_y, block_angle, block_vx, block_vy,
    block_angular_velocity]`` (block position = its body origin, as in the observation; the angle
    is not wrapped)."""
    u = env.unwrapped
    a, b = u.agent, u.block
    return np.array(
        [*a.position, *a.velocity, *b.position, b.angle, *b.velocity, b.angular_velocity], dtype=np.float64
    )


def set_state(env: gym.Env, state: np.ndarray, *, fresh_space: bool = True) -> None:
    """Restore a :func:`get_state` state into a PushT env.

    The block's angle is set before its position (setting the angle rotates the body about its
    centre of gravity, which is not its origin), then the velocities, then the shapes are
    reindexed. ``fresh_space=True`` first rebuilds the pymunk space, which drops the solver's
    cached contact impulses: restoring the same state twice then replays a fixed action sequence
    bit for bit. (Continuing the original run instead can differ slightly while the agent is in
    contact, because the original space warm-starts from its cache. ``env.reset_to_state`` does
    not restore faithfully at all: it sets position before angle and steps the physics once.)
    The TimeLimit wrapper's step counter is not part of the state.
    """
    u = env.unwrapped
    s = np.asarray(state, dtype=np.float64)
    if fresh_space:
        u._setup()  # new space, agent and block (goal pose unchanged)
    a, b = u.agent, u.block
    b.angle = float(s[6])
    b.position = (float(s[4]), float(s[5]))
    b.velocity = (float(s[7]), float(s[8]))
    b.angular_velocity = float(s[9])
    a.position = (float(s[0]), float(s[1]))
    a.velocity = (float(s[2]), float(s[3]))
    u.space.reindex_shapes_for_body(b)
    u.space.reindex_shapes_for_body(a)


def pusht_coverage(env: gym.Env) -> float:
    """Fraction of the goal T covered by the block (the env's own ``info["coverage"]``)."""
    return float(env.unwrapped._get_coverage())


# ---------------------------------------------------------------------------------------------
# metrics


def episode_metrics(name: str, scores: np.ndarray) -> dict:
    """Aggregate per-episode scores: PushT ``mean_coverage`` / LunarLander ``mean_return``, and
    ``mean_score``, ``success_rate``, ``n_episodes``, ``scores`` (a list)."""
    _check_name(name)
    scores = np.asarray(scores, dtype=np.float64)
    succ = success_mask(name, scores)
    out = {
        "env": name,
        "n_episodes": int(scores.size),
        "mean_score": float(scores.mean()) if scores.size else float("nan"),
        "success_rate": float(succ.mean()) if scores.size else float("nan"),
        "scores": scores.tolist(),
    }
    out["mean_coverage" if name == "pusht" else "mean_return"] = out["mean_score"]
    return out


def pusht_score(max_coverages) -> float:
    """Diffusion Policy's PushT score (Table 7's scale): the mean over episodes of each episode's max
    coverage / 0.95, clipped to [0, 1]; 0 for no episodes."""
    c = np.asarray(max_coverages, dtype=np.float64)
    return float(np.clip(c / PUSHT_SUCCESS_COVERAGE, 0, 1).mean()) if c.size else 0.0


def success_mask(name: str, scores: np.ndarray) -> np.ndarray:
    """Per-episode success: PushT max coverage > 0.95, LunarLander return >= 200."""
    scores = np.asarray(scores, dtype=np.float64)
    if _check_name(name) == "pusht":
        return scores > PUSHT_SUCCESS_COVERAGE
    return scores >= LUNAR_SUCCESS_RETURN


# ---------------------------------------------------------------------------------------------
# batched runner

Predict = Callable[[np.ndarray], np.ndarray]


def _execute_chunk(name: str, env, chunk: np.ndarray, i: int, hist: np.ndarray, scores: np.ndarray,
                   lengths: np.ndarray, max_steps: int) -> tuple[int, bool]:
    """Step env ``i`` through its action chunk ``[k, act_dim]``, updating its row of ``hist``, ``scores`` and
    ``lengths`` in place; stop early when the episode ends. Returns (actions executed, still running)."""
    for n, a in enumerate(chunk, start=1):
        obs, reward, terminated, truncated, info = env.step(a)
        lengths[i] += 1
        if name == "pusht":
            scores[i] = max(scores[i], float(info["coverage"]))  # PushT: the best coverage so far
        else:
            scores[i] += float(reward)  # the return
        hist[i] = np.roll(hist[i], -1, axis=0)
        hist[i, -1] = np.asarray(obs, np.float32)
        if terminated or truncated or lengths[i] >= max_steps:
            return n, False
    return len(chunk), True


def run_episodes(
    name: str,
    predict: Predict,
    n_episodes: int,
    *,
    seed: int,
    n_obs_steps: int,
    max_steps: int | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate a chunking policy on ``n_episodes`` envs stepped in lockstep.

    Episode ``i`` is reset with seed ``seed + i``. At each decision the runner calls
    ``predict(obs_hist)`` with ``obs_hist [E_active, n_obs_steps, obs_dim] float32`` (the last
    ``n_obs_steps`` observations of each still-running env, oldest first; at the start the
    history is padded by repeating the first observation, as Diffusion Policy does) and expects
    ``[E_active, k, act_dim]`` back (``[E_active, act_dim]`` is read as k = 1). Each env then
    executes its k actions (clipped to the action bounds) unless it terminates, truncates or
    reaches ``max_steps`` (default :func:`env_spec`'s) first.

    Returns :func:`episode_metrics` plus ``ms_per_action`` (wall time inside ``predict`` / actions
    executed, summed over envs), ``ms_per_predict_call``, ``ms_per_env_chunk`` (predict time /
    sum over calls of ``E_active``), ``n_predict_calls``, ``n_actions``, ``episode_lengths``,
    ``wall_s``; PushT adds ``mean_reward_dp`` (Diffusion Policy's score: mean over episodes of
    the max of ``clip(coverage / 0.95, 0, 1)``).
    """
    spec = env_spec(name)
    if n_obs_steps < 1:
        raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
    max_steps = int(max_steps or spec.max_steps)
    t_start = time.perf_counter()
    envs = [make_env(name, max_episode_steps=max_steps) for _ in range(n_episodes)]
    hist = np.zeros((n_episodes, n_obs_steps, spec.obs_dim), np.float32)  # [E, n_obs_steps, obs_dim]
    for i, env in enumerate(envs):
        obs, _ = env.reset(seed=seed + i)
        hist[i] = np.asarray(obs, np.float32)[None]  # pad: repeat the first observation
    scores = np.zeros(n_episodes)  # PushT: running max coverage; LunarLander: running return
    lengths = np.zeros(n_episodes, np.int64)
    active = np.ones(n_episodes, bool)
    predict_s, n_calls, n_actions, n_env_chunks = 0.0, 0, 0, 0
    while active.any():
        idx = np.flatnonzero(active)
        t0 = time.perf_counter()
        acts = np.asarray(predict(hist[idx].copy()), dtype=np.float32)
        predict_s += time.perf_counter() - t0
        n_calls += 1
        n_env_chunks += idx.size
        if acts.ndim == 2:
            acts = acts[:, None]
        if acts.shape[0] != idx.size or acts.ndim != 3 or acts.shape[2] != spec.action_dim:
            raise ValueError(
                f"predict returned shape {acts.shape}; expected [{idx.size}, k, {spec.action_dim}]"
            )
        acts = np.clip(acts, spec.action_low, spec.action_high)
        for j, i in enumerate(idx):
            n, active[i] = _execute_chunk(name, envs[i], acts[j], i, hist, scores, lengths, max_steps)
            n_actions += n
        if progress:
            print(f"[run_episodes {name}] {int((~active).sum())}/{n_episodes} done", flush=True)
    for env in envs:
        env.close()
    out = episode_metrics(name, scores)
    out.update(
        ms_per_action=1e3 * predict_s / max(n_actions, 1),
        ms_per_predict_call=1e3 * predict_s / max(n_calls, 1),
        ms_per_env_chunk=1e3 * predict_s / max(n_env_chunks, 1),
        n_predict_calls=n_calls,
        n_actions=n_actions,
        episode_lengths=lengths.tolist(),
        n_obs_steps=n_obs_steps,
        max_steps=max_steps,
        seed=seed,
        wall_s=time.perf_counter() - t_start,
    )
    if name == "pusht":
        out["mean_reward_dp"] = pusht_score(scores)
    return out

"""Scripted experts and demonstration collection for the policy study.

* :class:`PushTExpert`: a contact-point pushing planner with simulator lookahead (model-
  predictive control through :func:`~drifting.policy.envs.set_state`). At each decision it
  enumerates pushes -- a contact point on the T's outline, a push direction, a speed and a
  length -- simulates each one on a private copy of the physics, and picks the push that reduces
  the pose error (mean distance between the block's and the goal's outline vertices) fastest per
  env step, counting the steps needed to walk the agent around the block to the contact point.
  It then walks there along a collision-free path (visibility graph around the inflated T),
  pushes, backs off, and decides again.
* :class:`LunarExpert`: gymnasium's shipped ``heuristic(env, s)`` with Gaussian action noise and
  a per-episode behaviour mode (a lateral drift target to the left or right of the pad, and a
  hover delay), so the same observation maps to different actions across episodes.
* :func:`collect_demos` / :func:`cached_demos`: run an expert on seeded episodes, keep the good
  ones, and store ``(obs, action)`` per step in Diffusion Policy's replay-buffer layout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .envs import (
    LUNAR_SUCCESS_RETURN,
    PUSHT_SUCCESS_COVERAGE,
    env_spec,
    episode_metrics,
    get_state,
    make_env,
    pusht_score,
    set_state,
)
from .obs import T_OUTLINE

# --------------------------------------------------------------------------------------------
# PushT geometry (block-local frame: the body origin is the observed block position)

_T_OUTLINE = T_OUTLINE
_GOAL_POSE = np.array([256.0, 256.0, math.pi / 4])  # gym-pusht's fixed goal (x, y, angle)
_AGENT_R = 15.0  # agent radius


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _to_world(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Block-local points ``[N, 2]`` -> world ``[N, 2]`` for a block pose ``(x, y, angle)``."""
    return pts @ _rot(pose[2]).T + pose[:2]


_GOAL_PTS = _to_world(_GOAL_POSE, _T_OUTLINE)  # [8, 2]


def pose_error(pose: np.ndarray) -> float:
    """Mean distance (px) between the T's outline vertices at ``pose`` and at the goal pose."""
    return float(np.linalg.norm(_to_world(pose, _T_OUTLINE) - _GOAL_PTS, axis=1).mean())


def _local_contacts(spacing: float, standoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Contact points ``[C, 2]`` on the outline with outward normals ``[C, 2]`` (block-local),
    keeping those whose agent start point ``p + n * standoff`` is clear of the T."""
    import shapely.geometry as sg

    poly = sg.Polygon(_T_OUTLINE)
    pts, nrm = [], []
    n_v = len(_T_OUTLINE)
    for k in range(n_v):
        a, b = _T_OUTLINE[k], _T_OUTLINE[(k + 1) % n_v]
        d = b - a
        length = float(np.linalg.norm(d))
        n = np.array([d[1], -d[0]]) / length
        m = max(1, int(round(length / spacing)))
        for j in range(m):
            pts.append(a + d * (j + 0.5) / m)
            nrm.append(n)
        # convex corner at b: push along the bisector of the two edge normals
        d2 = _T_OUTLINE[(k + 2) % n_v] - b
        if d[0] * d2[1] - d[1] * d2[0] > 0:  # left turn = convex for a CCW polygon
            n2 = np.array([d2[1], -d2[0]]) / np.linalg.norm(d2)
            bis = n + n2
            pts.append(b.copy())
            nrm.append(bis / np.linalg.norm(bis))
    pts, nrm = np.array(pts), np.array(nrm)
    keep = [poly.distance(sg.Point(*(p + n * standoff))) >= standoff - 1.0 for p, n in zip(pts, nrm)]
    return pts[keep], nrm[keep]


# --------------------------------------------------------------------------------------------
# PushT expert


@dataclass
class PushTExpertConfig:
    """Knobs of :class:`PushTExpert` (the defaults are the measured ones in docs/policy_experts.md)."""

    contact_spacing: float = 10.0  # px between candidate contact points along the outline
    standoff: float = 6.0  # the push starts this far (px) outside contact
    push_angles: tuple[float, ...] = (-0.5, 0.0, 0.5)  # push directions, rad from the inward normal
    push_speeds: tuple[float, ...] = (8.0,)  # target motion per env step (px) while pushing
    fine_speed: float = 3.0  # push speed when the pose error is below fine_error
    fine_error: float = 12.0
    max_push_steps: int = 6
    nav_speed: float = 20.0  # target motion per env step (px) while walking around the block
    nav_margin: float = 6.0  # clearance (px) kept from the block while walking
    retreat: float = 10.0  # back-off (px) after a push
    step_overhead: float = 2.0  # steps added to a push's cost (settling, back-off)
    # back off from the block in contact toward a point clear of the inflated T (16 directions, the
    # one nearest the outward normal) instead of along the normal alone, which at a concave corner of
    # the T points into the other bar (pusht-mpc-1 kept the normal alone)
    clear_backoff: bool = False


class PushTExpert:
    """Stateful scripted PushT expert; call :meth:`reset` then :meth:`act` once per env step.

    ``act(env)`` reads the exact physics state of ``env`` (a PushT env made by
    :func:`~drifting.policy.envs.make_env`) and returns the next target position ``[2] float32``.
    """

    def __init__(self, config: PushTExpertConfig | None = None, seed: int = 0):
        import gym_pusht.envs.pusht as pusht_mod

        self.cfg = config or PushTExpertConfig()
        self._sim = pusht_mod.PushTEnv(obs_type="state")  # private physics for lookahead
        self._sim.reset(seed=0)
        self._rng = np.random.default_rng(seed)
        self._contacts, self._normals = _local_contacts(self.cfg.contact_spacing,
                                                        self.cfg.standoff + _AGENT_R)
        self._queue: list[tuple[np.ndarray, float]] = []  # (target, hold tolerance px or 0)
        self._hold = 0
        self.n_plans = 0

    def reset(self, seed: int | None = None) -> None:
        self._queue.clear()
        self._hold = 0
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    # -- simulation ---------------------------------------------------------------------------

    def _sim_load(self, state: np.ndarray) -> None:
        set_state(self._sim, state, fresh_space=False)

    def _sim_step(self, target: np.ndarray) -> None:
        """One env step of PushT's PD control + physics, without the coverage computation."""
        u = self._sim
        ag, space = u.agent, u.space
        tx, ty = float(target[0]), float(target[1])
        kp, kv, dt = u.k_p, u.k_v, u.dt
        for _ in range(10):
            px, py = ag.position
            vx, vy = ag.velocity
            ag.velocity = (vx + (kp * (tx - px) - kv * vx) * dt, vy + (kp * (ty - py) - kv * vy) * dt)
            space.step(dt)

    def _sim_pose(self) -> np.ndarray:
        b = self._sim.block
        return np.array([b.position[0], b.position[1], b.angle])

    # -- planning -----------------------------------------------------------------------------

    def _best_push(self, state: np.ndarray, walk_weight: float = 1.0):
        """Search every (contact, direction, length) by simulation from ``state``; the push that
        reduces the pose error most per env step, as ``(rate, (contact, direction, speed, length))``,
        or ``(-inf, None)`` when no contact point is reachable. Walking to the contact point counts
        ``walk_weight`` times its steps. Ties keep the first candidate (a fixed order)."""
        cfg = self.cfg
        pose = state[[4, 5, 6]]
        agent = state[:2]
        err0 = pose_error(pose)
        start_w, n_w = self._starts(pose)
        speeds = (cfg.fine_speed,) if err0 < cfg.fine_error else cfg.push_speeds
        best = (-np.inf, None)
        for ci in range(len(start_w)):
            s = start_w[ci]
            if not (_AGENT_R <= s[0] <= 512 - _AGENT_R and _AGENT_R <= s[1] <= 512 - _AGENT_R):
                continue
            walk = walk_weight * (float(np.linalg.norm(s - agent)) / cfg.nav_speed + 1.0)
            for ang in cfg.push_angles:
                d = _rot(ang) @ (-n_w[ci])
                for v in speeds:
                    self._sim_load(state)
                    u = self._sim
                    u.agent.position = (float(s[0]), float(s[1]))
                    u.agent.velocity = (0.0, 0.0)
                    u.space.reindex_shapes_for_body(u.agent)
                    tgt = s.copy()
                    for k in range(1, cfg.max_push_steps + 1):
                        tgt = tgt + d * v
                        self._sim_step(tgt)
                        gain = err0 - pose_error(self._sim_pose())
                        rate = gain / (walk + k + cfg.step_overhead)
                        if rate > best[0]:
                            best = (rate, (ci, d, v, k))
        return best

    def _starts(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World agent start points ``[C, 2]`` of the contact points and their outward normals ``[C, 2]``."""
        rot = _rot(pose[2])
        c_w = self._contacts @ rot.T + pose[:2]  # [C, 2] world contact points
        n_w = self._normals @ rot.T  # [C, 2] world outward normals
        return c_w + n_w * (_AGENT_R + self.cfg.standoff), n_w

    def _plan(self, state: np.ndarray) -> None:
        """Choose the next push by simulation and fill the target queue (walk, push, back off)."""
        cfg = self.cfg
        self.n_plans += 1
        pose, agent = state[[4, 5, 6]], state[:2]
        start_w, n_w = self._starts(pose)
        best = self._best_push(state)
        if best[1] is None or best[0] <= 0:
            # nothing helps from here: a random push to get out of the local minimum
            ci = int(self._rng.integers(len(start_w)))
            best = (0.0, (ci, -n_w[ci], cfg.push_speeds[0], 3))
        ci, d, v, k = best[1]
        self._queue = self._walk(agent, start_w[ci], pose)
        tgt = start_w[ci].copy()
        self._queue.append((tgt.copy(), 2.0))  # settle at the start point
        for _ in range(k):
            tgt = tgt + d * v
            self._queue.append((tgt.copy(), 0.0))
        self._queue.append((tgt - d * v + n_w[ci] * cfg.retreat, 0.0))

    def _walk(self, agent: np.ndarray, goal: np.ndarray, pose: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Targets that take the agent from ``agent`` to ``goal`` without touching the block."""
        import shapely.geometry as sg

        cfg = self.cfg
        t_poly = sg.Polygon(_to_world(pose, _T_OUTLINE))
        obstacle = t_poly.buffer(_AGENT_R + cfg.nav_margin - 2.0, join_style=2)
        path = [agent]
        seg = sg.LineString([agent, goal])
        if t_poly.buffer(_AGENT_R - 1.0).intersects(seg) and obstacle.intersects(seg):
            start = agent
            if obstacle.contains(sg.Point(*agent)):  # in contact: back off first
                near = np.array(
                    t_poly.exterior.interpolate(t_poly.exterior.project(sg.Point(*agent))).coords[0])
                away = agent - near
                nrm = float(np.linalg.norm(away))
                away = away / nrm if nrm > 1e-6 else (agent - np.array(t_poly.centroid.coords[0])) / 50.0
                start = near + away * (_AGENT_R + cfg.nav_margin + 2.0)
                if cfg.clear_backoff:
                    start = self._clear_point(agent, away, obstacle)
                path.append(start)
            via = self._visibility_path(start, goal, t_poly, obstacle)
            if cfg.clear_backoff and len(via) == 2 and obstacle.intersects(sg.LineString(via)):
                via = [start]  # no clear path: back off and wait for the next plan
            path += via[1:]
        else:
            path.append(goal)
        targets: list[tuple[np.ndarray, float]] = []
        for a, b in zip(path[:-1], path[1:]):
            dist = float(np.linalg.norm(b - a))
            n = max(1, int(math.ceil(dist / cfg.nav_speed)))
            for j in range(1, n + 1):
                targets.append((a + (b - a) * j / n, 0.0))
            if targets:
                targets[-1] = (targets[-1][0], 4.0)  # hold at each corner until close
        return targets

    def _clear_point(self, agent: np.ndarray, away: np.ndarray, obstacle) -> np.ndarray:
        """The nearest point around ``agent`` (radii 20, 30, 45 px; 16 directions) outside ``obstacle``,
        among the directions closest to ``away``; ties keep the first direction (a fixed order)."""
        import shapely.geometry as sg

        angles = np.arange(16) * (2 * math.pi / 16)
        dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [16, 2]
        order = np.argsort(-(dirs @ away), kind="stable")
        for r in (20.0, 30.0, 45.0):
            for i in order:
                p = np.clip(agent + dirs[i] * r, 1.0, 511.0)
                if not obstacle.contains(sg.Point(*p)):
                    return p
        return agent.copy()

    def _visibility_path(self, a, b, t_poly, obstacle) -> list[np.ndarray]:
        import shapely.geometry as sg

        ring = t_poly.buffer(_AGENT_R + self.cfg.nav_margin + 4.0, join_style=2).exterior
        nodes = [np.asarray(a), np.asarray(b)] + [np.array(p) for p in ring.coords[:-1]]
        nodes = [np.clip(p, 1.0, 511.0) for p in nodes]
        n = len(nodes)
        dist = np.full(n, np.inf)
        prev = [-1] * n
        dist[0] = 0.0
        done = np.zeros(n, bool)
        vis = {}

        def visible(i, j):
            key = (min(i, j), max(i, j))
            if key not in vis:
                vis[key] = not obstacle.intersects(sg.LineString([nodes[i], nodes[j]]))
            return vis[key]

        for _ in range(n):
            i = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[i]) or i == 1:
                break
            done[i] = True
            for j in range(n):
                if not done[j] and visible(i, j):
                    nd = dist[i] + float(np.linalg.norm(nodes[i] - nodes[j]))
                    if nd < dist[j]:
                        dist[j], prev[j] = nd, i
        if not np.isfinite(dist[1]):
            return [nodes[0], nodes[1]]  # no clear path (block against a wall): go straight
        path, i = [], 1
        while i != -1:
            path.append(nodes[i])
            i = prev[i]
        return path[::-1]

    # -- acting -------------------------------------------------------------------------------

    def act(self, env, obs: np.ndarray | None = None) -> np.ndarray:
        """Next target position ``[2] float32`` for ``env``'s current state (``obs`` is not used: this
        expert reads the full physics state)."""
        state = get_state(env)
        while True:
            if not self._queue:
                self._plan(state)
            tgt, tol = self._queue[0]
            if tol == 0:
                self._queue.pop(0)
                return np.clip(tgt, 0, 512).astype(np.float32)
            # a sticky target: repeat it until the agent is within tol (at most 4 repeats)
            if self._hold > 0 and (np.linalg.norm(state[:2] - tgt) <= tol or self._hold > 4):
                self._queue.pop(0)
                self._hold = 0
                continue
            self._hold += 1
            return np.clip(tgt, 0, 512).astype(np.float32)


@dataclass
class PushTChunkExpertConfig(PushTExpertConfig):
    """Knobs of :class:`PushTChunkExpert` (beside :class:`PushTExpertConfig`'s search knobs)."""

    chunk: int = 8  # steps per plan: the policies' n_action_steps
    max_push_steps: int = 8  # a push may fill a whole chunk
    walk_weight: float = 1.5  # a walking step costs this many pushing steps in a push's rate
    clear_backoff: bool = True
    arrive_tol: float = 10.0  # px: an agent this close to the start point pushes from where it is
    execution_noise: float = 2.0  # px std of the Gaussian on the executed target; the recorded one is clean


class PushTChunkExpert(PushTExpert):
    """A PushT expert a policy can imitate (expert ``"chunk"``): it plans from the observation alone.

    Every ``chunk`` steps (the policies' 8-step boundaries, counted from the episode's start) it
    reads ``[agent_x, agent_y, block_x, block_y, block_angle]``, assumes everything at rest, runs
    :meth:`PushTExpert._best_push` (walking weighted ``walk_weight``, pushes up to a whole chunk)
    and emits the chunk's targets: the walk to the contact's start point (around the block on the
    visibility graph, each corner target given twice), the push, and a back-off held to the end.
    No queue outlives a chunk, no random push, ties broken by the fixed candidate order: the
    chunk is a deterministic function of the observation at its boundary. ``execution_noise``
    (applied by :func:`run_expert_episode`) perturbs what is executed, so the demonstrations
    visit states off the clean path and record the clean action there.
    """

    def __init__(self, config: PushTChunkExpertConfig | None = None, seed: int = 0):
        super().__init__(config or PushTChunkExpertConfig(), seed)
        self._t = 0

    @property
    def execution_noise(self) -> float:
        return self.cfg.execution_noise

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._t = 0

    def plan_chunk(self, obs: np.ndarray) -> np.ndarray:
        """The ``[chunk, 2]`` targets for observation ``obs [5]``."""
        cfg = self.cfg
        self.n_plans += 1
        obs = np.asarray(obs, np.float32).astype(np.float64)  # what the demonstrations record
        state = np.zeros(10)
        state[[0, 1, 4, 5, 6]] = obs  # agent and block at rest
        agent, pose = obs[:2], obs[2:5]
        start_w, n_w = self._starts(pose)
        rate, choice = self._best_push(state, cfg.walk_weight)
        if choice is None:  # no reachable contact point: hold still
            return np.repeat(agent[None], cfg.chunk, axis=0).astype(np.float32)
        ci, d, v, k = choice
        targets: list[np.ndarray] = []
        tgt = start_w[ci].copy()
        if np.linalg.norm(tgt - agent) <= cfg.arrive_tol:
            tgt = agent.copy()  # already at the contact: push on from here
        else:
            for t, tol in self._walk(agent, tgt, pose):
                targets += [t] * (2 if tol > 0 else 1)
        for _ in range(k):
            tgt = tgt + d * v
            targets.append(tgt.copy())
        back = tgt - d * v + n_w[ci] * cfg.retreat
        targets += [back] * max(0, cfg.chunk - len(targets))
        return np.clip(np.array(targets[: cfg.chunk]), 0, 512).astype(np.float32)

    def act(self, env, obs: np.ndarray | None = None) -> np.ndarray:
        """Next target ``[2] float32``; plans at steps 0, chunk, 2 chunk, ... from ``obs`` alone."""
        if self._t % self.cfg.chunk == 0:
            if obs is None:
                raise ValueError("PushTChunkExpert.act needs the observation (obs)")
            self._queue = list(self.plan_chunk(obs))
        self._t += 1
        return self._queue.pop(0)


# --------------------------------------------------------------------------------------------
# LunarLander expert


@dataclass
class LunarExpertConfig:
    """Knobs of :class:`LunarExpert`."""

    action_noise: float = 0.1  # std of the Gaussian added to each action (then clipped to [-1, 1])
    lateral_offset: float = 0.4  # mode: steer to x = +-offset while above switch_height
    switch_height: float = 0.6  # (normalised y; the lander starts near 1.4, the pad is at 0)
    hover_delay_p: float = 0.5  # probability of the hover mode: hold altitude for hover_steps first
    hover_steps: int = 40
    hover_height: float = 0.9


class LunarExpert:
    """Gymnasium's ``heuristic`` lander with noise and a per-episode behaviour mode.

    At :meth:`reset` it draws a side (steer first to the left or to the right of the pad, then to
    the pad) and whether to hover for a while before descending; at each step the heuristic's
    action gets Gaussian noise. So the same observation maps to different actions in different
    episodes (multimodal demonstrations).
    """

    def __init__(self, config: LunarExpertConfig | None = None, seed: int = 0):
        self.cfg = config or LunarExpertConfig()
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.side = float(self._rng.choice([-1.0, 1.0]))
        self.hover = bool(self._rng.random() < self.cfg.hover_delay_p)
        self._t = 0

    def act(self, env, obs: np.ndarray) -> np.ndarray:
        """Noisy heuristic action ``[2] float32`` for observation ``obs [8]``."""
        from gymnasium.envs.box2d.lunar_lander import heuristic

        cfg = self.cfg
        s = np.array(obs, dtype=np.float64)
        if s[1] > cfg.switch_height:
            s[0] -= self.side * cfg.lateral_offset  # aim beside the pad first
        if self.hover and self._t < cfg.hover_steps:
            # the heuristic's vertical term is (0.55 |x| - y); make it (hover_height - y)
            s[1] = s[1] - cfg.hover_height + 0.55 * abs(s[0])
        self._t += 1
        a = np.asarray(heuristic(env, s), dtype=np.float64)
        a = a + self._rng.normal(0.0, cfg.action_noise, size=2)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# running experts, demonstrations


# the scripted experts of each task, default first; the version is part of the demo cache key
EXPERTS = {"pusht": {"chunk": PushTChunkExpert, "mpc": PushTExpert}, "lunarlander": {"noisy": LunarExpert}}
EXPERT_VERSIONS = {("pusht", "chunk"): "pusht-chunk-1", ("pusht", "mpc"): "pusht-mpc-1/lunar-noisy-1",
                   ("lunarlander", "noisy"): "pusht-mpc-1/lunar-noisy-1"}


def check_expert(name: str, expert: str | None) -> str:
    """The expert's name for task ``name`` (``None``: the task's default), or a ValueError naming the
    allowed values."""
    env_spec(name)  # validates the name
    allowed = tuple(EXPERTS[name])
    if expert is None:
        return allowed[0]
    if expert not in allowed:
        raise ValueError(f"expert for {name!r} must be one of {allowed}, got {expert!r}")
    return expert


def make_expert(name: str, seed: int = 0, expert: str | None = None):
    """The scripted expert ``expert`` for task ``name`` (default: :class:`PushTChunkExpert` for PushT,
    :class:`LunarExpert` for LunarLander)."""
    return EXPERTS[name][check_expert(name, expert)](seed=seed)


def run_expert_episode(name: str, env, expert, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One seeded expert episode: ``(obs [T, obs_dim] f32, action [T, act_dim] f32, score)``.

    ``obs[t]`` is the observation the expert acted on, ``action[t]`` its action. Score: PushT max
    coverage over the steps, LunarLander return.
    """
    spec = env_spec(name)
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    noise = float(getattr(expert, "execution_noise", 0.0))
    noise_rng = np.random.default_rng([seed, 7])  # the executed action's perturbation, per episode
    obs_l, act_l = [], []
    score = 0.0
    for _ in range(spec.max_steps):
        a = expert.act(env, obs)
        obs_l.append(np.asarray(obs, np.float32))
        act_l.append(np.asarray(a, np.float32))
        if noise > 0:  # recorded clean, executed perturbed (recovery states in the data)
            a = np.clip(a + noise_rng.normal(0.0, noise, size=a.shape), spec.action_low, spec.action_high)
        obs, reward, terminated, truncated, info = env.step(np.asarray(a, np.float32))
        if name == "pusht":
            score = max(score, float(info["coverage"]))
        else:
            score += float(reward)
        if terminated or truncated:
            break
    return np.stack(obs_l), np.stack(act_l), score


def default_threshold(name: str) -> float:
    """Demo-keeping threshold: PushT max coverage >= 0.95, LunarLander return >= 200."""
    return PUSHT_SUCCESS_COVERAGE if env_spec(name).name == "pusht" else LUNAR_SUCCESS_RETURN


@dataclass
class Demos:
    """Expert demonstrations in Diffusion Policy's replay-buffer layout.

    ``obs [T_total, obs_dim] float32`` and ``action [T_total, act_dim] float32`` are the kept
    episodes concatenated; ``episode_ends [E] int64`` their cumulative ends (episode ``e`` is rows
    ``episode_ends[e-1]:episode_ends[e]``); ``scores [E]`` / ``seeds [E]`` per kept episode;
    ``all_scores [N]`` / ``all_seeds [N]`` over every attempted episode; ``stats``: the expert's
    ``mean_score``, ``success_rate``, ``n_attempted``, ``n_kept``, ``threshold``, timings, version.
    """

    name: str
    obs: np.ndarray
    action: np.ndarray
    episode_ends: np.ndarray
    scores: np.ndarray
    seeds: np.ndarray
    all_scores: np.ndarray
    all_seeds: np.ndarray
    stats: dict = field(default_factory=dict)

    _ARRAYS = ("obs", "action", "episode_ends", "scores", "seeds", "all_scores", "all_seeds")

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.size)

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """``(obs [T_e, obs_dim], action [T_e, act_dim])`` of kept episode ``e``."""
        start = int(self.episode_ends[e - 1]) if e > 0 else 0
        end = int(self.episode_ends[e])
        return self.obs[start:end], self.action[start:end]

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npz``, arrays only) and ``path`` with suffix ``.json`` (name, stats)."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k: getattr(self, k) for k in self._ARRAYS})
        path.with_suffix(".json").write_text(json.dumps({"name": self.name, "stats": self.stats}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Demos:
        path = Path(path).with_suffix(".npz")
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in cls._ARRAYS}
        return cls(name=meta["name"], stats=meta["stats"], **arrays)


def collect_demos(
    name: str,
    n_episodes: int,
    *,
    seed: int = 0,
    threshold: float | None = None,
    progress: bool = False,
    expert: str | None = None,
) -> Demos:
    """Run the expert (``expert``: see :data:`EXPERTS`; default the task's first) on ``n_episodes``
    episodes with seeds ``seed + i`` and keep those whose score
    is >= ``threshold`` (default :func:`default_threshold`). ``n_episodes`` counts attempted
    episodes; the kept count is in ``stats["n_kept"]``. Use seeds disjoint from the evaluation's
    (e.g. demos from 0, evaluation from 100000, as Diffusion Policy)."""
    spec = env_spec(name)
    thr = default_threshold(name) if threshold is None else float(threshold)
    env = make_env(name)
    expert_name = check_expert(name, expert)
    expert = make_expert(name, seed, expert_name)
    obs_l, act_l, ends, kept_scores, kept_seeds, all_scores = [], [], [], [], [], []
    total = 0
    t0 = time.perf_counter()
    for i in range(n_episodes):
        o, a, score = run_expert_episode(name, env, expert, seed + i)
        all_scores.append(score)
        if score >= thr:
            obs_l.append(o)
            act_l.append(a)
            total += len(o)
            ends.append(total)
            kept_scores.append(score)
            kept_seeds.append(seed + i)
        if progress:
            print(
                f"[collect_demos {name}] episode {i + 1}/{n_episodes} seed {seed + i}: score {score:.3f}, "
                f"{len(o)} steps, kept {len(ends)}, {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    env.close()
    seconds = time.perf_counter() - t0
    all_arr = np.asarray(all_scores, np.float64)
    metrics = episode_metrics(name, all_arr)
    stats = {
        "mean_score": metrics["mean_score"],
        "success_rate": metrics["success_rate"],
        "n_attempted": int(n_episodes),
        "n_kept": len(ends),
        "threshold": thr,
        "seed": int(seed),
        "n_steps": int(total),
        "seconds": seconds,
        "seconds_per_episode": seconds / max(n_episodes, 1),
        "expert": expert_name,
        "expert_version": EXPERT_VERSIONS[name, expert_name],
    }
    return Demos(
        name=name,
        obs=np.concatenate(obs_l) if obs_l else np.zeros((0, spec.obs_dim), np.float32),
        action=np.concatenate(act_l) if act_l else np.zeros((0, spec.action_dim), np.float32),
        episode_ends=np.asarray(ends, np.int64),
        scores=np.asarray(kept_scores, np.float64),
        seeds=np.asarray(kept_seeds, np.int64),
        all_scores=all_arr,
        all_seeds=np.arange(seed, seed + n_episodes, dtype=np.int64),
        stats=stats,
    )


def demos_cache_key(name: str, n_episodes: int, seed: int, threshold: float | None = None,
                    expert: str | None = None) -> str:
    """Directory name of a demo set in the cache (env name, episode count, seed, threshold, expert
    version)."""
    thr = default_threshold(name) if threshold is None else float(threshold)
    ver = EXPERT_VERSIONS[name, check_expert(name, expert)].replace("/", "_")
    return f"{name}_n{n_episodes}_seed{seed}_thr{thr:g}_{ver}"


def cached_demos(
    name: str,
    n_episodes: int,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    threshold: float | None = None,
    progress: bool = False,
    expert: str | None = None,
) -> Demos:
    """:func:`collect_demos`, cached under ``cache_dir`` (default ``$DRIFTING_CACHE/demos``, i.e.
    ``~/.cache/drifting/demos``) in ``<key>/demos.npz`` + ``demos.json``."""
    from ..cache import cache_root

    root = Path(cache_dir) if cache_dir is not None else cache_root() / "demos"
    entry = root / demos_cache_key(name, n_episodes, seed, threshold, expert)
    if (entry / "demos.npz").is_file() and (entry / "demos.json").is_file():
        return Demos.load(entry / "demos.npz")
    demos = collect_demos(name, n_episodes, seed=seed, threshold=threshold, progress=progress, expert=expert)
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    demos.save(tmp / "demos.npz")
    try:
        tmp.rename(entry)
    except OSError:  # another run cached it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return demos


def evaluate_expert(name: str, n_episodes: int, seed: int = 0, *, progress: bool = False,
                    expert: str | None = None) -> dict:
    """The expert's metrics on episodes ``seed + i`` (same keys as
    :func:`~drifting.policy.envs.episode_metrics` plus ``episode_lengths``, ``seconds_per_episode``)."""
    env = make_env(name)
    expert_name = check_expert(name, expert)
    expert = make_expert(name, seed, expert_name)
    scores, lengths = [], []
    t0 = time.perf_counter()
    for i in range(n_episodes):
        o, _, score = run_expert_episode(name, env, expert, seed + i)
        scores.append(score)
        lengths.append(len(o))
        if progress:
            print(f"[evaluate_expert {name}] seed {seed + i}: score {score:.3f}, {len(o)} steps", flush=True)
    env.close()
    out = episode_metrics(name, np.asarray(scores))
    out.update(
        episode_lengths=lengths,
        mean_length=float(np.mean(lengths)) if lengths else 0.0,
        seconds_per_episode=(time.perf_counter() - t0) / max(n_episodes, 1),
        seed=seed,
        expert=expert_name,
        expert_version=EXPERT_VERSIONS[name, expert_name],
    )
    if name == "pusht":
        out["mean_reward_dp"] = pusht_score(scores)
    return out


if __name__ == "__main__":  # python -m drifting.policy.experts {pusht,lunarlander} N [SEED [EXPERT]]
    import sys

    _name, _n = sys.argv[1], int(sys.argv[2])
    _seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    _m = evaluate_expert(_name, _n, _seed, progress=True, expert=sys.argv[4] if len(sys.argv) > 4 else None)
    _m.pop("scores")
    _m.pop("episode_lengths")
    print(json.dumps(_m, indent=2))

"""Train and evaluate robot-control policies: ``drifting policy collect | train | eval | compare``.

Protocol (Table 7, after Diffusion Policy): the EMA policy is exported every ``ckpt_every`` steps;
the reported numbers are the mean over the last ``snapshots`` exports of each one's evaluation on
``eval_episodes`` seeded episodes (seeds from ``eval_seed``, disjoint from the demonstrations').
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..training.checkpoint import export_model, jsonable, load_export
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.rng import step_generator
from ..training.schedules import warmup_lr


@dataclass
class PolicyTrainConfig:
    """One policy run: task, demonstrations, policy (``policy.PolicyConfig`` fields), optimizer, protocol."""

    env: str = "pusht"
    kind: str = "drifting"
    demos: int = 200  # attempted expert episodes (the kept ones are cached; see docs/policy_experts.md)
    demo_seed: int = 0
    expert: str | None = None  # the scripted expert (policy.experts.EXPERTS; None: the task's default)
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (64, 128, 256)
    obs_features: str = "raw"  # "raw", or for PushT "sincos" / "keypoints" (drifting.policy.obs)
    n_gen: int = 16
    n_pos: int = 1
    pos_radius: float = 0.15
    per_timestep: bool = False  # drifting: one field per action timestep (PolicyConfig.per_timestep)
    scheduler: str = "ddpm"
    inference_steps: int = 100
    steps: int = 3000
    # a wall-time budget in minutes of training (evaluations excluded; earlier sessions of a resumed run
    # included): the run ends at the first step past it. Not part of the resume check, so a finished run
    # continues with a larger budget (or more steps) and the same --out.
    minutes: float | None = None
    batch: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ema_warmup: int = 200
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    snapshots: int = 3  # evaluate the last this many exports and average (Table 7's protocol)
    eval_episodes: int = 50
    eval_seed: int = 100_000
    eval_max_steps: int | None = None  # None: the task's own limit

    def validate(self) -> "PolicyTrainConfig":
        from ..policy.envs import ENV_NAMES

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.env in ENV_NAMES, f"env must be one of {ENV_NAMES}, got {self.env!r}")
        for name in ("demos", "steps", "batch", "log_every", "ckpt_every", "snapshots", "eval_episodes"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                 f"{name} must be an integer >= 1, "
                 f"got {getattr(self, name)!r}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}")
        need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(self.minutes is None or (math.isfinite(self.minutes) and self.minutes > 0),
             f"minutes must be a positive number or None, got {self.minutes!r}")
        need(self.snapshots * self.ckpt_every <= self.steps,
             "snapshots * ckpt_every must be <= steps: the "
             f"last {self.snapshots} exports every {self.ckpt_every} steps "
             f"need {self.snapshots * self.ckpt_every} steps, got steps={self.steps}")
        from ..policy.experts import check_expert
        from ..policy.obs import check_obs_features

        check_obs_features(self.env, self.obs_features)
        check_expert(self.env, self.expert)
        self.policy_config(1, 1)  # the policy's own checks
        return self

    def policy_config(self, obs_dim: int, action_dim: int):
        from ..policy.policies import PolicyConfig

        names = {f.name for f in fields(PolicyConfig)}
        return PolicyConfig(obs_dim=obs_dim, action_dim=action_dim,
                            **{k: v for k, v in asdict(self).items() if k in names}).validate()


# each task's recipe: what `drifting policy train --env ENV` uses where a flag does not say otherwise
# (fields of PolicyTrainConfig; the dataclass defaults hold for the rest). PushT's is the recipe of
# docs/results.md (issue 32): the chunk expert's demonstrations, keypoint observations, a narrower U-Net
# and 4 samples per window with 4 positives, which see more windows per CPU-minute.
PUSHT_RECIPE_STEPS = 16_000  # 54 min at one thread (AMD EPYC, beside other runs): score 0.867; 8000: 0.828
ENV_RECIPES: dict[str, dict] = {
    "pusht": dict(obs_features="keypoints", down_dims=(32, 64, 128), batch=32, lr=5e-4, n_gen=4, n_pos=4,
                  pos_radius=0.3, ckpt_every=250, steps=PUSHT_RECIPE_STEPS),
    # docs/results.md's ablation: 4 samples and 4 positives per window, 3000 steps of 16 windows (~15 min)
    "lunarlander": dict(batch=16, lr=3e-4, n_gen=4, n_pos=4),
}


def policy_recipe(env: str, kind: str = "drifting", **overrides) -> PolicyTrainConfig:
    """The :class:`PolicyTrainConfig` of ``env``'s recipe (:data:`ENV_RECIPES`) with ``overrides``; an unknown
    field is a ValueError naming the allowed ones."""
    names = {f.name for f in fields(PolicyTrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown PolicyTrainConfig fields {unknown}; allowed: {sorted(names)}")
    if env not in ENV_RECIPES:
        PolicyTrainConfig(env=env).validate()  # names the allowed envs
    return PolicyTrainConfig(**{"env": env, "kind": kind, **ENV_RECIPES[env], **overrides})


_EXTENDABLE = ("steps", "minutes")  # config fields a resumed run may change: it trains for longer


def load_policy(model_dir: str | Path):
    """A policy exported by :func:`train_policy` (``config.json`` + ``model.safetensors``)."""
    from ..policy.policies import PolicyConfig, build_policy

    cfg, state = load_export(model_dir)
    pc = PolicyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["policy"].items()})
    policy = build_policy(pc)
    policy.load_state_dict(state)
    return policy.eval(), cfg


def evaluate_policy(policy, env: str, episodes: int, *, seed: int = 100_000, max_steps: int | None = None,
                    progress: bool = False) -> dict:
    """Run ``policy`` on ``episodes`` seeded episodes (batched, receding horizon); the runner's metrics
    plus ``nfe``. Sampling noise comes from a generator seeded with ``seed``."""
    from ..policy.envs import run_episodes

    g = torch.Generator().manual_seed(seed)
    m = run_episodes(env, lambda hist: policy.predict_action(hist, generator=g), episodes, seed=seed,
                     n_obs_steps=policy.config.n_obs_steps, max_steps=max_steps, progress=progress)
    m["nfe"] = policy.config.nfe
    m["ms_per_chunk_1obs"] = chunk_latency_ms(policy, env, seed=seed)
    return m


def chunk_latency_ms(policy, env: str, *, seed: int = 100_000, repeats: int = 7) -> float:
    """A robot's latency: the median wall time of one ``predict_action`` call on a single observation
    history (batch 1), i.e. one action chunk of ``n_action_steps`` actions, after one warm-up call."""
    from ..policy.envs import make_env

    e = make_env(env)
    obs, _ = e.reset(seed=seed)
    e.close()
    # [1, To, obs_dim]
    hist = np.repeat(np.asarray(obs, np.float32)[None, None], policy.config.n_obs_steps, axis=1)
    g = torch.Generator().manual_seed(seed)
    policy.predict_action(hist, generator=g)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_action(hist, generator=g)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def evaluate_snapshot(model_dir: Path, env: str, episodes: int, *, seed: int, max_steps: int | None) -> dict:
    """:func:`evaluate_policy` of an exported snapshot, cached next to it (``eval_*.json``) so that
    re-running ``compare`` on finished runs only assembles the table."""
    cache = Path(model_dir) / f"eval_{env}_{episodes}ep_seed{seed}_max{max_steps or 'env'}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    pol, _ = load_policy(model_dir)
    m = evaluate_policy(pol, env, episodes, seed=seed, max_steps=max_steps)
    m = {"snapshot": Path(model_dir).name, **{k: v for k, v in m.items() if k != "scores"}}
    cache.write_text(json.dumps(jsonable(m)))
    return m


def train_policy(cfg: PolicyTrainConfig, out: str | Path, *, progress: bool = True,
                 resume: bool = True) -> dict:
    """Train ``cfg.kind`` on ``cfg.env``'s cached demonstrations; export EMA snapshots; evaluate the last
    ``cfg.snapshots`` of them. Returns the protocol's metrics (also in ``OUT/metrics.json``)."""
    from ..policy.data import Normalizer, WindowDataset
    from ..policy.envs import env_spec
    from ..policy.experts import cached_demos
    from ..policy.obs import obs_features
    from ..policy.policies import build_policy, config_dict

    cfg.validate()
    out = Path(out)
    demos = cached_demos(cfg.env, cfg.demos, seed=cfg.demo_seed, progress=progress, expert=cfg.expert)
    spec = env_spec(cfg.env)
    pc = cfg.policy_config(spec.obs_dim, spec.action_dim)
    ds = WindowDataset(demos.obs, demos.action, demos.episode_ends, n_obs_steps=pc.n_obs_steps,
                       horizon=pc.horizon, n_action_steps=pc.n_action_steps)
    torch.manual_seed(cfg.seed)
    feats = obs_features(torch.as_tensor(demos.obs), pc.obs_features)  # [T, F]
    policy = build_policy(pc, Normalizer.fit(feats), Normalizer.fit(demos.action))
    use_neighbors = pc.kind == "drifting" and pc.n_pos > 1  # [W, n_pos] positives' windows, computed once
    neighbors = ds.neighbors(pc.n_pos, policy.embed_obs, pc.pos_radius) if use_neighbors else None
    opt = torch.optim.AdamW(policy.model.parameters(), lr=cfg.lr, betas=(0.95, 0.999),
                            weight_decay=cfg.weight_decay)
    ema = EMA(policy, (cfg.ema_decay,), warmup_steps=cfg.ema_warmup)
    config = jsonable(asdict(cfg))
    resumable = {k: v for k, v in config.items() if k not in _EXTENDABLE}  # what a resume must match
    run = Trainer(out, "policy", resumable, policy, opt, ema=ema, steps=cfg.steps, resume=resume,
                  progress=progress, desc=f"{cfg.kind} policy", minutes=cfg.minutes,
                  defaults={k: v for k, v in jsonable(asdict(PolicyTrainConfig())).items()
                            if k not in _EXTENDABLE},
                  lr_at=lambda i, _: warmup_lr(cfg.lr, i, cfg.warmup), grad_clip=cfg.grad_clip,
                  log_every=cfg.log_every, ckpt_every=cfg.ckpt_every)
    export_cfg = {"policy": config_dict(pc), "train": config}
    best = ema.models[cfg.ema_decay]

    def step(i: int):
        g = step_generator(cfg.seed, i)
        batch = ds.batch(torch.randint(len(ds), (cfg.batch,), generator=g), neighbors)
        return policy.compute_loss(batch, generator=g)

    def snapshot(done: int, last: bool) -> None:
        # a snapshot for the protocol (before the checkpoint: a crash re-writes it)
        if done % cfg.ckpt_every == 0:
            snap = out / "snapshots" / f"step_{done:07d}"
            for stale in snap.glob("eval_*.json"):  # evaluations of an earlier run's weights
                stale.unlink()
            export_model(snap, best, export_cfg)
            (snap / "train_time.json").write_text(json.dumps({"step": done, "train_seconds": run.elapsed()}))

    run.fit(step, after=snapshot)
    export_model(out / "model", best, export_cfg)
    (out / "history.json").write_text(json.dumps(run.history))
    snaps = sorted((out / "snapshots").glob("step_*"))[-cfg.snapshots:]
    if not snaps:
        raise RuntimeError(f"{out} has no snapshot to evaluate: the run ended (--minutes {cfg.minutes}) "
                           "before "
                           f"its first export at step {cfg.ckpt_every}; give it more time or a smaller "
                           "--ckpt-every")
    per = [evaluate_snapshot(d, cfg.env, cfg.eval_episodes, seed=cfg.eval_seed, max_steps=cfg.eval_max_steps)
           for d in snaps]
    metrics = protocol_metrics(cfg.env, per)
    metrics.update(kind=cfg.kind, env=cfg.env, nfe=pc.nfe, train_seconds=run.train_seconds,
                   steps=run.history["step"][-1] if run.history["step"] else cfg.steps,
                   demos_kept=int(demos.n_episodes), demo_steps=int(len(demos.obs)), expert=demos.stats,
                   expert_score=expert_score(cfg.env, demos.all_scores))
    (out / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2))
    return metrics


def learning_curve(run_dir: str | Path, *, episodes: int | None = None, seed: int | None = None,
                   every: int = 1) -> dict:
    """Every snapshot of a finished or running :func:`train_policy` run, evaluated (cached next to it) and
    placed at its training time: ``{"env", "kind", "label", "points": [{"step", "train_seconds",
    "score", "success_rate", ...}]}``. ``score``: PushT Diffusion Policy's ``mean_reward_dp``,
    LunarLander the mean return. Episodes and seed default to the run's own protocol. ``every``: evaluate
    every this many snapshots (counted back from the last, which is always in)."""
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    run_dir = Path(run_dir)
    snaps = sorted((run_dir / "snapshots").glob("step_*"))[::-1][::every][::-1]
    if not snaps:
        raise FileNotFoundError(f"{run_dir} has no snapshots/step_* to evaluate "
                                "(is it a `policy train` --out?)")
    export, _ = load_export(snaps[0])
    train = export["train"]
    env, episodes = train["env"], episodes or train["eval_episodes"]
    seed = train["eval_seed"] if seed is None else seed
    times = {}  # step -> training seconds, from the log
    log = run_dir / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            times[int(r["step"])] = float(r["time"])
    points = []
    for d in snaps:
        step = int(d.name.split("_")[1])
        m = evaluate_snapshot(d, env, episodes, seed=seed, max_steps=train.get("eval_max_steps"))
        known = [s for s in times if s <= step]
        stamp = d / "train_time.json"  # written at the export; older runs: the log's last time before it
        seconds = (json.loads(stamp.read_text())["train_seconds"] if stamp.is_file()
                   else times[max(known)] if known else float("nan"))
        points.append({"step": step, "train_seconds": seconds,
                       "score": m["mean_reward_dp"] if env == "pusht" else m["mean_score"],
                       "success_rate": m["success_rate"], "mean_score": m["mean_score"]})
    label = curve_label(train)
    return {"env": env, "kind": train["kind"], "label": label, "run": str(run_dir), "episodes": episodes,
            "seed": seed, "points": points}


def curve_label(train: dict) -> str:
    """A learning curve's legend: the policy and the settings a reader compares runs by (a run's exported
    ``train`` config)."""
    parts = [train.get("obs_features", "raw"), "U-Net " + "-".join(map(str, train["down_dims"])),
             f"batch {train['batch']}", f"lr {train['lr']:g}", f"EMA {train['ema_decay']:g}"]
    if train["kind"] == "diffusion":
        parts.append(f"{train['scheduler'].upper()} {train['inference_steps']}")
    if train["kind"] == "drifting":
        parts.append(f"n_gen {train['n_gen']}, n_pos {train['n_pos']}" + (
            ", per timestep" if train.get("per_timestep") else ""))
    if train.get("expert"):
        parts.append(f"{train['expert']} expert")
    return f"{train['kind']} ({', '.join(parts)})"


def plot_learning_curves(curves: list[dict], path: str | Path, *, title: str = "") -> None:
    """Score against training minutes, one line per run (:func:`learning_curve` results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6 + 0.22 * len(curves)))
    for c in curves:
        pts = c["points"]
        ax.plot([p["train_seconds"] / 60 for p in pts], [p["score"] for p in pts], marker="o", ms=3,
                label=c["label"])
    env = curves[0]["env"] if curves else ""
    ax.set(xlabel="training minutes (1 CPU thread)",
           ylabel="score (max coverage / 0.95, clipped)" if env == "pusht" else "mean return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)


def expert_score(env: str, all_scores: np.ndarray) -> float:
    """The expert's score over all its attempted demonstration episodes, on the policies' scale (PushT:
    mean of max coverage / 0.95 clipped to 1; LunarLander: mean return)."""
    from ..policy.envs import pusht_score

    return pusht_score(all_scores) if env == "pusht" else float(np.mean(all_scores))


def protocol_metrics(env: str, per_snapshot: list[dict]) -> dict:
    """The mean over snapshots of success rate, score and time per action (Table 7's protocol)."""
    keys = ["success_rate", "mean_score", "ms_per_action", "ms_per_chunk_1obs"] + (
        ["mean_reward_dp"] if env == "pusht" else [])
    out = {k: float(np.mean([p[k] for p in per_snapshot])) for k in keys}
    out["per_snapshot"] = per_snapshot
    return out


def format_table(rows: list[dict]) -> str:
    """The side-by-side markdown table of :func:`train_policy` results. "score" is PushT's Diffusion Policy
    score (mean over episodes of max coverage / 0.95, clipped to 1) and LunarLander's mean return."""
    lines = ["| task | policy | NFE | success rate | score | mean max coverage | expert (score, success) | "
             "ms per action (batched eval) | ms per chunk (1 obs) | train s | steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in rows:
        pusht = m["env"] == "pusht"
        score = m["mean_reward_dp"] if pusht else m["mean_score"]
        cover = f"{m['mean_score']:.3f}" if pusht else "-"
        ex = m.get("expert") or {}
        expert = (f"{m['expert_score']:.3f}, {ex.get('success_rate', float('nan')):.3f}"
                  if "expert_score" in m else "-")
        lines.append(f"| {m['env']} | {m['kind']} | {m['nfe']} | {m['success_rate']:.3f} | {score:.3f} | "
                     f"{cover} | {expert} | {m['ms_per_action']:.2f} | {m['ms_per_chunk_1obs']:.1f} | "
                     f"{m['train_seconds']:.0f} | {m.get('steps', '-')} |")
    return "\n".join(lines)

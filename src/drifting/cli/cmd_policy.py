"""``drifting policy collect | train | eval | compare``: Drifting Policy vs Diffusion Policy
(:mod:`drifting.recipes.policy`)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ..recipes.policy import evaluate_policy, format_table, load_policy, policy_recipe, train_policy
from ..training.checkpoint import jsonable
from .args import add_resume_options, add_threads_option, resume_flag

_TRAIN_FLAGS = ("demos", "steps", "batch", "lr", "n_gen", "n_pos", "pos_radius", "scheduler",
                "inference_steps", "eval_episodes", "snapshots", "ckpt_every", "seed", "horizon",
                "n_obs_steps", "n_action_steps", "eval_max_steps", "minutes", "obs_features", "expert",
                "ema_decay")
_BOOL_FLAGS = ("per_timestep",)
_TUPLE_FLAGS = ("down_dims",)


def _train_overrides(a: argparse.Namespace) -> dict:
    out = {k: getattr(a, k) for k in _TRAIN_FLAGS + _BOOL_FLAGS if getattr(a, k, None) is not None}
    return out | {k: tuple(getattr(a, k)) for k in _TUPLE_FLAGS if getattr(a, k, None) is not None}


def cmd_policy(a: argparse.Namespace) -> int:
    from ..policy.experts import cached_demos

    if a.action == "collect":
        d = cached_demos(a.env, a.episodes, seed=a.seed or 0, progress=not a.no_progress, expert=a.expert)
        s = d.stats
        print(f"{a.env}: kept {d.n_episodes} of {s.get('n_attempted')} expert episodes ({len(d.obs)} steps); "
              f"expert mean score {s.get('mean_score'):.3f}, success rate {s.get('success_rate'):.3f}")
        return 0
    if a.action == "curve":
        return _cmd_curve(a)
    if a.action == "eval":
        pol, cfg = load_policy(a.model)
        if a.scheduler or a.inference_steps:  # e.g. DDIM with fewer steps for a DDPM-trained policy
            pc = replace(pol.config, scheduler=a.scheduler or pol.config.scheduler,
                         inference_steps=a.inference_steps or pol.config.inference_steps)
            from ..policy.policies import build_policy

            state = pol.state_dict()
            pol = build_policy(pc)
            pol.load_state_dict(state)
        env = cfg["train"]["env"]
        m = evaluate_policy(pol.eval(), env, a.episodes, seed=a.seed if a.seed is not None else 100_000,
                            progress=not a.no_progress)
        score = (f"score {m['mean_reward_dp']:.3f} (mean max coverage {m['mean_score']:.3f})"
                 if env == "pusht" else f"mean return {m['mean_score']:.3f}")
        print(f"{env}, {pol.config.kind} policy, NFE {m['nfe']}: success rate {m['success_rate']:.3f}, "
              f"{score}, seeds {m['seed']}..{m['seed'] + m['n_episodes'] - 1}, "
              f"{m['ms_per_action']:.2f} ms per action "
              f"over {m['n_episodes']} episodes (batched), {m['ms_per_chunk_1obs']:.1f} ms per chunk "
              f"of {pol.config.n_action_steps} for one observation")
        return 0
    envs = [a.env] if a.action == "train" else a.envs
    kinds = [a.kind] if a.action == "train" else ["drifting", "diffusion"]
    rows = []
    t0 = time.perf_counter()
    for env in envs:
        for kind in kinds:
            cfg = policy_recipe(env, kind, **_train_overrides(a)).validate()
            sub = Path(a.out) if a.action == "train" else Path(a.out) / env / kind
            rows.append(train_policy(cfg, sub, progress=not a.no_progress, resume=resume_flag(a, sub)))
    print(format_table(rows))
    if a.action == "compare":
        (Path(a.out) / "table.md").write_text(format_table(rows) + "\n")
        (Path(a.out) / "results.json").write_text(json.dumps(jsonable(rows), indent=2))
        print(f"wrote {Path(a.out) / 'table.md'} and results.json ({time.perf_counter() - t0:.0f} s)")
    return 0


def _cmd_curve(a: argparse.Namespace) -> int:
    from ..recipes.policy import learning_curve, plot_learning_curves

    if len(a.every) not in (1, len(a.runs)):
        raise ValueError(f"policy curve: --every takes one value or one per run ({len(a.runs)} runs), "
                         f"got {len(a.every)}")
    every = a.every * len(a.runs) if len(a.every) == 1 else a.every  # a .json input's value is unused
    curves = []
    for r, k in zip(a.runs, every):
        if Path(r).suffix == ".json" and Path(r).is_file():  # an earlier `policy curve`'s curves, as drawn
            curves += json.loads(Path(r).read_text())
        else:
            curves.append(learning_curve(r, episodes=a.eval_episodes, seed=a.seed, every=k))
    envs = {c["env"] for c in curves}
    if len(envs) != 1:
        raise ValueError(f"policy curve: the runs are on different tasks {sorted(envs)}; "
                         "give one task's runs")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_learning_curves(curves, out.with_suffix(".png"), title=f"{envs.pop()}: score against training time")
    out.with_suffix(".json").write_text(json.dumps(jsonable(curves), indent=2))
    for c in curves:
        print(c["label"] + ": " + ", ".join(f"{p['train_seconds'] / 60:.1f} min {p['score']:.3f}"
                                           for p in c["points"]))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.json')}")
    return 0


def add_policy_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("policy",
                              help="robot-control policies: Drifting Policy vs Diffusion Policy (§5.3)",
                              description="collect expert demonstrations, train, evaluate, or compare both "
                              "policies on PushT and LunarLanderContinuous (see docs/policy_experts.md)")
    p.add_argument("action", choices=("collect", "train", "eval", "compare", "curve"))
    p.add_argument("model", nargs="?", help="eval: a policy directory (OUT/model or OUT/snapshots/step_N)")
    p.add_argument("runs", nargs="*", help="curve: more `policy train` output directories (after the first), "
                   "or the .json of an earlier `policy curve` (its curves are drawn as they were)")
    p.add_argument("--env", default="pusht", help="pusht or lunarlander")
    p.add_argument("--envs", nargs="+", default=["pusht", "lunarlander"], help="compare: the tasks")
    p.add_argument("--kind", default="drifting", help="train: drifting, diffusion or regression")
    p.add_argument("--out", default=None, help="train / compare: output directory")
    p.add_argument("--episodes", type=int, default=50,
                   help="collect: attempted expert episodes; eval: episodes")
    for k in _TRAIN_FLAGS:
        typ = (str if k in ("scheduler", "obs_features", "expert")
               else float if k in ("lr", "pos_radius", "minutes", "ema_decay") else int)
        p.add_argument("--" + k.replace("_", "-"), type=typ, default=None)
    p.add_argument("--down-dims", type=int, nargs="+", default=None,
                   help="the U-Net's channel widths per level (default 64 128 256)")
    p.add_argument("--per-timestep", action=argparse.BooleanOptionalAction, default=None,
                   help="drifting: one field per action timestep (Tp problems of act_dim numbers) instead of "
                        "one on the whole sequence")
    p.add_argument("--every", type=int, nargs="+", default=[1],
                   help="curve: evaluate every K-th snapshot (and the last): one K for all runs, or one per "
                        "run")
    p.add_argument("--no-progress", action="store_true")
    add_resume_options(p)
    add_threads_option(p)
    p.set_defaults(func=_checked_cmd)
    return p


def _checked_cmd(a: argparse.Namespace) -> int:
    if a.action in ("train", "compare") and not a.out:
        raise ValueError(f"policy {a.action} needs --out DIR")
    if a.action == "eval" and not a.model:
        raise ValueError("policy eval needs a model directory")
    if a.action == "curve":
        if not a.model or not a.out:
            raise ValueError("policy curve needs run directories and --out PATH "
                             "(the figure's .png and .json)")
        a.runs = [a.model, *a.runs]
    return cmd_policy(a)

"""Point-cloud generation with the drifting loss: the toy setting of the paper (Alg. 1, Fig. 3-4)
on a built-in 2-D target or on a user's ``[n, d]`` file.

One training step (Alg. 1): draw N noise vectors, generate ``x = f(eps)``, draw P positives,
and minimize :func:`drifting.drifting_loss` with the generated batch as its own negatives.
The raw points form a single feature group (B = 1 problem, C = d channels), so feature
normalization (A.6) makes the method independent of the data's units.

Randomness of step ``t`` comes from a generator seeded by ``(seed, t)``, so a run resumed from
its checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.points import TARGETS, load_points, sample_target
from ..eval.distances import compare
from ..field import FieldOptions
from ..loss import drifting_loss
from ..models.mlp import MLPConfig, MLPGenerator
from ..negatives import NegativeQueue
from ..training.checkpoint import export_model, jsonable
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.rng import step_generator

FLOOR_DRAWS = 3  # independent data sets averaged for the data-vs-data floor
_TARGET_ALIASES = {"8-gaussians": "8gaussians", "two-moons": "moons", "swiss-roll": "swissroll"}


@dataclass
class PointsConfig:
    """Everything a point-cloud run depends on (saved beside its checkpoint and export)."""

    data: str = "checkerboard"  # built-in target name or path to .npy/.csv [n, d]
    steps: int = 4000
    # 0 in batch, n_pos, noise_dim and min_lr_ratio < 0: chosen by the data's dimension d (resolved(); the
    # saved config holds the resolved values, except noise_dim: the model's config.json has it)
    batch: int = 0  # N generated samples per step (also the negatives); 0: 256 for d <= 2, 512 for d >= 3
    n_pos: int = 0  # P positive (data) samples per step; 0: = batch
    # the generated samples of the last steps, kept as extra negatives (detached, weight 1; 0 = off): V^- then
    # averages over batch - 1 + neg_queue samples at no generator cost (drifting.negatives)
    neg_queue: int = 0
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = -1.0  # cosine decay to lr * min_lr_ratio; < 0: 0.05 for d <= 2, 0 for d >= 3
    grad_clip: float = 2.0
    # an exponential moving average of the weights (0 = off): samples, snapshots and the export come from it
    ema_decay: float = 0.0
    hidden: int = 256
    depth: int = 3
    noise_dim: int = 0  # 0: 8 for d <= 2, d for d >= 3
    style_tokens: int = 0  # random style embeddings (A.2); 0 = Gaussian noise only
    codebook_size: int = 64
    # the field (drifting.FieldOptions): temperatures, kernel normalization (Table 11: both | y | none, or
    # separate, Eq. 8-10), a V+ - r V- (Table 1), feature and drift normalization (A.6)
    field_options: FieldOptions = FieldOptions()
    seed: int = 0
    n_samples: int = 5000  # k points written to samples.npy and used for the metrics
    heldout_fraction: float = 0.2  # for a user file: rows kept out of training for the metrics
    log_every: int = 10
    ckpt_every: int = 500
    n_snapshots: int = 6  # evolution snapshots (log-spaced steps) for the figures
    init_center: tuple[float, ...] | None = None  # start q near this point (Fig. 3)
    init_spread: float = 0.3

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.batch == 0 or self.batch >= 2,
             f"batch must be >= 2 (the generated samples are their own negatives) or 0 (by the data's "
             f"dimension), got {self.batch}")
        need(self.n_pos >= 0, f"n_pos must be >= 1 or 0 (= batch), got {self.n_pos}")
        need(self.noise_dim >= 0,
             f"noise_dim must be >= 1 or 0 (by the data's dimension), got {self.noise_dim}")
        need(self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1] or < 0 (by the data's dimension), "
             f"got {self.min_lr_ratio}")
        need(self.neg_queue >= 0, f"neg_queue must be >= 0 (0 = off), got {self.neg_queue}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.n_samples >= 2, f"n_samples must be >= 2, got {self.n_samples}")
        need(0 < self.heldout_fraction < 1,
             f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        need(isinstance(self.field_options, FieldOptions),
             f"field_options must be a FieldOptions, got {type(self.field_options).__name__}")
        need(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")


    def resolved(self, d: int) -> PointsConfig:
        """This config with the dimension-chosen defaults filled in for data of dimension ``d``.

        In 2-D the batch of 256 with 8 noise dimensions is the toy studies' setting. From d = 3 on, thin
        structures need more samples per step and no spare noise dimensions: on a helix of radius 1 and
        noise 0.05 (benchmarks/helix_spread.py, docs/results.md) 256 samples and noise_dim 8 leave the helix
        1.64-1.69x too thick, 512 samples with noise_dim = d and the lr decayed to 0 1.40-1.48x (3 seeds on
        each of the two CPU kinds)."""
        wide = d >= 3
        batch = self.batch or (512 if wide else 256)
        return replace(self, batch=batch, n_pos=self.n_pos or batch,
                       min_lr_ratio=self.min_lr_ratio if self.min_lr_ratio >= 0 else (0.0 if wide else 0.05))

    def noise_dim_for(self, d: int) -> int:
        """The generator's noise dimension for data of dimension ``d`` (``noise_dim``, or the default of
        :meth:`resolved`: 8 for d <= 2, d from 3 on)."""
        return self.noise_dim or (d if d >= 3 else max(8, 2 * d))


@dataclass
class PointsData:
    """Training data access plus the held-out sets for the metrics, in standardized units."""

    name: str
    dim: int
    mean: torch.Tensor  # [d]
    std: torch.Tensor  # [d]
    heldout: torch.Tensor  # [h, d] original units
    floor_refs: list[torch.Tensor]  # FLOOR_DRAWS x [k', d] original units: data sets for the floor
    train: torch.Tensor | None = None  # [n, d] standardized (user file); None for a target
    target: str | None = None

    def positives(self, n: int, g: torch.Generator) -> torch.Tensor:
        """P positives for one step, standardized ``[n, d]``."""
        if self.target is not None:
            return (sample_target(self.target, n, generator=g) - self.mean) / self.std
        ntr = self.train.shape[0]
        idx = torch.randperm(ntr, generator=g)[:n] if n <= ntr else torch.randint(ntr, (n,), generator=g)
        return self.train[idx]

    def to_original(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def prepare_data(cfg: PointsConfig) -> PointsData:
    """Resolve ``cfg.data`` to a built-in target or a file; split and standardize."""
    name = _TARGET_ALIASES.get(cfg.data, cfg.data)
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    if name in TARGETS and not Path(cfg.data).exists():
        ref = sample_target(name, 20000, generator=g)
        mean, std = ref.mean(0), ref.std(0).clamp_min(1e-8)
        heldout = sample_target(name, cfg.n_samples, generator=g)
        floor_refs = [sample_target(name, cfg.n_samples, generator=g) for _ in range(FLOOR_DRAWS)]
        return PointsData(name, 2, mean, std, heldout, floor_refs, target=name)
    path = Path(cfg.data)
    if not path.exists():
        raise ValueError(
            f"DATA {cfg.data!r} is neither an existing .npy/.csv file nor a built-in target "
            f"({', '.join(TARGETS)})"
        )
    pts = load_points(path)  # [n, d] float32, validated
    n = pts.shape[0]
    n_held = max(1, int(round(cfg.heldout_fraction * n)))
    if n - n_held < 2:
        raise ValueError(f"{path}: {n} rows is too few to hold out {n_held} for the metrics; need at least 4")
    perm = torch.randperm(n, generator=g)
    heldout, train = pts[perm[:n_held]], pts[perm[n_held:]]
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    k = min(cfg.n_samples, train.shape[0])
    floor_refs = [train[torch.randperm(train.shape[0], generator=g)[:k]] for _ in range(FLOOR_DRAWS)]
    return PointsData(path.name, pts.shape[1], mean, std, heldout, floor_refs, train=(train - mean) / std)



def _snapshot_steps(steps: int, n: int) -> list[int]:
    """Log-spaced steps in [0, steps], always including 0 and the end."""
    if n <= 1:
        return [steps]
    pts = {0, steps}
    for v in np.geomspace(10, max(steps, 11), num=max(n - 1, 1)):
        pts.add(min(int(round(v)), steps))
    return sorted(pts)


def _lr_at(cfg: PointsConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclass
class FitResult:
    model: MLPGenerator
    data: PointsData
    samples: np.ndarray  # [k, d] original units
    metrics: dict
    history: dict = field(default_factory=dict)


def fit_points(
    cfg: PointsConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    resume: bool = True,
    figures: bool = True,
) -> FitResult:
    """Train an MLP generator on ``cfg.data`` with the drifting loss; write results to ``out_dir``.

    Files written: ``samples.npy``, ``metrics.json``, ``curves.png``, ``evolution.png`` (d = 2),
    ``model/`` (``config.json`` + ``model.safetensors``), ``log.jsonl`` and ``checkpoint.pt``. ``resume``:
    continue ``OUT/checkpoint.pt`` when it is there (same configuration); False starts over.
    """
    cfg.validate()
    data = prepare_data(cfg)
    d = data.dim
    cfg = cfg.resolved(d)
    torch.manual_seed(cfg.seed)
    mcfg = MLPConfig(noise_dim=cfg.noise_dim_for(d), out_dim=d, hidden=cfg.hidden, depth=cfg.depth,
                     style_tokens=cfg.style_tokens, codebook_size=cfg.codebook_size)
    model = MLPGenerator(mcfg)
    if cfg.init_center is not None:
        if len(cfg.init_center) != d:
            raise ValueError(f"init_center must have {d} coordinates, got {cfg.init_center}")
        center = (torch.tensor(cfg.init_center, dtype=torch.float32) - data.mean) / data.std
        model.init_output(center, cfg.init_spread / float(data.std.mean()))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ema = EMA(model, (cfg.ema_decay,)) if cfg.ema_decay > 0 else None
    sampler = model if ema is None else ema.models[cfg.ema_decay]  # what samples are drawn from

    out = Path(out_dir) if out_dir is not None else None
    queue = NegativeQueue(cfg.neg_queue, 1) if cfg.neg_queue else None
    run = Trainer(out, "points", jsonable(asdict(cfg)), model, opt, ema=ema, steps=cfg.steps, resume=resume,
                  progress=progress, desc=f"fit-points {data.name}", lr_at=lambda i, _: _lr_at(cfg, i),
                  grad_clip=cfg.grad_clip, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                  history_keys=("V2",), parts={} if queue is None else {"neg_queue": queue},
                  defaults=jsonable(asdict(PointsConfig())))
    history = run.history
    history.setdefault("snapshots", {})  # d = 2: samples at log-spaced steps (Fig. 4)
    snap_steps = _snapshot_steps(cfg.steps, cfg.n_snapshots)
    snap_noise, snap_style = model.draw_noise(2000, torch.Generator().manual_seed(cfg.seed + 1))

    def snapshot(done: int, last: bool = False) -> None:
        if done in snap_steps and d == 2:
            with run.paused(), torch.no_grad():
                pts = data.to_original(sampler(snap_noise, style=snap_style))  # [2000, 2]
            history["snapshots"][str(done)] = pts.tolist()

    def step(i: int):  # Alg. 1: the generated batch is its own negatives
        g = step_generator(cfg.seed, i)
        noise, style = model.draw_noise(cfg.batch, g)  # [N, noise_dim], [N, tokens] or None
        y_pos = data.positives(cfg.n_pos, g)  # [P, d]
        x = model(noise, style=style)  # [N, d]
        queued = None  # [1, Q, d]: earlier steps' samples
        if queue is not None:
            one = torch.zeros(1, dtype=torch.long)  # a single class
            queued = queue.take(one)["x"][None, :, 0] if queue.ready(one) else None
            queue.push({"x": x[:, None]}, one)
        loss, stats = drifting_loss(x[None], y_pos[None], queued, options=cfg.field_options)
        return loss, {"V2": sum(stats[f"x/V2@{t:g}"] for t in cfg.field_options.temperatures), **stats}

    if run.start == 0:
        snapshot(0)
    model.train()
    run.fit(step, after=snapshot)

    model.eval()
    with torch.no_grad():
        samples = data.to_original(sampler.sample(cfg.n_samples,
                                                generator=torch.Generator().manual_seed(cfg.seed + 2)))
    metrics = _fit_metrics(cfg, data, samples, history)
    samples_np = samples.numpy().astype(np.float32)
    if out is not None:
        _write_fit(out, cfg, data, sampler, mcfg, samples_np, metrics, history, figures)
    return FitResult(sampler, data, samples_np, metrics, history)




def _fit_metrics(cfg: PointsConfig, data: PointsData, samples: torch.Tensor, history: dict) -> dict:
    """Energy distance and MMD^2 of the samples ``[n, d]`` against the held-out data, beside the floor of as
    many real points (averaged over :data:`FLOOR_DRAWS` reference sets: a noisy V-statistic itself)."""
    k = min(cfg.n_samples, data.floor_refs[0].shape[0])
    floors = [compare(ref[:k], data.heldout) for ref in data.floor_refs]
    metrics = {
        "data": data.name,
        "dim": data.dim,
        "steps": cfg.steps,
        "train_seconds": history["time"][-1] if history["time"] else 0.0,
        "n_compared": k,
        "n_heldout": int(data.heldout.shape[0]),
        "samples_vs_heldout": compare(samples[:k], data.heldout),
        "data_vs_heldout": {key: float(np.mean([f[key] for f in floors])) for key in floors[0]},
        "floor_draws": floors,
    }
    floor = metrics["data_vs_heldout"]["energy_distance"]
    metrics["energy_ratio_to_floor"] = metrics["samples_vs_heldout"]["energy_distance"] / max(floor, 1e-30)
    return metrics


def _write_fit(out: Path, cfg: PointsConfig, data: PointsData, sampler, mcfg: MLPConfig, samples: np.ndarray,
               metrics: dict, history: dict, figures: bool) -> None:
    """``samples.npy``, ``metrics.json``, ``model/`` and (``figures``) ``curves.png`` / ``evolution.png``."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", samples)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    export_model(out / "model", sampler, {
        "generator": "MLPGenerator", **asdict(mcfg),
        "data_mean": data.mean.tolist(), "data_std": data.std.tolist(),
        "points_config": jsonable(asdict(cfg)),
    })
    if figures:
        from ..eval import figures as fig

        fig.plot_curves(history, out / "curves.png", title=f"drifting loss on {data.name}")
        if data.dim == 2:
            fig.plot_evolution(history, data.heldout, out / "evolution.png", title=data.name)


def load_point_generator(directory: str | Path) -> tuple[MLPGenerator, torch.Tensor, torch.Tensor]:
    """Load an exported point generator (``DIR/model``): ``(model, data_mean, data_std)``."""
    from ..training.checkpoint import load_export

    config, tensors = load_export(directory)
    if config.get("generator") != "MLPGenerator":
        raise ValueError(f"{directory} does not hold an MLPGenerator export "
                         f"(generator={config.get('generator')!r})")
    fields = {k: config[k]
              for k in ("noise_dim", "out_dim", "hidden", "depth", "style_tokens", "codebook_size")}
    model = MLPGenerator(MLPConfig(**fields))
    model.load_state_dict(tensors)
    model.eval()
    return model, torch.tensor(config["data_mean"]), torch.tensor(config["data_std"])


def sample_points(directory: str | Path, n: int, *, seed: int = 0) -> np.ndarray:
    """Draw ``n`` points ``[n, d]`` (original units) from an exported point generator."""
    model, mean, std = load_point_generator(directory)
    with torch.no_grad():
        x = model.sample(n, generator=torch.Generator().manual_seed(seed))
    return (x * std + mean).numpy()

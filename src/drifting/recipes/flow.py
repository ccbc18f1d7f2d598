"""Class-conditional flow matching on the DiT backbone: a multi-step peer baseline for the
one-step drifting generator, and the teacher of Drift-RAE distillation.

Drift-RAE §3.1 (Eq. 1-4), with the paper's time convention (t = 0 data, t = 1 noise):

    y_t = (1 - t) y + t eps,   t in [0, 1], eps ~ N(0, I)                        (Eq. 1)
    dy_t = v(y_t, t) dt,  integrated from t = 1 (noise) down to t = 0 (data)    (Eq. 2)
    v(y_t, t) = E[eps - y | y_t]                                                (Eq. 3)
    L(theta) = int_0^1 E ||v_theta(y_t, t, c) - (eps - y)||^2 dt                (Eq. 4)

The velocity network is the generator preset's network (a :class:`~drifting.models.dit.DriftingDiT` or a
:class:`~drifting.models.convnet.ConvGenerator`, the same backbone as the drifting run it is compared with)
built with ``time_cond=True`` (a DiT timestep embedder added to the conditioning vector), no style tokens,
and ``K + 1`` class embeddings: index ``K`` (the last one) is the "null" class that replaces a
label with probability ``label_dropout`` during training, for classifier-free guidance
``v = v_uncond + s (v_cond - v_uncond)`` at sampling time. Sampling is Euler from t = 1 to t = 0,
``y_{t-dt} = y_t - dt v(y_t, t, c)``; with one step it is the one-step map ``G(z) = z - v(z, 1)``
that Drift-RAE's student starts from.

One training step: draw ``batch`` training images uniformly (pixels scaled to [-1, 1] by
:meth:`ImageDataset.to_tensor`, as in the image trainer, so both models share a pixel range), noise,
times and the label-dropout mask from a generator seeded by ``(seed, step)``; Eq. 4's loss; AdamW
with linear warm-up; gradient clipping; EMA. A resumed run repeats an uninterrupted one bit for bit.

With ``tokenizer`` set (e.g. ``"rae:DIR"``), the training images are encoded once and ``y`` are
latents ``[c, h, w]``: the Drift-RAE teacher, a flow model in RAE latent space. Samples are decoded
for grids, and the export records the tokenizer (``model/tokenizer.json``).

Module notes: the checkpointing, logging, progress bar and grid writing are those of
:mod:`drifting.recipes.image_training`.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import load_dataset
from ..models.generators import (
    build_generator,
    config_fields,
    generator_config,
    generator_names,
    load_generator_model,
)
from ..models.onestep import OneStepGenerator
from ..models.tokenizer import Tokenizer
from ..models.tokenizers import build_tokenizer
from ..training.checkpoint import jsonable
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.rng import step_generator
from ..training.schedules import warmup_lr
from . import meanflow as mean_flow
from .image_sampling import to_uint8, write_grid, write_model_tokenizer
from .paths import flow_path

TIME_SAMPLING = ("uniform", "logit-normal")
# generator config fields the recipe sets itself (from the data set, and the flow model's conventions).
_RESERVED_FIELDS = ("input_size", "in_channels", "num_classes", "time_cond", "interval_cond", "style_tokens",
                    "alpha_mlp")
OBJECTIVES = ("flow", "meanflow")


@dataclass
class FlowTrainConfig:
    """Everything a flow-matching run depends on (saved in its checkpoint and beside its export)."""

    data: str = "fashion-mnist"  # a data.images.load_dataset spec
    generator: str = "cpu-small"  # generator preset (DiT or conv), built with time_cond=True, style_tokens=0
    # further overrides of the preset's config (DiTConfig / ConvGenConfig) (e.g. {"hidden": 32, "depth": 1}
    # for tests); not the reserved fields
    generator_overrides: dict = field(default_factory=dict)
    steps: int = 1000
    # a wall-time budget (minutes of training, sample grids excluded): the run ends at the first step past it,
    # or at `steps`, whichever comes first (None: steps only); for peers at equal wall time (`drifting peers`)
    minutes: float | None = None
    batch: int = 80
    # the image trainer's optimizer settings (same backbone, same budget): AdamW(0.9, 0.95)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    # the last lr_decay fraction of training (of `steps`, or of `minutes` with a time budget) ramps the lr
    # linearly to 0, as ImageTrainConfig.lr_decay (0 = constant after the warm-up)
    lr_decay: float = 0.0
    grad_clip: float = 2.0  # <= 0: no clipping (the norm is still logged)
    ema_decays: tuple[float, ...] = (0.999,)
    ema_warmup: int = 1000  # training.ema's warm-up, as ImageTrainConfig (0 = off)
    label_dropout: float = 0.1  # P(label -> null class K), for classifier-free guidance
    # "uniform": t ~ U[0, 1), Eq. 4's integral taken literally. Default because this model is also
    # the teacher whose v(z, t = 1) is the one-step student G(z) = z - v(z, 1): logit-normal
    # (SD3's choice for many-step sampling) puts almost no mass near t = 1 (density -> 0 there).
    # "logit-normal": t = sigmoid(n), n ~ N(0, 1), which concentrates on the middle of the path.
    time_sampling: str = "uniform"
    # "flow": Eq. 4 (the velocity v(y_t, t)). "meanflow": MeanFlow's average velocity u(y_t, r, t)
    # (drifting.recipes.meanflow), a one-step generator x = z - u(z, 0, 1); the network then also embeds
    # h = t - r, and (r, t) come from the meanflow_* fields below instead of time_sampling.
    objective: str = "flow"
    # MeanFlow's (r, t) sampler: two logit-normal(mu, sigma) times sorted (the paper: (-0.4, 1.0) on ImageNet,
    # (-2.0, 2.0) on CIFAR-10), and the fraction of pairs that keep r != t (0.25 and 0.75 there)
    meanflow_time: tuple[float, float] = (-0.4, 1.0)
    meanflow_ratio: float = 0.25
    # the adaptive loss weight 1 / (||Delta||^2 + c)^p (p = 1.0 on ImageNet, 0.75 on CIFAR-10; 0 = plain L2)
    meanflow_p: float = 1.0
    meanflow_c: float = 1e-3
    seed: int = 0
    # latent space (optional): a models.tokenizers.build_tokenizer spec ("rae:DIR", "autoencoderkl:DIR",
    # "autoencoder-rae:DIR", ...). The training images are encoded once; the network works on latents
    # [c, h, w] (set generator_overrides["patch_size"] to divide h) and samples are decoded for grids.
    # This is the Drift-RAE teacher's setting (a flow model in RAE latent space, §4.1).
    tokenizer: str | None = None
    log_every: int = 10
    ckpt_every: int = 250
    sample_every: int = 250
    sample_steps: int = 50  # Euler steps of the sample grids
    sample_guidance: float = 1.0  # CFG scale of the sample grids (1: conditional velocity only)
    # a learning curve, as ImageTrainConfig.eval_every: every eval_every steps (0 = off) and at the end, the
    # in-domain classifier metrics of eval_samples samples of the EMA network at each Euler step count of
    # eval_euler_steps, against the training time so far (the evaluations' time excluded); OUT/curve.json
    eval_every: int = 0
    eval_samples: int = 2000
    eval_euler_steps: tuple[int, ...] = (16,)

    def validate(self) -> "FlowTrainConfig":
        """Raise ``ValueError`` naming the offending field; return self when all is well."""
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"FlowTrainConfig.{name}: {why}, got {getattr(self, name)!r}")

        for name in ("steps", "batch", "log_every", "ckpt_every", "sample_every", "sample_steps"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be an integer >= 1")
        for name in ("warmup", "ema_warmup", "eval_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name, "must be an integer >= 0")
        need(self.minutes is None or (math.isfinite(self.minutes) and self.minutes > 0), "minutes",
             "must be None or a finite number > 0")
        need(self.generator in generator_names(), "generator",
             f"must be a generator preset, one of {generator_names()}")
        need(isinstance(self.generator_overrides, dict), "generator_overrides",
             "must be a dict of generator config fields")
        known = config_fields(self.generator)
        bad = sorted(k for k in self.generator_overrides if k not in known or k in _RESERVED_FIELDS)
        need(not bad, "generator_overrides",
             f"unknown or reserved generator config field(s) {bad} (reserved: "
             f"{list(_RESERVED_FIELDS)}, set by the recipe)")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "must be a finite number > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0.0 <= self.lr_decay <= 1.0, "lr_decay", "must be a fraction of training in [0, 1]")
        need(isinstance(self.eval_samples, int) and self.eval_samples >= 1, "eval_samples",
             "must be an integer >= 1")
        need(len(self.eval_euler_steps) >= 1 and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                                     for k in self.eval_euler_steps),
             "eval_euler_steps", "must be a non-empty sequence of integers >= 1")
        need(math.isfinite(self.grad_clip), "grad_clip", "must be finite (<= 0 turns clipping off)")
        need(len(self.ema_decays) >= 1 and all(0 <= d < 1 for d in self.ema_decays), "ema_decays",
             "must be a non-empty sequence of numbers in [0, 1)")
        need(0 <= self.label_dropout <= 1, "label_dropout", "must be a probability in [0, 1]")
        need(self.time_sampling in TIME_SAMPLING, "time_sampling", f"must be one of {list(TIME_SAMPLING)}")
        need(self.objective in OBJECTIVES, "objective", f"must be one of {list(OBJECTIVES)}")
        need(len(self.meanflow_time) == 2 and all(math.isfinite(v) for v in self.meanflow_time)
             and self.meanflow_time[1] > 0, "meanflow_time", "must be (mu, sigma) with sigma > 0")
        need(0.0 <= self.meanflow_ratio <= 1.0, "meanflow_ratio", "must be a fraction in [0, 1]")
        need(math.isfinite(self.meanflow_p) and self.meanflow_p >= 0, "meanflow_p", "must be a number >= 0")
        need(math.isfinite(self.meanflow_c) and self.meanflow_c > 0, "meanflow_c", "must be a number > 0")
        need(math.isfinite(self.sample_guidance) and self.sample_guidance >= 0, "sample_guidance",
             "must be a finite number >= 0")
        need(self.tokenizer is None or (isinstance(self.tokenizer, str) and self.tokenizer.strip() != ""),
             "tokenizer",
             "must be None (pixel space) or a tokenizer spec such as 'rae:DIR' or 'autoencoderkl:DIR'")
        return self


def flow_net_config(cfg: FlowTrainConfig, channels: int, size: int, num_classes: int):
    """The velocity network's config: ``cfg.generator`` with time conditioning (and the interval embedding
    of MeanFlow), no style tokens, no alpha embedder (a flow model's guidance is applied at sampling) and
    ``num_classes + 1`` class embeddings (the last one is the null class)."""
    return generator_config(cfg.generator, **cfg.generator_overrides, input_size=size, in_channels=channels,
                            num_classes=num_classes + 1, time_cond=True,
                            interval_cond=cfg.objective == "meanflow", style_tokens=0, alpha_mlp=False)


def null_class(model: OneStepGenerator) -> int:
    """The label of the unconditional ("null") class of a flow model: its last class index."""
    return model.config.num_classes - 1


# --------------------------------------------------------------------------- the objective
def sample_time(n: int, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` flow times in [0, 1] (``[n]``): ``"uniform"`` U[0, 1) or ``"logit-normal"`` sigmoid(N(0, 1))."""
    if how == "uniform":
        return torch.rand(n, generator=generator)
    if how == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"how: the time sampling must be one of {list(TIME_SAMPLING)}, got {how!r}")


def flow_matching_loss(model, y: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
                       eps: torch.Tensor) -> torch.Tensor:
    """Eq. 4 for one batch: ``mean ||v_theta(y_t, t, c) - (eps - y)||^2`` with ``y_t`` of Eq. 1.

    y (data), eps (noise) ``[B, C, H, W]``; labels ``[B]``; t ``[B]`` in [0, 1]. The squared norm
    is averaged over the ``C*H*W`` elements as well (Eq. 4 divided by a constant). The velocity may
    come out in bf16 under autocast; the loss is computed in fp32.
    """
    y_t, target = flow_path(y, eps, t)  # [B, C, H, W] each
    v = model(y_t, labels, t=t)  # [B, C, H, W]
    return (v.float() - target.float()).square().mean()


# --------------------------------------------------------------------------- sampling
@torch.no_grad()
def euler_sample(model, labels, steps: int, *, guidance_scale: float = 1.0, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Integrate Eq. 2 from t = 1 (noise) to t = 0 with ``steps`` uniform Euler steps:
    ``y_{t - dt} = y_t - dt v(y_t, t, c)``, ``dt = 1 / steps``, at ``t = 1, 1 - dt, ..., dt``.

    ``steps = 1`` is exactly the one-step map ``G(z) = z - v(z, 1)``. On a MeanFlow network
    (``config.interval_cond``) ``v`` is its average velocity over the step, ``u(y_t, r = t - dt, t)``:
    MeanFlow's K-step sampler, and with one step its one-step map ``x = z - u(z, 0, 1)``. With
    ``guidance_scale != 1`` the velocity is ``v_uncond + guidance_scale (v_cond - v_uncond)``, ``v_uncond``
    at the null class (:func:`null_class`), both from one forward pass on the doubled batch;
    ``guidance_scale = 0`` is unconditional sampling, 1 (default) plain conditional sampling, > 1 guidance.

    labels ``[B]`` (sequence or tensor); noise ``[B, C, H, W]`` (the start ``z``; drawn with
    ``generator`` on its device when None). Returns ``[B, C, H, W]`` in fp32 on the model's device.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: the number of Euler steps must be an integer >= 1, got {steps!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
            math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale: the guidance scale must be a finite number >= 0, "
                         f"got {guidance_scale!r}")
    cfg = model.config
    if not cfg.time_cond:
        raise ValueError("model: euler_sample needs a flow model "
                         "(config.time_cond=True), got time_cond=False")
    dev = model.device
    labels = torch.as_tensor(labels, device=dev)
    if labels.dim() != 1:
        raise ValueError(f"labels: expected a 1-D sequence of class indices, got shape {tuple(labels.shape)}")
    B = labels.shape[0]
    if noise is None:
        g_dev = generator.device if generator is not None else dev
        noise = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator,
                            device=g_dev)
    y = noise.to(dev, torch.float32)  # [B, C, H, W], y_1 = z
    style = None
    if getattr(cfg, "style_tokens", 0) > 0:  # not for the recipe's models; kept fixed along the path
        style = model.draw_style(B, generator)
    guided = guidance_scale != 1
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, null_class(model))])  # [2B]: cond | uncond
        style = torch.cat([style, style]) if style is not None else None
    dt = 1.0 / steps
    kw = {"h": dt} if getattr(cfg, "interval_cond", False) else {}  # MeanFlow: the average over [t - dt, t]
    for i in range(steps):
        t = torch.full((labels.shape[0],), 1.0 - i * dt, device=dev)  # [B] or [2B]; t = 1 exactly at i = 0
        if guided:
            # [B, ...] each
            v_cond, v_uncond = model(torch.cat([y, y]), labels, style=style, t=t, **kw).float().chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
        else:
            v = model(y, labels, style=style, t=t, **kw).float()  # [B, C, H, W]
        y = y - dt * v  # Euler step of Eq. 2 toward t = 0
    return y


@torch.no_grad()
def flow_generate(model: OneStepGenerator, labels: torch.Tensor, steps: int, *, guidance_scale: float = 1.0,
                  seed: int = 0, batch: int = 500, tokenizer: Tokenizer | None = None) -> np.ndarray:
    """Euler samples as uint8 ``[n, H, W, C]`` for ``labels [n]`` (the flow counterpart of
    :func:`drifting.recipes.image_sampling.generate`); a latent-space model's samples are decoded by
    ``tokenizer``."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, labels.shape[0], batch):
        # [b, C, H, W]
        x = euler_sample(model, labels[i: i + batch], steps, guidance_scale=guidance_scale, generator=g)
        out.append(to_uint8(x, tokenizer))
    return np.concatenate(out)


def save_flow_grid(model: OneStepGenerator, num_classes: int, path: str | Path, *, per_class: int = 8,
                   steps: int = 50, guidance_scale: float = 1.0, seed: int = 0,
                   tokenizer: Tokenizer | None = None) -> None:
    """A PNG grid with one row per class of ``steps``-step Euler samples."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)  # [K * per_class]
    write_grid(flow_generate(model, labels, steps, guidance_scale=guidance_scale, seed=seed,
                             tokenizer=tokenizer),
               per_class, path)


def load_flow_model(model_dir: str | Path, device: str | torch.device = "cpu") -> OneStepGenerator:
    """The velocity network exported by :func:`train_flow` (``OUT/model``: config.json +
    model.safetensors; nothing is unpickled). Its null class is :func:`null_class`."""
    model = load_generator_model(model_dir, device=device)
    if not model.config.time_cond:
        raise ValueError(f"model_dir: {model_dir} holds a one-step generator "
                         "(time_cond=False), not a flow model")
    return model.eval()


# --------------------------------------------------------------------------- training
def train_flow(cfg: FlowTrainConfig, out: str | Path, *, progress: bool = True, resume: bool = True,
               device: str | torch.device | None = None) -> dict:
    """Train a class-conditional flow-matching velocity network (see the module docstring).

    Writes to ``out``: ``checkpoint.pt`` (atomic, every ``ckpt_every`` steps, at the end and on
    Ctrl-C), ``log.jsonl`` (loss, lr, grad norm, time every ``log_every`` steps), ``samples_<step>.png``
    every ``sample_every`` steps, ``curve.json`` with ``eval_every`` (the learning curve: step, training
    seconds and, per Euler step count ``k`` of ``eval_euler_steps``, ``euler<k>`` = the classifier metrics
    of :func:`drifting.recipes.classify.evaluate_samples`), and at the end ``model/`` (the EMA network of
    the largest decay,
    config.json + model.safetensors + train_config.json; :func:`load_flow_model`), ``samples.png``
    (one row per class, ``sample_steps`` Euler steps) and ``history.json``.

    ``resume``: continue ``out/checkpoint.pt`` when there is one (it must have been written with
    the same config); False starts over. ``device`` defaults to CUDA when available (the network
    then runs under bf16 autocast, the loss in fp32). All random draws are made on the CPU.

    Returns ``{"steps", "train_seconds" (excluding the sample grids), "steps_per_second",
    "final_loss", "model_dir", "samples", "params"}``.
    """
    cfg.validate()
    meanflow = cfg.objective == "meanflow"
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else contextlib.nullcontext())
    out = Path(out)
    ds, tok, latents = _flow_data(cfg, progress, dev)
    K = ds.num_classes
    C, H = (ds.shape[2], ds.shape[0]) if latents is None else (latents.shape[1], latents.shape[2])
    labels_all = torch.from_numpy(ds.labels)  # [N]

    torch.manual_seed(cfg.seed)
    model = build_generator(flow_net_config(cfg, C, H, K)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decays, warmup_steps=cfg.ema_warmup)
    config = jsonable(asdict(cfg))
    best = ema.models[max(cfg.ema_decays)]
    run = Trainer(out, "flow", config, model, opt, ema=ema, steps=cfg.steps, resume=resume, progress=progress,
                  desc="train-flow", minutes=cfg.minutes, defaults=_defaults(),
                  lr_at=lambda i, p: warmup_lr(cfg.lr, i, cfg.warmup, decay=cfg.lr_decay, progress=p),
                  grad_clip=cfg.grad_clip, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
                  sample_every=cfg.sample_every,
                  sample=lambda path: save_flow_grid(best, K, path, steps=cfg.sample_steps,
                                                     guidance_scale=cfg.sample_guidance, seed=cfg.seed,
                                                     tokenizer=tok))
    # the learning curve so far (a resumed run keeps the points up to its checkpoint)
    curve = [p for p in _read_curve(out) if p["step"] <= run.start] if cfg.eval_every else []

    def step(i: int):
        g = step_generator(cfg.seed, i)
        idx = torch.randint(len(ds), (cfg.batch,), generator=g)  # [B], uniform with replacement
        # [B, C, H, W]: pixels in [-1, 1], or latents
        y = latents[idx] if latents is not None else ds.to_tensor(idx.numpy())
        eps = torch.randn(y.shape, generator=g)  # [B, C, H, W]
        if meanflow:
            r, t = mean_flow.sample_interval(cfg.batch, *cfg.meanflow_time, cfg.meanflow_ratio, g)  # [B] each
        else:
            t = sample_time(cfg.batch, cfg.time_sampling, g)  # [B]
        drop = torch.rand(cfg.batch, generator=g) < cfg.label_dropout  # [B]
        labels = labels_all[idx].masked_fill(drop, K)  # [B], K = the null class
        y, eps, t, labels = y.to(dev), eps.to(dev), t.to(dev), labels.to(dev)
        stats = {}
        with autocast:
            if meanflow:
                loss = mean_flow.meanflow_loss(model, y, labels, r.to(dev), t, eps, p=cfg.meanflow_p,
                                               c=cfg.meanflow_c, stats=stats)
            else:
                loss = flow_matching_loss(model, y, labels, t, eps)
        return loss, stats

    def curve_point(done: int, last: bool) -> None:
        if cfg.eval_every and (last or done % cfg.eval_every == 0):
            with run.paused():
                curve.append(flow_curve_point(best, cfg, done, run.elapsed(), tok))
            (out / "curve.json").write_text(json.dumps(curve, indent=2))

    run.fit(step, after=curve_point)

    run.finish(best, config)
    write_model_tokenizer(out / "model", cfg.tokenizer, ds.shape[2])  # how to decode its latents
    save_flow_grid(best, K, out / "samples.png", per_class=10, steps=cfg.sample_steps,  # one row per class
                   guidance_scale=cfg.sample_guidance, seed=cfg.seed, tokenizer=tok)
    secs, steps = run.train_seconds, run.steps_done
    return {"steps": steps, "train_seconds": secs, "steps_per_second": steps / max(secs, 1e-9),
            "final_loss": run.history["loss"][-1] if run.history["loss"] else None,
            "model_dir": str(out / "model"), "samples": str(out / "samples.png"),
            "params": model.num_params()}


def _flow_data(cfg: FlowTrainConfig, progress: bool, dev: torch.device):
    """The training set, the tokenizer (None in pixel space) and, with one, the training set's latents
    ``[N, c, h, w]`` (fp32, CPU), encoded once: the network then works on latents."""
    ds = load_dataset(cfg.data, "train")
    H, W, C = ds.shape
    if H != W:
        raise ValueError(f"data: the DiT needs square images, {cfg.data} has {H}x{W}")
    if cfg.tokenizer is None:
        return ds, None, None
    tok = build_tokenizer(cfg.tokenizer, pixel_channels=C)
    latents = tok.encode_dataset(ds.images, progress=progress)  # [N, c, h, w]
    return ds, tok.to(dev), latents


def flow_curve_point(model: OneStepGenerator, cfg: FlowTrainConfig, step: int, seconds: float,
                     tokenizer: Tokenizer | None = None) -> dict:
    """One point of a flow run's learning curve: ``{"step", "time", "euler<k>": classifier metrics}`` of
    ``cfg.eval_samples`` Euler samples at each ``k`` of ``cfg.eval_euler_steps`` (no guidance)."""
    from .classify import evaluate_samples

    point = {"step": step, "time": seconds}
    for k in cfg.eval_euler_steps:
        m = evaluate_samples(cfg.data, cfg.eval_samples,
                             lambda labels, k=k: flow_generate(model, labels, k, seed=cfg.seed + 1,
                                                               tokenizer=tokenizer))
        if m is not None:
            point[f"euler{k}"] = m
    return point


def _read_curve(out: Path) -> list[dict]:
    path = out / "curve.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _defaults() -> dict:
    """The defaults of every FlowTrainConfig field as JSON (a checkpoint from before a field existed holds
    it)."""
    return jsonable(asdict(FlowTrainConfig()))

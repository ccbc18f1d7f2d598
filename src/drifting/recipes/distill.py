"""Drift-RAE: distil a flow model into a one-step generator with a per-token drifting field
(Zhang et al. 2026, "Distilling Drifting Transformers with Representation Autoencoders", §3.3,
App. A.2, B.2 Table 8, App. C Table 9). ``drifting distill``.

The student starts as a copy of the teacher velocity network ``v_theta`` and generates in one step

    G(z) = z - v_theta(z, 1),   z ~ N(0, I)                                         (Eq. 8)

Its output is a latent ``[c, h, w]`` of the teacher's space (an RAE latent in the paper), read as
``C = h * w`` tokens of dimension ``D = c`` (Eq. 9). For each class in the step, each token ``c``
of each gradient-carrying sample ``j`` is drifted against the same token of ``N_pos`` real latents
of that class and of the other generated samples (Eq. 10-11):

    L = mean_tau mean_{j, c} || G^c(z_j) - sg[G^c(z_j) + V~^c_j] ||^2,   V~ = V / ||V||   (Eq. 10)

with ``V^c_j`` from Eq. 11: one softmax over positives and one over negatives (no joint y-softmax,
no x-softmax), :func:`drifting.field.drift_rae_field`. The paper's three modifications are each a
switch of :class:`DistillConfig`:

* ``y_softmax``: True computes the field as the original Drifting Model does (Alg. 2, both
  softmaxes, :func:`drifting.compute_V`): Table 3's baseline A. False (default) is Eq. 11.
* ``perturb``: the generated samples entering the field are ``G + tau n`` (Eq. 12), ``n`` of
  uniformly random direction and standard-Laplace norm, drawn anew per temperature.
* ``n_extra_neg``: that many further samples per class are generated without gradient and only
  serve as negatives ("partially detaching negative samples"); ``n_neg`` carry the gradient.

Distances are measured in units of a stop-gradient scale ``S``, the mean distance from the
generated tokens to all their targets in the step (as the original Drifting Model's feature
normalization, whose temperatures {0.02, 0.05, 0.2} Drift-RAE keeps; with raw RAE latents the
softmaxes would be one-hot at these temperatures). The perturbation ``tau n`` is in the same
units. ``V~`` is a unit vector per token whatever the scale, so the loss is unchanged by it.

Optimizer and schedules are Table 8's: AdamW (0.9, 0.95), weight decay 0, learning rate
``max(lr_final, lr - (lr - lr_final) t / T)``, EMA 0.9995 with the warm-up
``min(0.9995, 0.5 (0.9995 / 0.5)^(t / 1000))``, gradient clipping 1.0. ``PRESETS["table8"]`` holds
Table 8's sample counts; the defaults are a CPU-sized version of it.

App. C's from-scratch variants: ``init="scratch"`` trains a freshly initialised network of the
teacher's architecture with the same loss (Table 9, rows 1-2: VAE or RAE latents), and
``features="decode-encode"`` drifts ``E(D(G(z)))`` (decode with the tokenizer, re-encode, with
gradients through both) against the encoded real images (Table 9, row 3).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.images import load_dataset
from ..distributed import init_from_env
from ..field import (
    DEFAULT_TEMPERATURES,
    FieldOptions,
    compute_V,
    drift_rae_field,
    laplace_norm_noise,
    pairwise_distances,
)
from ..models.dit import DriftingDiT
from ..models.generators import build_generator
from ..presets import preset
from ..training.checkpoint import jsonable
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.rng import step_generator
from ..training.schedules import linear_decay_lr
from .flow import load_flow_model, save_flow_grid
from .image_sampling import model_tokenizer, write_model_tokenizer

INITS = ("teacher", "scratch")
FEATURES = ("latent", "decode-encode")
_EPS = 1e-12


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (saved in its checkpoint and beside its export)."""

    # a flow model export (train-flow's OUT/model); its tokenizer.json sets the latent space
    teacher: str = ""
    data: str = "fashion-mnist"  # the real samples (positives); encoded with the teacher's tokenizer
    init: str = "teacher"  # "teacher": distillation (§3.3); "scratch": App. C, a fresh network
    features: str = "latent"  # "latent": the latent tokens (Eq. 10); "decode-encode": App. C's E(D(G(z)))
    steps: int = 300
    classes_per_step: int = 10  # N_c (Table 8: 32)
    n_pos: int = 64  # N_pos real latents per class (Table 8: 256)
    n_neg: int = 16  # N_neg gradient-carrying generated samples per class (Table 8: 64)
    n_extra_neg: int = 48  # N_extra_neg detached generated negatives per class (Table 8: 192)
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES  # losses averaged over them (§4.1)
    y_softmax: bool = False  # True: Alg. 2's two softmaxes (the baseline); False: Eq. 11's single softmax
    perturb: bool = True  # Eq. 12: the generated samples enter the field as G + tau n
    lr: float = 3e-5  # Table 8: linear decay from 3e-5 ...
    lr_final: float = 3e-7  # ... to 3e-7
    lr_decay_steps: int = 0  # T of the schedule; 0: the run's steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    ema_warmup: int = 1000  # Table 8's EMA warm-up (0 = off)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    sample_every: int = 100

    def validate(self) -> "DistillConfig":
        """Raise ``ValueError`` naming the offending field; return self when all is well."""
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"DistillConfig.{name}: {why}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(isinstance(self.teacher, str) and self.teacher != "", "teacher",
             "must name a flow model directory (train-flow's OUT/model)")
        for name in ("steps", "classes_per_step", "n_pos", "n_neg", "log_every", "ckpt_every",
                     "sample_every"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("n_extra_neg", "lr_decay_steps", "ema_warmup"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an integer >= 0")
        need(self.n_neg + self.n_extra_neg >= 2, "n_neg", "n_neg + n_extra_neg must be >= 2 (a sample needs "
             "another negative besides itself)")
        need(self.init in INITS, "init", f"must be one of {list(INITS)}")
        need(self.features in FEATURES, "features", f"must be one of {list(FEATURES)}")
        try:
            FieldOptions(temperatures=self.temperatures)
        except ValueError:
            need(False, "temperatures", "must be a non-empty list of positive numbers")
        for name in ("lr", "lr_final"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name,
                 "must be a finite number > 0")
        need(self.lr_final <= self.lr, "lr_final", "must be <= lr (the schedule decays)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(math.isfinite(self.grad_clip), "grad_clip", "must be finite (<= 0 turns clipping off)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        return self


# Table 3's rows (A, B, C) and Table 8's full-size counts. The CPU-sized rows divide Table 3's
# sample counts by 4 (64 -> 16, 256 -> 64) and keep everything else.
PRESETS: dict[str, DistillConfig] = {
    "table8": DistillConfig(classes_per_step=32, n_pos=256, n_neg=64, n_extra_neg=192, steps=10_000),
    "A": DistillConfig(y_softmax=True, perturb=False, n_pos=16, n_neg=16, n_extra_neg=0),  # baseline
    # + perturbation - y-softmax
    "B": DistillConfig(y_softmax=False, perturb=True, n_pos=16, n_neg=16, n_extra_neg=0),
    # + positives, + detached negatives
    "C": DistillConfig(y_softmax=False, perturb=True, n_pos=64, n_neg=16, n_extra_neg=48),
}


def distill_preset(name: str, teacher: str, **overrides) -> DistillConfig:
    """A :class:`DistillConfig` from ``PRESETS[name]`` for ``teacher`` with ``overrides`` (e.g. ``steps=500``;
    :func:`drifting.presets.preset`)."""
    return preset(PRESETS, name, "distillation", teacher=teacher, **overrides)


# --------------------------------------------------------------------------- the objective
def one_step(model: DriftingDiT, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``G(z) = z - v(z, 1)`` for noise ``z [B, c, h, w]`` and ``labels [B]``; ``[B, c, h, w]``
    (fp32). The same map as one Euler step of the teacher (:func:`drifting.recipes.flow.euler_sample`)."""
    t = torch.ones(z.shape[0], device=z.device)  # [B]
    return z - model(z, labels, t=t).float()


def tokens(x: torch.Tensor) -> torch.Tensor:
    """Eq. 9: latents ``[G, n, c, h, w]`` -> per-token problems ``[G * h * w, n, c]`` (group-major)."""
    if x.dim() != 5:
        raise ValueError(f"x must be latents [groups, samples, c, h, w], got shape {tuple(x.shape)}")
    G, n, c, h, w = x.shape
    return x.permute(0, 3, 4, 1, 2).reshape(G * h * w, n, c)  # [G*L, n, c]


def drift_rae_loss(
    x: torch.Tensor,
    pos: torch.Tensor,
    extra_neg: torch.Tensor | None = None,
    *,
    temperatures=DEFAULT_TEMPERATURES,
    y_softmax: bool = False,
    perturb: bool = True,
    normalize_features: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    comm=None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 10's loss for one step, averaged over temperatures (§4.1) and over samples and tokens.

    Args:
        x: generated latents with gradient, ``[G, N, c, h, w]`` (G classes, N = N_neg samples each).
        pos: real latents of the same classes, ``[G, P, c, h, w]``.
        extra_neg: detached extra negatives ``[G, E, c, h, w]`` or None (E = 0).
        temperatures: the taus; one field and one loss term each, the terms averaged.
        y_softmax: field of Alg. 2 (joint softmax over targets and softmax over samples) instead of
            Eq. 11's single softmax over samples.
        perturb: Eq. 12: ``x`` and the extra negatives enter the field as ``x + tau n``.
        normalize_features: measure distances in units of ``S`` (see the module docstring).
        generator: draws the perturbation ``n`` (CPU generator; moved to ``x``'s device), or one
            generator per class (G of them): class k's noise then comes from its own stream.
        comm: a :class:`drifting.distributed.LossComm` when the classes are spread over ranks: ``S`` and
            the stats are then means over all ranks (each rank's loss is the mean over its classes).

    Returns ``(loss, stats)``; ``stats`` has the scale ``S`` and ``V2@tau``, the mean raw
    ``||V||^2`` per token (in units of ``S^2``, before normalization): the number that shrinks as the
    generated distribution approaches the data.
    """
    if x.dim() != 5 or pos.dim() != 5 or pos.shape[0] != x.shape[0] or pos.shape[2:] != x.shape[2:]:
        raise ValueError(f"x [G, N, c, h, w] and pos [G, P, c, h, w] must agree in G, c, h, w; "
                         f"got {tuple(x.shape)} and {tuple(pos.shape)}")
    if extra_neg is not None and (extra_neg.dim() != 5 or extra_neg.shape[0] != x.shape[0]
                                  or extra_neg.shape[2:] != x.shape[2:]):
        raise ValueError(f"extra_neg must be [G, E, c, h, w] like x {tuple(x.shape)}, "
                         f"got {tuple(extra_neg.shape)}")
    # Drift-RAE's field (Eq. 11) and normalizations (S without sqrt(D), V / ||V|| per sample) are its own; of
    # FieldOptions it shares the temperatures, checked the same way
    temperatures = FieldOptions(temperatures=temperatures).temperatures
    x_tok = tokens(x)  # [G*L, N, D], with gradient
    N = x_tok.shape[1]
    stats: dict[str, float] = {}
    with torch.no_grad():
        q = x_tok.detach().float()  # [BL, N, D]
        y_pos = tokens(pos.detach()).float()  # [BL, P, D]
        # [BL, M, D]
        negs = q if extra_neg is None else torch.cat([q, tokens(extra_neg.detach()).float()], dim=1)
        S = 1.0
        # mean distance from the generated tokens to every target (self pairs included)
        if normalize_features:
            d = torch.cat([pairwise_distances(q, y_pos), pairwise_distances(q, negs)], -1)  # [BL, N, P+M]
            S = d.mean() if comm is None else comm.mean(d.mean())  # equal shares: the mean of the means
            S = max(float(S), _EPS)
        y_pos, negs = y_pos / S, negs / S
        stats["S"] = S
        drifts = []
        for tau in temperatures:
            m = negs
            if perturb:  # Eq. 12 on every generated sample entering the field
                m = negs + tau * _perturbation(negs.shape, generator).to(negs.device)
            xq = m[:, :N]  # the (perturbed) queries are the first N negatives (self pair masked)
            if y_softmax:
                V = compute_V(xq, y_pos, m, tau, normalize="both")  # [BL, N, D], Alg. 2
            else:
                V = drift_rae_field(xq, y_pos, m, tau, normalize_output=False)  # [BL, N, D], Eq. 11
            n2 = V.square().sum(-1, keepdim=True)  # [BL, N, 1]
            stats[f"V2@{tau:g}"] = float(n2.mean() if comm is None else comm.mean(n2.mean()))
            drifts.append(V / n2.sqrt().clamp_min(_EPS))  # V~ = V / ||V||
    loss = x_tok.new_zeros((), dtype=torch.float32)
    for V in drifts:  # Eq. 10 per temperature: || G - sg(G + V~) ||^2, mean over samples and tokens
        target = (x_tok.detach().float() + V).detach()
        loss = loss + (x_tok.float() - target).square().sum(-1).mean()
    return loss / len(drifts), stats


def _perturbation(shape: tuple[int, int, int], generator) -> torch.Tensor:
    """Eq. 12's ``n`` for token problems ``[G*L, M, D]`` (group-major), from one generator or one per
    class."""
    if not isinstance(generator, (list, tuple)):
        return laplace_norm_noise(shape, generator=generator)
    L = shape[0] // len(generator)  # class k's tokens are rows k*L:(k+1)*L
    return torch.cat([laplace_norm_noise((L,) + tuple(shape[1:]), generator=g) for g in generator])


# --------------------------------------------------------------------------- training
def _real_latents(ds, tok, progress: bool) -> torch.Tensor:
    """The training set in the teacher's space: encoded latents, or pixels in [-1, 1] without a tokenizer."""
    if tok is not None:
        return tok.encode_dataset(ds.images, progress=progress)  # [N, c, h, w]
    return ds.to_tensor(range(len(ds)))  # [N, C, H, W]


def distill(cfg: DistillConfig, out: str | Path, *, progress: bool = True, resume: bool = True,
            device: str | torch.device | None = None) -> dict:
    """Distil ``cfg.teacher`` into a one-step student (see the module docstring).

    Writes to ``out``: ``checkpoint.pt`` (atomic; every ``ckpt_every`` steps, at the end and on
    Ctrl-C), ``log.jsonl`` (loss, lr, grad norm, ``S``, ``V2@tau``, time), ``samples_<step>.png``, and
    at the end ``model/`` (the EMA student: a flow-model export whose one Euler step is ``G``, with
    the teacher's ``tokenizer.json``; sample it with ``flow_generate(model, labels, 1)``),
    ``samples.png`` and ``history.json``. ``resume`` continues ``out/checkpoint.pt`` written with the
    same config. Returns ``{"steps", "train_seconds", "steps_per_second", "final_loss", "model_dir",
    "samples", "params"}``.
    """
    cfg.validate()
    if device is None and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dev = torch.device(device if device is not None else "cpu")
    layout, comm = init_from_env(1, dev)  # under torchrun: the classes of a step are sharded over the ranks
    layout.check(cfg.classes_per_step, cfg.n_neg, cfg.n_pos, 0, cfg.n_extra_neg)
    main = layout.rank == 0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else contextlib.nullcontext())
    out = Path(out)
    teacher, tok, ds, real = _teacher_and_data(cfg, progress)  # real: [N, c, h, w], the teacher's space
    K = ds.num_classes
    labels_all = torch.from_numpy(ds.labels).long()
    by_class = [torch.nonzero(labels_all == k).flatten() for k in range(K)]
    if cfg.classes_per_step > K:
        raise ValueError(f"classes_per_step: at most the {K} classes of {cfg.data}, "
                         f"got {cfg.classes_per_step}")
    if tok is not None:
        tok = tok.to(dev)

    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(teacher) if cfg.init == "teacher" else build_generator(teacher.config)
    student = student.to(dev).train()
    del teacher
    student_ddp = student if comm is None else torch.nn.parallel.DistributedDataParallel(
        student, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(student, (cfg.ema_decay,), warmup_steps=cfg.ema_warmup)
    config = jsonable(asdict(cfg))
    best = ema.models[cfg.ema_decay]
    T = cfg.lr_decay_steps or cfg.steps
    run = Trainer(out, "distill", config, student, opt, ema=ema, steps=cfg.steps, resume=resume,
                  progress=progress, desc="distill", main=main, comm=comm,
                  lr_at=lambda i, _: linear_decay_lr(i, cfg.lr, cfg.lr_final, T), grad_clip=cfg.grad_clip,
                  log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, sample_every=cfg.sample_every,
                  show=(f"V2@{cfg.temperatures[-1]:g}",),
                  sample=lambda path: save_flow_grid(best, K, path, steps=1, seed=cfg.seed, tokenizer=tok))
    N, E, P = cfg.n_neg, cfg.n_extra_neg, cfg.n_pos
    slots = range(cfg.classes_per_step)[layout.classes(cfg.classes_per_step)]  # this rank's class slots
    G_ = len(slots)
    shape = tuple(real.shape[1:])  # (c, h, w)

    def step(i: int):
        g = step_generator(cfg.seed, i)
        classes = torch.randperm(K, generator=g)[:cfg.classes_per_step][list(slots)]  # [G], this rank's
        # each class slot draws from its own stream (seed, step, slot): no draw depends on the world size
        gs = [step_generator(cfg.seed, i, stream=1000 + k) for k in slots]
        pos_idx = torch.stack([by_class[k][torch.randint(len(by_class[k]), (P,), generator=gk)]
                               for k, gk in zip(classes.tolist(), gs)])  # [G, P]
        pos = real[pos_idx].to(dev)  # [G, P, c, h, w]
        # [G, N+E, c, h, w]
        z = torch.stack([torch.randn((N + E,) + shape, generator=gk) for gk in gs]).to(dev)
        labels = classes.to(dev)[:, None].expand(G_, N + E)  # [G, N+E]
        with autocast:
            x = one_step(student_ddp, z[:, :N].flatten(0, 1), labels[:, :N].flatten())  # [G*N, c, h, w]
            extra = None
            if E > 0:
                with torch.no_grad():  # detached negatives: a forward pass only
                    extra = one_step(student, z[:, N:].flatten(0, 1), labels[:, N:].flatten())
            if cfg.features == "decode-encode":  # App. C: drift E(D(G(z))), gradients through both
                x = tok.encode(tok.decode(x))
                if extra is not None:
                    with torch.no_grad():
                        extra = tok.encode(tok.decode(extra))
        x = x.float().view(G_, N, *x.shape[1:])  # [G, N, c', h', w']
        extra = extra.float().view(G_, E, *extra.shape[1:]) if extra is not None else None
        return drift_rae_loss(x, pos, extra, temperatures=cfg.temperatures, y_softmax=cfg.y_softmax,
                              perturb=cfg.perturb, generator=gs, comm=comm)

    run.fit(step)

    if not main:
        return {"steps": cfg.steps, "rank": layout.rank}
    return _export(run, best, cfg, config, out, K, tok) | {"params": student.num_params()}


def _teacher_and_data(cfg: DistillConfig, progress: bool):
    """The teacher, its tokenizer (None in pixel space), the training set and its images in the teacher's
    space ``[N, c, h, w]``, checked against each other."""
    teacher = load_flow_model(cfg.teacher)
    tok = model_tokenizer(cfg.teacher)
    if cfg.features == "decode-encode" and tok is None:
        raise ValueError("features: 'decode-encode' needs a latent-space teacher (its model dir "
                         "has no tokenizer.json)")
    ds = load_dataset(cfg.data, "train")
    if teacher.config.num_classes != ds.num_classes + 1:
        raise ValueError(f"teacher: {cfg.teacher} has {teacher.config.num_classes - 1} classes (+ null), "
                         f"data {cfg.data} has {ds.num_classes}")
    real = _real_latents(ds, tok, progress)  # [N, c, h, w]
    if tuple(real.shape[1:]) != (teacher.config.in_channels, teacher.config.input_size,
                                 teacher.config.input_size):
        raise ValueError(f"teacher: its input is {teacher.config.in_channels}x{teacher.config.input_size}^2 "
                         f"but the data in its space are {tuple(real.shape[1:])}")
    return teacher, tok, ds, real


def _export(run: Trainer, best, cfg: DistillConfig, config: dict, out: Path, K: int, tok) -> dict:
    """``OUT/model`` (the EMA student, with the teacher's tokenizer), ``samples.png``, ``history.json``; the
    run's summary."""
    run.finish(best, config)
    teacher_tok = Path(cfg.teacher) / "tokenizer.json"
    if teacher_tok.is_file():  # the student lives in the teacher's space
        t = json.loads(teacher_tok.read_text())
        write_model_tokenizer(out / "model", t["spec"], int(t["pixel_channels"]))
    save_flow_grid(best, K, out / "samples.png", per_class=10, steps=1, seed=cfg.seed, tokenizer=tok)
    secs = run.train_seconds
    return {"steps": cfg.steps, "train_seconds": secs, "steps_per_second": cfg.steps / max(secs, 1e-9),
            "final_loss": run.history["loss"][-1] if run.history["loss"] else None,
            "model_dir": str(out / "model"), "samples": str(out / "samples.png")}


__all__ = ["DistillConfig", "PRESETS", "distill_preset", "one_step", "tokens", "drift_rae_loss", "distill"]

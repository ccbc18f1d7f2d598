"""Class-conditional image generation with the drifting loss in a ResNet-MAE feature space
(paper §3.4-4, A.2-A.9).

One training step (A.9): sample ``Nc`` classes and a CFG scale alpha per class; generate
``N`` samples per class with the DiT ``f(eps, c, alpha)``; draw ``P`` positives per class and
``N_unc`` unconditional real samples per class from the sample queue (A.8); extract the
multi-scale features of A.5 (plus the raw output, the "vanilla" loss) with the frozen encoder;
compute the drifting loss with the unconditional negatives weighted by ``w(alpha)`` (A.7);
backpropagate through the encoder into the generator; AdamW step; EMA update.

All randomness of step ``t`` comes from a generator seeded by ``(seed, t)``; together with the
saved sampler state this makes a resumed run repeat an uninterrupted one exactly.

The run's configuration and presets are in :mod:`drifting.recipes.image_config`, the encoder's
pre-training in :mod:`drifting.recipes.mae_pretrain`, and sampling and the export's files in
:mod:`drifting.recipes.image_sampling`.
"""


from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.images import ImageDataset, load_dataset
from ..data.queue import make_sampler
from ..distributed import barrier, init_from_env
from ..feature_cache import RealFeatureCache
from ..features import group_by_class, sample_locations, select_groups, take_locations, vanilla_group
from ..guidance import sample_alpha, uncond_neg_weights
from ..loss import drifting_loss
from ..models.encoders import build_encoder, encode_groups
from ..models.generators import build_generator, generator_config
from ..models.onestep import OneStepGenerator
from ..models.tokenizer import Tokenizer
from ..models.tokenizers import build_tokenizer
from ..negatives import NegativeQueue
from ..training.checkpoint import jsonable
from ..training.ema import EMA
from ..training.loop import Trainer
from ..training.precision import autocast as precision_autocast
from ..training.rng import step_generator
from ..training.schedules import warmup_lr
from .image_config import ImageTrainConfig
from .image_sampling import generate, save_grid, write_model_tokenizer
from .mae_pretrain import cached_mae_dir


# --------------------------------------------------------------------------- features
def feature_encoder(cfg: ImageTrainConfig, ds: ImageDataset, out: Path | None, progress: bool = True,
                    tokenizer: Tokenizer | None = None):
    """The frozen encoder(s) of ``cfg.encoder``; a bare ``mae`` part is the ResNet-MAE of ``cfg.mae_dir``,
    or of ``OUT/mae``, or pre-trained with ``cfg.mae`` (cached between runs, see
    :func:`~drifting.recipes.mae_pretrain.cached_mae_dir`)."""
    parts = [p.strip() for p in cfg.encoder.split("+")]
    if "mae" in parts:
        if cfg.mae_dir:
            if not (Path(cfg.mae_dir) / "model.safetensors").is_file():
                raise FileNotFoundError(f"mae_dir {cfg.mae_dir} holds no ResNet-MAE export (config.json "
                                        "+ model.safetensors)")
            mae_dir = Path(cfg.mae_dir)
        elif out is not None and (out / "mae" / "model.safetensors").is_file():
            mae_dir = out / "mae"
        else:
            latent = tokenizer is not None and cfg.tokenizer and cfg.encoder_space == "latent"
            mae_dir = cached_mae_dir(ds, cfg.mae, progress=progress, tokenizer=tokenizer if latent else None,
                                     tokenizer_spec=cfg.tokenizer if latent else None)
            if out is not None:
                shutil.copytree(mae_dir, out / "mae", dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".complete"))
        parts = [f"mae:{mae_dir}" if p == "mae" else p for p in parts]
    C = ds.shape[2]
    if tokenizer is not None and cfg.tokenizer and cfg.encoder_space == "latent":
        C = tokenizer.latent_shape(*_chw(ds))[0]
    return build_encoder("+".join(parts), in_channels=C)


def _chw(ds: ImageDataset) -> tuple[int, int, int]:
    H, W, C = ds.shape
    return C, H, W


def encode(encoder, x: torch.Tensor, sets: str, vanilla: bool, raw: torch.Tensor | None = None,
           groups: str | None = None) -> dict[str, torch.Tensor]:
    """Per-sample feature groups ``{name: [B, L, C]}`` (A.5) of the encoder input ``x``, plus the raw
    generator-space sample ``raw`` (default ``x``) as the "vanilla" group. ``groups``: keep only the encoder
    groups that match these patterns (:func:`drifting.features.select_groups`)."""
    feats = select_groups(encode_groups(encoder, x, sets), groups)
    if vanilla:
        feats["vanilla"] = vanilla_group(x if raw is None else raw)
    return feats


# --------------------------------------------------------------------------- training
@dataclass
class ImageRun:
    generator: OneStepGenerator
    ema: EMA
    dataset: ImageDataset
    history: dict
    out: Path | None
    metrics: dict | None = None


@dataclass
class DriftingStep:
    """The main job's step (A.9) as the :class:`~drifting.training.loop.Trainer` runs it: ``step(i) -> (loss,
    scalars)``. It draws the step's batch from ``(seed, i)`` (:meth:`draw`), generates, encodes the generated
    and the real images (:meth:`gen_features`, :meth:`real_features`) and returns the drifting loss with its
    raw drift norms.

    Under several processes each rank computes its share of the global batch (``layout``); ``comm`` sums the
    field's statistics over the ranks. ``cache``: the real images' feature groups, when they fit in memory."""

    cfg: ImageTrainConfig
    ds: ImageDataset
    G: torch.nn.Module  # the generator as the forward pass sees it (DDP-wrapped under torchrun)
    encoder: torch.nn.Module
    tok: Tokenizer
    sampler: object  # positives and unconditional samples per class (drifting.data.queue)
    layout: object
    comm: object
    dev: torch.device
    autocast: object
    queue: NegativeQueue | None = None
    cache: RealFeatureCache | None = None
    compile_field: bool = False
    ckpt: Path | None = None  # named by the non-finite-samples error

    def __post_init__(self):
        cfg, L = self.cfg, self.layout
        self.K = self.ds.num_classes
        C = self.ds.shape[2]
        self.shape = self.tok.latent_shape(C, *self.ds.shape[:2])  # (c, h, w): the generator's space
        self.decode_first = cfg.tokenizer is not None and cfg.encoder_space == "pixel"
        self.U = cfg.guidance_config.n_uncond
        self.slots = range(cfg.classes_per_step)[L.classes(cfg.classes_per_step)]  # this rank's class slots
        # this rank's classes, and its generated, positive and unconditional samples per class
        self.Nc, self.N, self.P, self.U_loc = (len(self.slots), cfg.n_gen // L.ranks_per_class,
                                               cfg.n_pos // L.ranks_per_class, self.U // L.ranks_per_class)

    def __call__(self, i: int):
        cfg, Nc, N, P = self.cfg, self.Nc, self.N, self.P
        g = step_generator(cfg.seed, i)
        classes, alpha, noise, style, real_idx = self.draw(i, g)
        with self.autocast:
            # [Nc*N, c, h, w]
            x = self.G(noise, classes.repeat_interleave(N), alpha.repeat_interleave(N), style)
            f_gen = self.gen_features(x)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the generator produced non-finite samples at step {i}; the last "
                                     f"good checkpoint is {self.ckpt} (resume it, e.g. with a "
                                     "lower --lr)")
        subsets = sample_locations(f_gen, cfg.max_locations, g)
        queued = None  # earlier steps' generated features of these classes: [Nc*Q, L, C]
        if self.queue is not None:
            queued = take_locations(self.queue.take(classes), subsets) if self.queue.ready(classes) else None
            self.queue.push(f_gen, classes)
        f_gen, f_real = take_locations(f_gen, subsets), self.real_features(real_idx, subsets)
        fresh = self.detached_negatives(i, classes, alpha, subsets)  # [Nc*E, L, C] or None
        gen = group_by_class(f_gen, Nc)  # {j: [Nc, N, L, C]}
        pos = group_by_class({k: v[: Nc * P] for k, v in f_real.items()}, Nc)  # {j: [Nc, P, L, C]}
        # the extra negatives: unconditional real samples (weights w(alpha), A.7), then the queue's and the
        # detached fresh ones (weight 1)
        U = self.U
        neg, w = _extra_negatives(
            group_by_class({k: v[Nc * P:] for k, v in f_real.items()}, Nc) if U > 0 else None,
            uncond_neg_weights(alpha, cfg.n_gen, U)[:, :self.U_loc] if U > 0 else None,  # [Nc, U_loc]
            *(None if t is None else group_by_class(t, Nc) for t in (queued, fresh)))
        loss, stats = drifting_loss(gen, pos, neg, neg_weights=w, options=cfg.field_options, comm=self.comm,
                                    compile=self.compile_field)
        v2 = {k: v for k, v in stats.items() if "/V2@" in k}  # raw ||V||^2 per group and temperature
        return loss, {"V2": sum(v2.values()), **v2}

    def draw(self, i: int, g: torch.Generator):
        """This rank's share of step ``i``'s global batch, the same draws on every rank whatever the world
        size: its classes ``[Nc]``, CFG scales ``[Nc]``, noise ``[Nc*N, c, h, w]`` and style draws, and the
        indices of its real images (positives, then unconditional samples) ``[Nc*(P+U_loc)]``."""
        cfg, L, Nc_all = self.cfg, self.layout, self.cfg.classes_per_step
        classes_all = torch.randperm(self.K, generator=g)[:Nc_all]  # [Nc_all]
        alpha_all = sample_alpha(Nc_all, cfg.guidance_config, generator=g)  # [Nc_all]
        self.sampler.refill(self.ds.labels, generator=g)
        pos_all = self.sampler.sample_positives(classes_all, cfg.n_pos, generator=g)  # [Nc_all, P_all]
        real_idx = [pos_all[self.slots][:, L.rows(cfg.n_pos)].reshape(-1)]  # [Nc*P]
        if self.U > 0:
            unc_all = self.sampler.sample_unconditional(Nc_all, self.U, generator=g)  # [Nc_all, U]
            real_idx.append(unc_all[self.slots][:, L.rows(self.U)].reshape(-1))  # [Nc*U_loc]
        rows = L.rows(cfg.n_gen)
        slot_noise = [_slot_noise(self.G_module, cfg.seed, i, k, cfg.n_gen, self.shape) for k in self.slots]
        noise = torch.cat([z[rows] for z, _ in slot_noise])  # [Nc*N, c, h, w]
        style = torch.cat([s[rows] for _, s in slot_noise])
        d = self.dev
        return (classes_all[self.slots].to(d), alpha_all[self.slots].to(d), noise.to(d), style.to(d),
                torch.cat(real_idx))

    @torch.no_grad()
    def detached_negatives(self, i: int, classes: torch.Tensor, alpha: torch.Tensor,
                           subsets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Drift-RAE's detached extra negatives in the image job (``cfg.n_extra_neg`` = E): E more samples per
        class of the current generator from their own noise stream ``(seed, i, slot)``, generated and encoded
        without gradient, at the step's locations ``subsets``: ``{name: [Nc*E_loc, L', C]}`` class-major, or
        None when E = 0. They are negatives only: no loss term of their own, no backward."""
        cfg = self.cfg
        if cfg.n_extra_neg == 0:
            return None
        rows = self.layout.rows(cfg.n_extra_neg)
        draws = [_slot_noise(self.G_module, cfg.seed, i, k, cfg.n_extra_neg, self.shape,
                             stream=EXTRA_NEG_STREAM + k) for k in self.slots]
        noise = torch.cat([z[rows] for z, _ in draws]).to(self.dev)  # [Nc*E_loc, c, h, w]
        style = torch.cat([s[rows] for _, s in draws]).to(self.dev)
        E = noise.shape[0] // self.Nc
        with self.autocast:
            x = self.G_module(noise, classes.repeat_interleave(E), alpha.repeat_interleave(E), style)
            return take_locations(self.gen_features(x), subsets)

    @property
    def G_module(self) -> OneStepGenerator:
        return getattr(self.G, "module", self.G)

    def gen_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The feature groups ``{name: [B, L, C]}`` (A.5) of the generated ``x`` (with their gradient)."""
        cfg, tok = self.cfg, self.tok
        return encode(self.encoder, tok.decode(x) if self.decode_first else x, cfg.feature_sets, cfg.vanilla,
                      x, groups=cfg.groups)

    @torch.no_grad()
    def real_features(self, real_idx: torch.Tensor,
                      subsets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The feature groups ``{name: [B, L', C]}`` of the real images ``real_idx`` at the step's locations
        ``subsets``: gathered from the cache when there is one, else encoded here (no gradient)."""
        if self.cache is not None:
            return self.cache.take(real_idx.to(self.dev), subsets)
        with self.autocast:
            return take_locations(self.encode_real(real_idx), subsets)

    def encode_real(self, real_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The feature groups ``{name: [B, L, C]}`` of the real images ``real_idx``, all locations (what the
        cache holds)."""
        cfg, tok = self.cfg, self.tok
        real = self.ds.to_tensor(real_idx.numpy()).to(self.dev)  # [B, C, H, W]
        real_z = tok.encode(real)  # the generator's space
        return encode(self.encoder, real if self.decode_first else real_z, cfg.feature_sets, cfg.vanilla,
                      real_z, groups=cfg.groups)


def train_images(cfg: ImageTrainConfig, out_dir: str | Path | None, *, progress: bool = True,
                 resume: bool = True, device: str | torch.device | None = None,
                 tensorboard: bool = False, ranks_per_class: int = 1,
                 compile_field: bool = False) -> ImageRun:
    """Train a class-conditional drifting generator: :class:`DriftingStep` under the shared
    :class:`~drifting.training.loop.Trainer`, then the export, ``samples.png`` and the metrics.

    ``device`` defaults to CUDA when available (then the generator and encoder run under bf16
    autocast; the field and loss are computed in fp32), else CPU. All random draws are made on
    the CPU, so a run's randomness does not depend on the device. Each ``log_every`` steps a
    line goes to ``OUT/log.jsonl`` (and to TensorBoard under ``OUT/tb`` with ``tensorboard``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the step's global batch is split over the ranks as
    :mod:`drifting.distributed` describes (``ranks_per_class`` ranks share each class), the generator
    is wrapped in DistributedDataParallel, and rank 0 alone logs, samples, checkpoints and evaluates.
    Every draw of a step depends on ``(seed, step)`` and the class slot only, never on the world size,
    so a run resumed on another number of ranks trains on exactly the batches it would have seen.
    ``compile_field``: ``torch.compile`` the field's elementwise work. ``resume``: continue
    ``OUT/checkpoint.pt`` when it is there (same configuration); False starts over.
    """
    job_start = time.perf_counter()  # the job budget (cfg.job_minutes) counts from here
    cfg.validate()
    if device is None and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dev = torch.device(device if device is not None else "cpu")
    layout, comm = init_from_env(ranks_per_class, dev)
    main = layout.rank == 0
    ds = load_dataset(cfg.data, "train")
    K = ds.num_classes
    if cfg.classes_per_step > K:
        raise ValueError(f"classes_per_step={cfg.classes_per_step} exceeds the {K} classes of {cfg.data}")
    if cfg.neg_queue and layout.world > 1:
        raise ValueError("neg_queue: the queue of generated negatives runs in one process only; set it to 0 "
                         "under torchrun")
    out = Path(out_dir) if out_dir is not None else None
    layout.check(cfg.classes_per_step, cfg.n_gen, cfg.n_pos, cfg.guidance_config.n_uncond, cfg.n_extra_neg)

    tok = build_tokenizer(cfg.tokenizer, pixel_channels=ds.shape[2]).to(dev)
    c, h, _ = tok.latent_shape(ds.shape[2], *ds.shape[:2])  # the generator's space
    if not main:
        barrier()  # rank 0 pre-trains (or finds) the cached MAE first; the others then load it
    encoder = feature_encoder(cfg, ds, out, progress and main, tokenizer=tok).to(dev)
    if main:
        barrier()

    torch.manual_seed(cfg.seed)
    style_over = {} if cfg.style_tokens is None else {"style_tokens": cfg.style_tokens}
    G = build_generator(generator_config(cfg.generator, input_size=h, in_channels=c, num_classes=K,
                                         **style_over)).to(dev)
    opt = torch.optim.AdamW(G.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(G, cfg.ema_decays, warmup_steps=cfg.ema_warmup)
    best = ema.models[max(cfg.ema_decays)]
    sampler = make_sampler(cfg.sampler, ds.labels, K)
    queue = NegativeQueue(cfg.neg_queue, K, device=dev) if cfg.neg_queue else None
    # the training budget, decided before the training clock starts (the judge's first-time training is not
    # training time)
    minutes = training_minutes(cfg, job_start, main and out is not None)
    run = Trainer(out, "images", jsonable(asdict(cfg)), G, opt, ema=ema, steps=cfg.steps, resume=resume,
                  progress=progress, desc="train", main=main, comm=comm, defaults=_config_defaults(),
                  parts={"sampler": sampler, **({} if queue is None else {"neg_queue": queue})},
                  minutes=minutes, grad_clip=cfg.grad_clip, tensorboard=tensorboard, history_keys=("V2",),
                  lr_at=lambda i, p: warmup_lr(cfg.lr, i, cfg.warmup, decay=cfg.lr_decay, progress=p),
                  log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, sample_every=cfg.sample_every,
                  sample=lambda path: save_grid(best, K, path, seed=cfg.seed, tokenizer=tok))
    if run.start == 0:
        sampler.warm_up(ds.labels, generator=step_generator(cfg.seed, -1, stream=2))
    step = DriftingStep(cfg, ds, G if comm is None else torch.nn.parallel.DistributedDataParallel(
                            G, device_ids=[dev.index] if dev.type == "cuda" else None),
                        encoder, tok, sampler, layout, comm, dev, precision_autocast(dev, cfg.precision),
                        queue=queue, compile_field=compile_field, ckpt=run.ckpt)
    step.cache = _real_feature_cache(cfg, step, len(ds), main)

    def curve_point(done: int, last: bool) -> None:  # the learning curve (its evaluations: not training time)
        if cfg.eval_every and main and (done % cfg.eval_every == 0 or last):
            with run.paused():
                point = evaluate_generator(best, cfg.data, cfg.eval_samples, tokenizer=tok, seed=cfg.seed + 1)
            if point is not None:
                run.history.setdefault("curve", []).append({"step": done, "time": run.elapsed(), **point})

    run.fit(step, after=curve_point)
    if out is not None and main:
        _export(out, best, cfg, run.history, tok, K, ds.shape[2])
    metrics = _final_metrics(cfg, best, run.history, tok, progress) if main else None
    if metrics is not None and out is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return ImageRun(G, ema, ds, run.history, out if main else None, metrics)


def _real_feature_cache(cfg: ImageTrainConfig, step: DriftingStep, n_images: int, main: bool):
    """The real images' feature groups, computed once (counted in the training time), or None: pixel space
    only (a tokenizer's encoding is part of the step there), and only within ``cfg.real_feature_cache_gb``."""
    if cfg.real_feature_cache_gb <= 0 or cfg.tokenizer is not None:
        return None

    def features(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), step.autocast:
            return step.encode_real(idx)

    cache = RealFeatureCache.build(features, n_images, max_gb=cfg.real_feature_cache_gb)
    if cache is None and main:
        print(f"real-feature cache off: the feature groups of {n_images} images exceed "
              f"real_feature_cache_gb={cfg.real_feature_cache_gb:g}", flush=True)
    return cache


def _export(out: Path, best: OneStepGenerator, cfg: ImageTrainConfig, history: dict, tok: Tokenizer, K: int,
            C: int) -> None:
    """``OUT/model`` (+ its train config and tokenizer), ``samples.png`` (one row per class), ``history.json``
    and ``curve.json``."""
    best.save_pretrained(out / "model")
    save_grid(best, K, out / "samples.png", per_class=10, seed=cfg.seed, tokenizer=tok)
    (out / "model" / "train_config.json").write_text(json.dumps(jsonable(asdict(cfg)), indent=2))
    write_model_tokenizer(out / "model", cfg.tokenizer, C)  # how to decode its latents (load_generator)
    (out / "history.json").write_text(json.dumps(history))
    if history.get("curve"):
        (out / "curve.json").write_text(json.dumps(history["curve"], indent=2))


def _final_metrics(cfg: ImageTrainConfig, best: OneStepGenerator, history: dict, tok: Tokenizer,
                   progress: bool) -> dict | None:
    """The classifier metrics of the end of training (the learning curve's last point when it is the end's,
    else ``cfg.eval_samples`` new samples; None without), with the steps made and their seconds."""
    curve = history.get("curve") or []
    if curve and history["step"] and curve[-1]["step"] == history["step"][-1]:
        metrics = {k: v for k, v in curve[-1].items() if k not in ("step", "time")}
    elif cfg.eval_samples > 0:
        metrics = evaluate_generator(best, cfg.data, cfg.eval_samples, tokenizer=tok, seed=cfg.seed + 1,
                                     progress=progress)
    else:
        return None
    if metrics is not None:
        secs, steps = (history["time"][-1], history["step"][-1]) if history["time"] else (None, None)
        metrics.update(train_seconds=secs, steps=steps,
                       steps_per_second=None if secs is None else steps / max(secs, 1e-9))
    return metrics


def _extra_negatives(uncond: dict | None, w: torch.Tensor | None, *generated: dict | None):
    """The loss's extra negatives ``{j: [Nc, M, L, C]}`` and their weights ``[Nc, M]``: the unconditional
    real samples ``uncond`` ``{j: [Nc, U, L, C]}`` with their CFG weights ``w`` ``[Nc, U]``, followed by each
    set of detached generated samples in ``generated`` (the queue's, the fresh ones; ``{j: [Nc, Q, L, C]}`` or
    None) at weight 1; ``(None, None)`` when there are none."""
    parts = ([] if uncond is None else [(uncond, w)]) + [
        (g, torch.ones(*next(iter(g.values())).shape[:2], device=next(iter(g.values())).device))
        for g in generated if g is not None]
    if len(parts) < 2:
        return parts[0] if parts else (uncond, w)
    return ({k: torch.cat([f[k] for f, _ in parts], dim=1) for k in parts[0][0]},
            torch.cat([ws for _, ws in parts], dim=1))


def _config_defaults() -> dict:
    """The defaults of every ImageTrainConfig field, the MAE config's included, as JSON."""
    return jsonable(asdict(ImageTrainConfig()))


# minutes the end of a job keeps for itself (final metrics of 2000 samples, grids, export): ~20 s on 2 cores
JOB_END_MINUTES = 0.5
# the noise streams of the detached extra negatives: EXTRA_NEG_STREAM + slot (the generated: 1000 + slot)
EXTRA_NEG_STREAM = 1_000_000


def training_minutes(cfg: ImageTrainConfig, job_start: float, report: bool) -> float | None:
    """The generator's training budget in minutes: ``cfg.minutes``, or with ``cfg.job_minutes`` what the
    whole job has left after its preparation (data, encoder, real-feature cache and, when the run ends with
    metrics, the metrics' classifier, trained now if it is not cached), less :data:`JOB_END_MINUTES`; the
    smaller of the two when both are set. ``job_start``: ``time.perf_counter()`` at the start of the job."""
    if cfg.job_minutes is None:
        return cfg.minutes
    if cfg.eval_samples > 0 and report:  # the final metrics' judge: its first-time training is preparation
        from .classify import prepare_judge

        prepare_judge(cfg.data)
    prep = (time.perf_counter() - job_start) / 60.0
    left = cfg.job_minutes - prep - JOB_END_MINUTES
    minutes = left if cfg.minutes is None else min(cfg.minutes, left)
    if minutes < 0.05:
        raise RuntimeError(f"job_minutes={cfg.job_minutes:g}: the preparation took {prep:.1f} min and leaves "
                           "no time to train; raise --job-minutes or give --minutes instead")
    if report:
        print(f"training for {minutes:.1f} min (job budget {cfg.job_minutes:g} min, preparation "
              f"{prep:.1f} min)", flush=True)
    return minutes


def _slot_noise(G: OneStepGenerator, seed: int, step: int, slot: int, n: int, shape: tuple[int, int, int],
                stream: int | None = None):
    """Noise ``[n, c, h, w]`` and style draws of class slot ``slot`` at ``step``, from their own stream
    ``(seed, step, slot)`` (``stream``, default ``1000 + slot``): a rank draws only its slots, and no draw
    depends on the world size."""
    g = step_generator(seed, step, stream=1000 + slot if stream is None else stream)
    return torch.randn(n, *shape, generator=g), G.draw_style(n, generator=g)


def evaluate_generator(model: OneStepGenerator, data: str, n: int, *, tokenizer: Tokenizer | None = None,
                       seed: int = 1, progress: bool = False) -> dict | None:
    """In-domain classifier metrics of ``n`` one-step samples at alpha 1 (labels cycling through the
    classes; :func:`drifting.recipes.classify.evaluate_samples`). None when the dataset has no test split."""
    from .classify import evaluate_samples

    def sample(labels: torch.Tensor):  # -> uint8 [n, H, W, C]
        return generate(model, labels, 1.0, seed=seed, tokenizer=tokenizer)

    return evaluate_samples(data, n, sample, progress=progress)

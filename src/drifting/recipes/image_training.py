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
import math
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
from ..models.encoders import build_encoder, groups_from_maps, tap_maps
from ..models.generators import build_generator, generator_config
from ..models.onestep import OneStepGenerator
from ..models.tokenizer import Tokenizer
from ..models.tokenizers import build_tokenizer
from ..negatives import NegativeQueue
from ..training.checkpoint import fill_defaults, jsonable, load_state, save_state
from ..training.ema import EMA
from ..training.interrupt import stop_on_sigint
from ..training.loop import JsonlLogger as _Logger
from ..training.loop import progress_bar as _bar
from ..training.loop import truncate_log as _truncate_log
from ..training.precision import autocast as precision_autocast
from ..training.rng import step_generator
from ..training.schedules import training_progress, warmup_lr
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
           maps: dict[str, list[torch.Tensor]] | None = None, groups: str | None = None
           ) -> dict[str, torch.Tensor]:
    """Per-sample feature groups ``{name: [B, L, C]}`` (A.5) of the encoder input ``x``, plus the raw
    generator-space sample ``raw`` (default ``x``) as the "vanilla" group. ``maps``: the encoder's tap maps
    of ``x`` when already known (a :class:`RealFeatureCache`), else computed here. ``groups``: keep only
    the encoder groups that match these patterns (:func:`drifting.features.select_groups`)."""
    feats = select_groups(groups_from_maps(tap_maps(encoder, x) if maps is None else maps, x, sets), groups)
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


def train_images(cfg: ImageTrainConfig, out_dir: str | Path | None, *, progress: bool = True,
                 resume: bool = False, device: str | torch.device | None = None,
                 tensorboard: bool = False, ranks_per_class: int = 1,
                 compile_field: bool = False) -> ImageRun:
    """Train a class-conditional drifting generator; see the module docstring for one step.

    ``device`` defaults to CUDA when available (then the generator and encoder run under bf16
    autocast; the field and loss are computed in fp32), else CPU. All random draws are made on
    the CPU, so a run's randomness does not depend on the device. Each ``log_every`` steps a
    line goes to ``OUT/log.jsonl`` (and to TensorBoard under ``OUT/tb`` with ``tensorboard``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the step's global batch is split over the ranks as
    :mod:`drifting.distributed` describes (``ranks_per_class`` ranks share each class), the generator
    is wrapped in DistributedDataParallel, and rank 0 alone logs, samples, checkpoints and evaluates.
    Every draw of a step depends on ``(seed, step)`` and the class slot only, never on the world size,
    so a run resumed on another number of ranks trains on exactly the batches it would have seen.
    ``compile_field``: ``torch.compile`` the field's elementwise work.
    """
    job_start = time.perf_counter()  # the job budget (cfg.job_minutes) counts from here
    cfg.validate()
    if device is None and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dev = torch.device(device if device is not None else "cpu")
    layout, comm = init_from_env(ranks_per_class, dev)
    main = layout.rank == 0
    autocast = precision_autocast(dev, cfg.precision)
    ds = load_dataset(cfg.data, "train")
    H, W, C = ds.shape
    K = ds.num_classes
    if cfg.classes_per_step > K:
        raise ValueError(f"classes_per_step={cfg.classes_per_step} exceeds the {K} classes of {cfg.data}")
    out = Path(out_dir) if out_dir is not None else None
    cfgc = cfg.cfg_config
    U = cfgc.n_uncond
    layout.check(cfg.classes_per_step, cfg.n_gen, cfg.n_pos, U)

    tok = build_tokenizer(cfg.tokenizer, pixel_channels=C).to(dev)
    c, h, w_ = tok.latent_shape(C, H, W)  # the generator's space: [c, h, w_] (= [C, H, W] in pixel space)
    decode_first = cfg.tokenizer is not None and cfg.encoder_space == "pixel"
    if not main:
        barrier()  # rank 0 pre-trains (or finds) the cached MAE first; the others then load it
    encoder = feature_encoder(cfg, ds, out, progress and main, tokenizer=tok).to(dev)
    if main:
        barrier()

    torch.manual_seed(cfg.seed)
    style_over = {} if cfg.style_tokens is None else {"style_tokens": cfg.style_tokens}
    G = build_generator(generator_config(cfg.generator, input_size=h, in_channels=c, num_classes=K,
                                         **style_over)).to(dev)
    G_ddp = G if comm is None else torch.nn.parallel.DistributedDataParallel(
        G, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(G.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    ema = EMA(G, cfg.ema_decays, warmup_steps=cfg.ema_warmup)
    sampler = make_sampler(cfg.sampler, ds.labels, K)
    if cfg.neg_queue and layout.world > 1:
        raise ValueError("neg_queue: the queue of generated negatives runs in one process only; set it to 0 "
                         "under torchrun")
    queue = NegativeQueue(cfg.neg_queue, K) if cfg.neg_queue else None
    history: dict = {"step": [], "loss": [], "V2": [], "time": []}
    start = 0
    ckpt = out / "checkpoint.pt" if out is not None else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise FileNotFoundError(f"resume requested but there is no checkpoint at {ckpt}")
        state = load_state(ckpt)
        # a checkpoint written before an option existed holds its default (the run behaved that way)
        if fill_defaults(state["config"], _config_defaults()) != jsonable(asdict(cfg)):
            raise ValueError(f"{ckpt} was written with a different configuration; use a new --out")
        G.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        history = json.loads(state["history"])
        if queue is not None:
            queue.load_state_dict(state["neg_queue"], dev)
        start = int(state["step"])
        _truncate_log(out / "log.jsonl", start)  # drop lines of steps after the checkpoint
    else:
        sampler.warm_up(ds.labels, generator=step_generator(cfg.seed, -1, stream=2))

    def save(step: int) -> None:
        if ckpt is not None and main:
            save_state(ckpt, {
                "model": G.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                "sampler": sampler.state_dict(), "step": step, "config": jsonable(asdict(cfg)),
                "history": json.dumps(history),
                **({} if queue is None else {"neg_queue": queue.state_dict()}),
            })

    if not main:
        out = None  # rank 0 alone writes logs, pictures and the export
    log = _Logger(out, tensorboard) if out is not None else None
    # the training budget, decided before the training clock starts (the judge's first-time training is not
    # training time)
    minutes = training_minutes(cfg, job_start, main and out is not None)
    bar = _bar(cfg.steps, "train", progress and main, initial=start)
    t0 = time.perf_counter() - (history["time"][-1] if history["time"] else 0.0)
    paused = [0.0]  # seconds of learning-curve evaluation in this session, left out of the training time

    def elapsed() -> float:
        return time.perf_counter() - t0 - paused[0]

    # the real images' tap maps, once (counted in the training time); pixel space only: a tokenizer's
    # encoding is part of the step there
    cache = None
    if cfg.real_feature_cache_gb > 0 and cfg.tokenizer is None:
        cache = RealFeatureCache.build(encoder, ds.to_tensor, len(ds), max_gb=cfg.real_feature_cache_gb,
                                       device=dev, autocast=autocast)
        if cache is None and main:
            print(f"real-feature cache off: the maps of {len(ds)} images exceed real_feature_cache_gb="
                  f"{cfg.real_feature_cache_gb:g}", flush=True)

    Nc_all, N_all, P_all = cfg.classes_per_step, cfg.n_gen, cfg.n_pos
    cls_slots = layout.classes(Nc_all)  # this rank's class slots of the step
    Nc, N, P, U_loc = (len(range(Nc_all)[cls_slots]), N_all // layout.ranks_per_class,
                       P_all // layout.ranks_per_class, U // layout.ranks_per_class)
    with stop_on_sigint() as interrupted:  # Ctrl-C: finish the current step, write a checkpoint, then stop
        try:
            for step in range(start, cfg.steps):
                # the step's global batch: the same draws on every rank, whatever the world size
                g = step_generator(cfg.seed, step)
                classes_all = torch.randperm(K, generator=g)[:Nc_all]  # [Nc_all]
                alpha_all = sample_alpha(Nc_all, cfgc, generator=g)  # [Nc_all]
                sampler.refill(ds.labels, generator=g)
                pos_all = sampler.sample_positives(classes_all, P_all, generator=g)  # [Nc_all, P_all]
                # [Nc_all, U]
                unc_all = sampler.sample_unconditional(Nc_all, U, generator=g) if U > 0 else None
                # this rank's share: its class slots, and its rows of each class
                classes, alpha = classes_all[cls_slots], alpha_all[cls_slots]  # [Nc]
                labels = classes.repeat_interleave(N)  # [Nc*N]
                rows = layout.rows(N_all)
                slot_noise = [_slot_noise(G, cfg.seed, step, k, N_all, (c, h, w_))
                              for k in range(Nc_all)[cls_slots]]
                noise = torch.cat([z[rows] for z, _ in slot_noise])  # [Nc*N, c, h, w]
                style = torch.cat([s[rows] for _, s in slot_noise])
                real_idx = [pos_all[cls_slots][:, layout.rows(P_all)].reshape(-1)]  # [Nc*P]
                if U > 0:
                    real_idx.append(unc_all[cls_slots][:, layout.rows(U)].reshape(-1))  # [Nc*U_loc]
                real_idx = torch.cat(real_idx)
                real = ds.to_tensor(real_idx.numpy()).to(dev)  # [Nc*(P+U_loc), C, H, W]
                noise, labels, style = noise.to(dev), labels.to(dev), style.to(dev)

                with autocast:
                    x = G_ddp(noise, labels, alpha.repeat_interleave(N).to(dev), style)  # [Nc*N, c, h, w]
                    with torch.no_grad():
                        real_z = tok.encode(real)  # [Nc*(P+U), c, h, w], the generator's space
                        f_real = encode(encoder, real if decode_first else real_z, cfg.feature_sets,
                                        cfg.vanilla, real_z,
                                        maps=None if cache is None else cache.take(real_idx.to(dev)),
                                        groups=cfg.groups)
                    f_gen = encode(encoder, tok.decode(x) if decode_first else x, cfg.feature_sets,
                                   cfg.vanilla, x, groups=cfg.groups)
                if not torch.isfinite(x).all():
                    raise FloatingPointError(f"the generator produced non-finite samples at step {step}; "
                                             f"the last good checkpoint is {ckpt} (resume with --resume, "
                                             "e.g. with a lower --lr)")
                subsets = sample_locations(f_gen, cfg.max_locations, g)
                queued = None  # earlier steps' generated features of these classes: [Nc*Q, L, C]
                if queue is not None:
                    queued = take_locations(queue.take(classes), subsets) if queue.ready(classes) else None
                    queue.push(f_gen, classes)
                f_gen, f_real = take_locations(f_gen, subsets), take_locations(f_real, subsets)
                gen = group_by_class(f_gen, Nc)  # {j: [Nc, N, L, C]}
                pos = group_by_class({k: v[: Nc * P] for k, v in f_real.items()}, Nc)  # {j: [Nc, P, L, C]}
                # the extra negatives: unconditional real samples (weights w(alpha), A.7), then the queue's
                neg, w = _extra_negatives(
                    group_by_class({k: v[Nc * P:] for k, v in f_real.items()}, Nc) if U > 0 else None,
                    # w [Nc, U_loc] depends on the global N, U
                    uncond_neg_weights(alpha, N_all, U)[:, :U_loc].to(dev) if U > 0 else None,
                    None if queued is None else group_by_class(queued, Nc))
                loss, stats = drifting_loss(gen, pos, neg, neg_weights=w, temperatures=cfg.temperatures,
                                            kernel=cfg.kernel, normalize=cfg.normalize,
                                            attraction=cfg.attraction, repulsion=cfg.repulsion,
                                            normalize_drift=cfg.normalize_drift, comm=comm,
                                            compile=compile_field)
                # the mean over ranks (the 1-rank loss): logged, and checked on every rank alike
                if comm is not None:
                    loss_all = comm.mean(loss)
                else:
                    loss_all = loss.detach()
                if not torch.isfinite(loss_all):
                    raise FloatingPointError(
                        f"non-finite loss at step {step}; the last good checkpoint is {ckpt} "
                        "(resume with --resume)")
                lr = warmup_lr(cfg.lr, step, cfg.warmup, decay=cfg.lr_decay,
                               progress=training_progress(step, cfg.steps, elapsed(), minutes))
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(G.parameters(),
                                                       cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                opt.step()
                ema.update(G)
                done = step + 1
                if comm is not None:  # stop together: a Ctrl-C seen by any rank stops all after this step
                    flag = torch.tensor(float(interrupted["flag"]))
                    interrupted["flag"] = bool(comm.sum(flag) > 0)
                # the time budget (--minutes, --job-minutes) ends the run like its last step: logged and
                # checkpointed
                last = done == cfg.steps or (minutes is not None and
                                             _out_of_time(elapsed(), minutes, main, comm))
                if done % cfg.log_every == 0 or last:
                    v2 = sum(v.item() for k, v in stats.items() if "/V2@" in k)
                    history["step"].append(done)
                    history["loss"].append(loss_all.item())
                    history["V2"].append(v2)
                    history["time"].append(elapsed())
                    if log is not None:
                        log.write(done,
                                  {"loss": loss_all.item(), "V2": v2, "lr": lr, "grad_norm": gnorm.item(),
                                   "time": history["time"][-1]}, stats)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_all.item():.2f}", V2=f"{v2:.3g}")
                if bar is not None:
                    bar.update(1)
                if out is not None and (done % cfg.sample_every == 0 or done == cfg.steps):
                    save_grid(ema.models[max(cfg.ema_decays)], K, out / f"samples_{done:06d}.png",
                              seed=cfg.seed, tokenizer=tok)
                if cfg.eval_every and main and (done % cfg.eval_every == 0 or last):
                    t_eval = time.perf_counter()
                    point = evaluate_generator(ema.models[max(cfg.ema_decays)], cfg.data, cfg.eval_samples,
                                               tokenizer=tok, seed=cfg.seed + 1)
                    if point is not None:
                        history.setdefault("curve", []).append({"step": done, "time": elapsed(), **point})
                    paused[0] += time.perf_counter() - t_eval  # the curve's evaluations are not training time
                if ckpt is not None and (done % cfg.ckpt_every == 0 or last or interrupted["flag"]):
                    save(done)
                if interrupted["flag"]:
                    raise KeyboardInterrupt(f"interrupted after step {done}; resume "
                                            f"from {ckpt} with --resume")
                if last:
                    break
        finally:
            if log is not None:
                log.close()
            if bar is not None:
                bar.close()
    if out is not None:
        best = ema.models[max(cfg.ema_decays)]
        best.save_pretrained(out / "model")
        # one row per class
        save_grid(best, K, out / "samples.png", per_class=10, seed=cfg.seed, tokenizer=tok)
        (out / "model" / "train_config.json").write_text(json.dumps(jsonable(asdict(cfg)), indent=2))
        write_model_tokenizer(out / "model", cfg.tokenizer, C)  # how to decode its latents (load_generator)
        (out / "history.json").write_text(json.dumps(history))
        if history.get("curve"):
            (out / "curve.json").write_text(json.dumps(history["curve"], indent=2))
    metrics = None
    curve = history.get("curve") or []
    # the curve ends at the final one
    if curve and history["step"] and curve[-1]["step"] == history["step"][-1]:
        metrics = {k: v for k, v in curve[-1].items() if k not in ("step", "time")}
    elif cfg.eval_samples > 0 and main:
        metrics = evaluate_generator(ema.models[max(cfg.ema_decays)], cfg.data, cfg.eval_samples,
                                     tokenizer=tok, seed=cfg.seed + 1, progress=progress)
    if metrics is not None:
        metrics["train_seconds"] = history["time"][-1] if history["time"] else None
        metrics["steps"] = history["step"][-1] if history["step"] else None
        metrics["steps_per_second"] = (history["step"][-1] / max(history["time"][-1], 1e-9) if history["time"]
                                       else None)
        if out is not None:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return ImageRun(G, ema, ds, history, out, metrics)


def _extra_negatives(uncond: dict | None, w: torch.Tensor | None, queued: dict | None):
    """The loss's extra negatives ``{j: [Nc, M, L, C]}`` and their weights ``[Nc, M]``: the unconditional
    real samples ``uncond`` ``{j: [Nc, U, L, C]}`` with their CFG weights ``w`` ``[Nc, U]``, followed by the
    queued generated samples ``queued`` ``{j: [Nc, Q, L, C]}`` at weight 1; ``(None, None)`` when neither."""
    if queued is None:
        return uncond, w
    ones = torch.ones(*next(iter(queued.values())).shape[:2], device=next(iter(queued.values())).device)
    if uncond is None:
        return queued, ones
    return {k: torch.cat([uncond[k], queued[k]], dim=1) for k in uncond}, torch.cat([w, ones], dim=1)


def _config_defaults() -> dict:
    """The defaults of every ImageTrainConfig field, the MAE config's included, as JSON."""
    return jsonable(asdict(ImageTrainConfig()))


# minutes the end of a job keeps for itself (final metrics of 2000 samples, grids, export): ~20 s on 2 cores
JOB_END_MINUTES = 0.5


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


def _out_of_time(elapsed: float, minutes: float, main: bool, comm) -> bool:
    """Whether the time budget is spent; under torchrun every rank follows rank 0's clock."""
    over = torch.tensor(float(main and elapsed >= 60.0 * minutes))
    if comm is not None:
        over = comm.sum(over)
    return bool(over > 0)


def _slot_noise(G: OneStepGenerator, seed: int, step: int, slot: int, n: int, shape: tuple[int, int, int]):
    """Noise ``[n, c, h, w]`` and style draws of class slot ``slot`` at ``step``, from their own stream
    ``(seed, step, slot)``: a rank draws only its slots, and no draw depends on the world size."""
    g = step_generator(seed, step, stream=1000 + slot)
    return torch.randn(n, *shape, generator=g), G.draw_style(n, generator=g)


def evaluate_generator(model: OneStepGenerator, data: str, n: int, *, tokenizer: Tokenizer | None = None,
                       seed: int = 1, progress: bool = False) -> dict | None:
    """In-domain classifier metrics of ``n`` one-step samples at alpha 1 (labels cycling through the
    classes; :func:`drifting.recipes.classify.evaluate_samples`). None when the dataset has no test split."""
    from .classify import evaluate_samples

    def sample(labels: torch.Tensor):  # -> uint8 [n, H, W, C]
        return generate(model, labels, 1.0, seed=seed, tokenizer=tokenizer)

    return evaluate_samples(data, n, sample, progress=progress)

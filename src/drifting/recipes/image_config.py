"""The configuration of an image run (:class:`ImageTrainConfig`) and its named presets
(:data:`TRAIN_PRESETS`, :func:`train_preset`; ``drifting train --preset NAME``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..features import parse_groups
from ..field import FieldOptions
from ..guidance import GUIDANCE_PRESETS, GuidanceConfig
from ..presets import preset
from ..training.precision import PRECISIONS
from .mae_pretrain import MAEConfig


@dataclass
class ImageTrainConfig:
    """Everything an image run depends on (saved beside its checkpoints and export)."""

    data: str = "fashion-mnist"
    generator: str = "cpu-small"  # generator preset: a DiT (models.dit.PRESETS) or a U-Net (models.convnet.PRESETS)
    # feature encoder(s) (models.encoders.build_encoder spec); "mae" is the ResNet-MAE of mae_dir, else
    # pre-trained with `mae` (cached between runs). "mae+timm:convnextv2_atto:W.safetensors@64": Table 9.
    encoder: str = "mae"
    mae_dir: str | None = None  # a pretrained ResNet-MAE export; None: pre-train (cached), copy to OUT/mae
    # latent space (optional): a models.tokenizers.build_tokenizer spec such as "sd-vae:/path/to/sd-vae";
    # the generator then works on latents. encoder_space: where the feature encoder looks, "latent"
    # (latent-MAE, Table 8's latent presets) or "pixel" (generated latents are decoded first, with
    # gradients through the decoder, as for MoCo / SimCLR / pixel-MAE features on a latent generator).
    tokenizer: str | None = None
    encoder_space: str = "latent"
    mae: MAEConfig = field(default_factory=MAEConfig)
    steps: int = 1000
    # a wall-time budget for the generator's training (MAE pre-training and evaluation excluded): stop at the
    # first step boundary after this many minutes, or at `steps`, whichever comes first (None: steps only).
    # For comparisons at equal wall time (benchmarks/quality_levers.py); a step budget repeats exactly.
    minutes: float | None = None
    # a wall-time budget for the whole job (minutes): the generator trains for what is left after the
    # preparation (data, encoder, real-feature cache, the metrics' classifier the first time) less the end's
    # share (image_training.JOB_END_MINUTES), or `minutes` if that is smaller; None: `minutes` alone
    job_minutes: float | None = None
    classes_per_step: int = 10  # Nc
    n_gen: int = 8  # N generated per class (also the generated negatives)
    n_pos: int = 8  # P positives per class
    guidance: str = "ablation"  # guidance preset (guidance.GUIDANCE_PRESETS): alpha distribution and N_unc
    n_uncond: int | None = 8  # override the preset's N_unc (None: the preset's)
    sampler: str = "queue"  # "queue" (A.8) or "balanced"
    # Q: keep the features of the last Q generated samples of every class as extra, detached negatives at
    # weight 1 (drifting.negatives; 0 = off): the repulsion then averages over N - 1 + Q samples. Measured harmful
    # at Q = 16 (the stale negatives move the fixed point; docs/results.md, session 14)
    neg_queue: int = 0
    # E: Drift-RAE's detached extra negatives (Zhang et al., Table 8's N_extra_neg) in the image job: E more samples
    # per class of the current generator, generated and encoded without gradient, join the negatives at weight 1,
    # so the repulsion averages over N - 1 + E samples of the generator as it is now (unlike the queue's) for a
    # forward pass each, no backward (0 = off)
    n_extra_neg: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    # the last lr_decay fraction of training (of `steps`, or of `minutes` with a time budget) ramps the lr
    # linearly down to 0 (0 = constant after the warm-up, as the paper's Table 8)
    lr_decay: float = 0.0
    grad_clip: float = 2.0
    ema_decays: tuple[float, ...] = (0.99, 0.999)
    # EMA warm-up (Drift-RAE Table 8's formula; 0 = off as in the drifting paper). On for short CPU
    # runs: without it a 0.999 EMA still holds 82% of the zero-output init after 200 steps.
    ema_warmup: int = 1000
    feature_sets: str = "abcd"  # A.5 ablation: ab | abc | abcd
    # keep only the encoder's feature groups whose keys match these comma-separated fnmatch patterns, e.g.
    # "tap1.loc,tap2.loc,tap*.mean" (None: all of A.5's groups and input.sq; `vanilla` is separate). Each group
    # is drift-normalized alone, so it weighs as much as any other: fewer groups re-weight the loss.
    groups: str | None = None
    # drift at most this many random locations per feature group and step (None: all). Each
    # location is its own problem, so a random subset is an unbiased, cheaper estimate.
    max_locations: int | None = 64
    # keep the feature groups of every training image under the frozen encoder (drifting.feature_cache): the
    # real images' features cost no forward and no A.5 statistics per step. The cache is used when it fits this
    # many GiB (0 = off) and the generator works in pixel space; the result is the same up to float rounding.
    # On in the CPU presets (cpu-wide's groups of Fashion-MNIST: 9.2 GiB).
    real_feature_cache_gb: float = 0.0
    vanilla: bool = True  # also drift the raw generator output
    # the field (drifting.FieldOptions): temperatures (A.6), Alg. 2's "laplace" kernel or C.2's "mmd" (the MMD
    # peer), kernel normalization (Table 11), a V+ - r V- (Table 1), feature and drift normalization (A.6)
    field_options: FieldOptions = FieldOptions()
    style_tokens: int | None = None  # override the generator preset's style tokens (A.2; 0 = off)
    seed: int = 0
    # bf16 autocast of the generator and encoder (training.precision): "auto" (on CUDA only), "fp32" or
    # "bf16" (also on the CPU). The field and the loss are fp32 either way.
    precision: str = "auto"
    log_every: int = 10
    sample_every: int = 250
    # at the end: accuracy of an in-domain classifier on this many samples and a classifier-feature
    # FID to the test split, with the train-vs-test floor (OUT/metrics.json; 0 = skip)
    eval_samples: int = 1000
    # a learning curve: every eval_every steps (0 = off) the same metrics on eval_samples samples of the EMA
    # generator, against the training time so far (the evaluation's own time excluded); OUT/curve.json
    eval_every: int = 0
    ckpt_every: int = 250

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.eval_every >= 0, f"eval_every must be >= 0 (0 = no learning curve), got {self.eval_every}")
        need(self.eval_every == 0 or self.eval_samples > 0,
             f"eval_every={self.eval_every} needs eval_samples > 0, got {self.eval_samples}")
        need(self.minutes is None or self.minutes > 0, f"minutes must be None or > 0, got {self.minutes}")
        need(self.job_minutes is None or self.job_minutes > 0,
             f"job_minutes must be None or > 0, got {self.job_minutes}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.classes_per_step >= 1, f"classes_per_step must be >= 1, got {self.classes_per_step}")
        need(self.n_gen >= 2, f"n_gen must be >= 2 (generated samples are also negatives), got {self.n_gen}")
        need(self.n_pos >= 1, f"n_pos must be >= 1, got {self.n_pos}")
        need(self.guidance in GUIDANCE_PRESETS,
             f"guidance must be one of {sorted(GUIDANCE_PRESETS)}, got {self.guidance!r}")
        need(self.n_uncond is None or self.n_uncond >= 0, f"n_uncond must be None or >= 0, got {self.n_uncond}")
        need(self.sampler in ("queue", "balanced"), f"sampler must be 'queue' or 'balanced', got {self.sampler!r}")
        need(self.feature_sets in ("ab", "abc", "abcd"), f"feature_sets must be ab, abc or abcd, got {self.feature_sets!r}")
        parse_groups(self.groups)
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0.0 <= self.lr_decay <= 1.0, f"lr_decay must be in [0, 1], got {self.lr_decay}")
        need(self.encoder_space in ("latent", "pixel"),
             f"encoder_space must be 'latent' or 'pixel', got {self.encoder_space!r}")
        need(isinstance(self.field_options, FieldOptions),
             f"field_options must be a FieldOptions, got {type(self.field_options).__name__}")
        need(self.style_tokens is None or self.style_tokens >= 0, f"style_tokens must be None or >= 0, got {self.style_tokens}")
        need(self.mae.width is None or self.mae.width >= 1, f"mae.width must be None or >= 1, got {self.mae.width}")
        self.mae.validate()
        need(self.neg_queue >= 0, f"neg_queue must be >= 0 (0 = off), got {self.neg_queue}")
        need(self.n_extra_neg >= 0, f"n_extra_neg must be >= 0 (0 = off), got {self.n_extra_neg}")
        need(self.real_feature_cache_gb >= 0,
             f"real_feature_cache_gb must be >= 0 (0 = no cache), got {self.real_feature_cache_gb}")
        need(self.max_locations is None or self.max_locations >= 1,
             f"max_locations must be None or >= 1, got {self.max_locations}")

    @property
    def guidance_config(self) -> GuidanceConfig:
        """The guidance preset this config names, with its ``n_uncond`` override (as ``generator`` names a
        model preset: one :func:`~drifting.presets.preset` for every kind)."""
        over = {} if self.n_uncond is None else {"n_uncond": self.n_uncond}
        return preset(GUIDANCE_PRESETS, self.guidance, "guidance", **over)


def _imagenet_preset(generator: str, encoder: str, mae_epochs: int, **kw) -> ImageTrainConfig:
    """Table 8 (ImageNet 256x256, 1.28M images): the MAE uses lr 4e-3, batch 8192, EMA 0.9995 (A.3)."""
    mae = MAEConfig(encoder=encoder, steps=round(mae_epochs * 1_281_167 / 8192), batch=8192, lr=4e-3,
                    ema_decay=0.9995, crop_scale=(0.2, 1.0))
    base = dict(generator=generator, mae=mae, grad_clip=2.0, n_gen=64, n_uncond=None, max_locations=None, ema_warmup=0,
                ema_decays=(0.999, 0.9995, 0.9998, 0.9999), sample_every=5000, ckpt_every=2000, log_every=50)
    return ImageTrainConfig(**{**base, **kw})


# the README's main job (the `cpu` preset below; its comment there says why each value)
_CPU = dict(generator="conv-small", mae=MAEConfig(cls_steps=400, cls_warmup=100), real_feature_cache_gb=12.0,
            steps=1_000_000, job_minutes=14.5, eval_samples=2000, n_pos=32, lr=3e-3, lr_decay=0.5)
# a width-16 MAE fine-tuned on labels alone after its reconstruction phase (A.3 at lambda 1). Session 19: 1600 +
# 1600 steps instead of 800 + 800 (18-21 minutes at 2 threads, once: it ships), the same cost per generator step;
# the 15-minute job's classifier FID went 20.8 -> 8-9 (docs/results.md, session 19)
_WIDE_MAE = MAEConfig(width=16, steps=1600, cls_steps=1600, cls_lambda=1.0, cls_warmup=100)


# Named training configurations (``drifting train --preset NAME``); fields left out keep the
# ImageTrainConfig defaults. The ImageNet rows are Table 8's columns; they expect ImageNet as an
# image folder (``--data DIR``) and, for the latent presets, SD-VAE latents (``--tokenizer``).
TRAIN_PRESETS: dict[str, ImageTrainConfig] = {
    # the README's main job until session 17 (now `cpu-wide`, below): Fashion-MNIST, under 15 minutes on 2 CPU
    # cores with the MAE pre-training. Chosen by
    # the lever study of docs/results.md (issue 15): A.3's classification fine-tuning of the MAE (400 steps,
    # lambda 0.1 after a 100-step warm-up), metrics on 2000 samples. Session 4 (600 steps each): P = 32
    # positives, lr 3e-3 and the last half of training ramping the lr to 0 took classifier FID 57 -> 40 and
    # accuracy 0.74 -> 0.80 at equal steps. Session 5 (8 minutes each): the conv-small U-Net (0.4x the cost of
    # conv-cpu's forward and backward) took FID 56 -> 41 at equal wall time; 1500 of its steps cost about what
    # 1000 of conv-cpu's did. The real images' features are cached. Session 13: the MAE ships with the
    # package (`drifting train-mae --train-preset cpu --ship`) and the whole job has a 14.5-minute budget
    # (job_minutes): the generator trains until then on any CPU, less the preparation (the metrics' classifier
    # the first time) and the end's 0.5 minutes; the lr schedule follows the clock. The step cap is only a cap.
    "cpu": ImageTrainConfig(**_CPU),
    # the main job with a wider encoder trained on labels only after its reconstruction phase (width 16; A.3's
    # fine-tuning at lambda 1 for 800 steps): session 8, AMD EPYC, 3 seeds, 9.5 minutes each: classifier FID
    # 38.3 -> 27.4, accuracy 0.791 -> 0.819. Since session 14 its MAE ships with the package (2.6 MB;
    # `drifting train-mae --train-preset cpu-wide --ship`; since session 19 twice the MAE steps, 18-21 minutes on
    # an AMD EPYC). The main job (`drifting train`'s default) since session 17: 15-minute jobs at 2 free threads,
    # 2 seeds, accuracy 0.843 / 0.848 against cpu's 0.843 / 0.809, classifier FID 23.4 / 18.9 against 27.8 / 28.5
    "cpu-wide": ImageTrainConfig(**{**_CPU, "mae": _WIDE_MAE}),
    # issue 15 item 3: the main job for an hour on 2 cores with cpu-wide's encoder (shipped; the hours measured
    # in sessions 9-16 used its 800 + 800-step version): 12000 steps or 60 minutes of
    # training, whichever comes first (about 1.8 steps/s on an AMD EPYC at 2 threads), with a learning curve
    # (accuracy and classifier FID every 500 steps against the training time, OUT/curve.json)
    "cpu-long": ImageTrainConfig(**{**_CPU, "mae": _WIDE_MAE, "steps": 12000, "minutes": 60.0,
                                    "job_minutes": None, "eval_every": 500}),
    # the main job with the paper's DiT generator instead (the cpu-p4 DiT; the default before the U-Net)
    "cpu-dit": ImageTrainConfig(generator="cpu-p4", mae=MAEConfig(cls_steps=400, cls_warmup=100),
                                real_feature_cache_gb=6.0, steps=1500, eval_samples=2000),
    # the main job before issue 15 (the ImageTrainConfig defaults: cpu-small DiT, plain MAE, 1000 steps): the
    # preset of the ablation and peer tables in docs/results.md measured before it
    "cpu-v1": ImageTrainConfig(),
    "cpu-tiny": ImageTrainConfig(generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=30, batch=32),
                                 steps=20, classes_per_step=4, n_gen=4, n_pos=4, n_uncond=4, max_locations=16,
                                 warmup=5, ema_warmup=10, sample_every=10, ckpt_every=10,
                                 log_every=5),  # smoke tests, seconds
    "ablation": _imagenet_preset("B/2", "latent-256", 192, steps=30_000, lr=2e-4, weight_decay=0.01, warmup=5000,
                                 classes_per_step=64, n_pos=64, guidance="ablation", ema_decays=(0.999,)),
    "B/2": _imagenet_preset("B/2", "latent-640", 1280, steps=200_000, lr=4e-4, weight_decay=0.0, warmup=10_000,
                            classes_per_step=128, n_pos=128, guidance="B/2"),
    "L/2": _imagenet_preset("L/2", "latent-640", 1280, steps=200_000, lr=4e-4, weight_decay=0.01, warmup=10_000,
                            classes_per_step=128, n_pos=64, guidance="L/2"),
    "B/16": _imagenet_preset("B/16", "pixel-640", 1280, steps=100_000, lr=2e-4, weight_decay=0.01, warmup=10_000,
                             classes_per_step=128, n_pos=128, guidance="B/16"),
    "L/16": _imagenet_preset("L/16", "pixel-640", 1280, steps=100_000, lr=4e-4, weight_decay=0.01, warmup=10_000,
                             classes_per_step=128, n_pos=128, guidance="L/16"),
}


def train_preset(name: str, **overrides) -> ImageTrainConfig:
    """``ImageTrainConfig`` of the preset ``name`` with ``overrides`` (:func:`drifting.presets.preset`; None
    values are ignored, at the top and inside a nested dict; ``mae`` and ``field_options`` take a dict of
    :class:`MAEConfig` or :class:`~drifting.FieldOptions` fields merged into the preset's).
    ``minutes`` replaces the preset's job budget unless ``job_minutes`` is given too, and 0 lifts a budget,
    so that only ``steps`` ends the run."""
    over = {k: {kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v
            for k, v in overrides.items() if v is not None}
    over = {k: v for k, v in over.items() if v != {}}
    if "minutes" in over and "job_minutes" not in over:
        over["job_minutes"] = None  # a training budget given replaces the preset's job budget
    for budget in ("minutes", "job_minutes"):
        if over.get(budget) == 0:
            over[budget] = None  # 0: no such budget, the preset's included
    return preset(TRAIN_PRESETS, name, "training", **over)

"""Drifting Policy and Diffusion Policy behind one contract (paper §5.3, Table 7).

Both map the last ``To`` observations to ``Tp`` normalized actions with the same conditional 1-D
U-Net (:mod:`drifting.policy.unet`, FiLM on the flattened normalized observations):

* :class:`DriftingPolicy`: one pass, ``actions = f(noise, obs)`` (NFE 1). Trained with the drifting
  loss on raw (normalized) action sequences, no feature encoder: each observation of a batch is
  its own problem, with ``n_gen`` generated sequences (also the negatives, self pairs masked) and
  its demonstration sequence as the one positive.
* :class:`DiffusionPolicy`: Diffusion Policy's DDPM (epsilon prediction, squared-cosine schedule,
  100 training steps), sampled with 100 DDPM steps or fewer DDIM steps (diffusers' schedulers).
* :class:`RegressionPolicy`: the same U-Net fed zeros instead of noise and trained with L2 to the
  demonstrated sequence (a unimodal baseline: it tells whether the data or the method is the limit).

Contract (Diffusion Policy's): ``compute_loss(batch) -> (loss, stats)`` with ``batch = {"obs":
[B, To, obs_dim], "action": [B, Tp, act_dim]}`` in raw units, and ``predict_action(obs) ->
[B, Ta, act_dim]`` raw actions for the current step onwards (prediction rows ``To - 1 .. To - 2 +
Ta``). The normalizers are fitted on the demonstrations and saved with the weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..field import DEFAULT_TEMPERATURES
from ..loss import drifting_loss
from .data import Normalizer
from .obs import OBS_FEATURES, feature_dim, obs_features
from .unet import ConditionalUnet1D, UNet1DConfig

KINDS = ("drifting", "diffusion", "regression")
SCHEDULERS = ("ddpm", "ddim")


@dataclass
class PolicyConfig:
    """A policy's shapes, horizons and method settings (saved with it)."""

    kind: str
    obs_dim: int
    action_dim: int
    n_obs_steps: int = 2  # To
    horizon: int = 16  # Tp
    n_action_steps: int = 8  # Ta
    down_dims: tuple[int, ...] = (64, 128, 256)
    # what the U-Net sees of each raw observation (policy.obs: "raw", or for PushT "sincos" / "keypoints")
    obs_features: str = "raw"
    # drifting: generated sequences per observation (the field's N) and the kernel temperatures
    n_gen: int = 16
    # drifting: positives per observation (its demonstration + the nearest other demonstrations' windows
    # within pos_radius; see WindowDataset.neighbors) - a training-data choice, saved for the record
    n_pos: int = 1
    pos_radius: float = 0.15
    # drifting: one field per action timestep (Tp problems of act_dim numbers, the multi-location form
    # [B, N, Tp, act_dim] of drifting_loss) instead of one field on the whole Tp * act_dim sequence
    per_timestep: bool = False
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    # diffusion: training steps of the DDPM schedule; sampling scheduler and its number of steps
    train_timesteps: int = 100
    scheduler: str = "ddpm"
    inference_steps: int = 100
    extra: dict = field(default_factory=dict)

    def validate(self) -> "PolicyConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.kind in KINDS, f"kind must be one of {KINDS}, got {self.kind!r}")
        need(self.obs_dim >= 1 and self.action_dim >= 1, f"obs_dim and action_dim must be >= 1, got "
             f"{self.obs_dim}, {self.action_dim}")
        need(1 <= self.n_obs_steps <= self.horizon,
             f"n_obs_steps must be in [1, horizon={self.horizon}], got "
             f"{self.n_obs_steps}")
        need(1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1,
             "n_action_steps must be in [1, horizon - n_obs_steps + 1 "
             f"= {self.horizon - self.n_obs_steps + 1}], got {self.n_action_steps}")
        need(self.n_gen >= 2,
             f"n_gen must be >= 2 (the generated sequences are also the negatives), got {self.n_gen}")
        need(isinstance(self.n_pos, int) and self.n_pos >= 1,
             f"n_pos must be an integer >= 1, got {self.n_pos!r}")
        need(self.pos_radius >= 0, f"pos_radius must be >= 0, got {self.pos_radius}")
        need(self.obs_features in OBS_FEATURES,
             f"obs_features must be one of {OBS_FEATURES}, got {self.obs_features!r}")
        need(self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        need(1 <= self.inference_steps <= self.train_timesteps,
             f"inference_steps must be in [1, train_timesteps={self.train_timesteps}], "
             f"got {self.inference_steps}")
        return self

    @property
    def nfe(self) -> int:
        """Network evaluations per predicted action chunk."""
        return self.inference_steps if self.kind == "diffusion" else 1


class Policy(nn.Module, ABC):
    """The shared part: normalizers, the U-Net, observation conditioning, action-chunk slicing."""

    def __init__(self, config: PolicyConfig, obs_norm: Normalizer | None = None,
                 action_norm: Normalizer | None = None):
        super().__init__()
        self.config = config.validate()
        feat = feature_dim(config.obs_dim, config.obs_features)
        self.obs_norm = obs_norm or Normalizer(feat)  # on the features, not the raw observation
        if self.obs_norm.scale.shape[0] != feat:
            raise ValueError(f"obs_norm has {self.obs_norm.scale.shape[0]} dimensions; obs_features "
                             f"{config.obs_features!r} of a {config.obs_dim}-d observation have {feat}")
        self.action_norm = action_norm or Normalizer(config.action_dim)
        self.model = ConditionalUnet1D(UNet1DConfig(
            action_dim=config.action_dim, cond_dim=config.n_obs_steps * feat,
            down_dims=tuple(config.down_dims), time_embed_dim=64 if config.kind == "diffusion" else 0))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _cond(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw ``obs [B, To, obs_dim]`` -> the U-Net's conditioning ``[B, To * obs_dim]``."""
        c = self.config
        if obs.dim() != 3 or obs.shape[1:] != (c.n_obs_steps, c.obs_dim):
            raise ValueError(f"obs must be [B, n_obs_steps={c.n_obs_steps}, obs_dim={c.obs_dim}], "
                             f"got {tuple(obs.shape)}")
        return self.embed_obs(obs.float()).flatten(1)

    def embed_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations ``[..., obs_dim]`` -> normalized features ``[..., feature_dim]``."""
        return self.obs_norm.normalize(obs_features(obs, self.config.obs_features))

    def _check_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        obs, action = batch["obs"].to(self.device), batch["action"].to(self.device)
        if (action.dim() != 3 or action.shape[1:] != (c.horizon, c.action_dim)
                or action.shape[0] != obs.shape[0]):
            raise ValueError(f"action must be [B, horizon={c.horizon}, action_dim={c.action_dim}] with obs's "
                             f"B; got {tuple(action.shape)}")
        return self._cond(obs), self.action_norm.normalize(action.float())

    @abstractmethod
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized action sequences ``[B, Tp, act_dim]`` for conditioning ``cond [B, To * obs_dim]``."""

    @abstractmethod
    def compute_loss(self, batch: dict,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """The training loss of a batch of raw windows, and scalar stats."""

    @torch.no_grad()
    def predict_action(self, obs, generator: torch.Generator | None = None) -> np.ndarray:
        """Raw ``obs [B, To, obs_dim]`` (array or tensor) -> raw actions ``[B, Ta, act_dim]`` to execute
        now."""
        c = self.config
        cond = self._cond(torch.as_tensor(np.asarray(obs, np.float32)).to(self.device))
        seq = self.action_norm.unnormalize(self.sample(cond, generator))  # [B, Tp, act_dim]
        return seq[:, c.n_obs_steps - 1: c.n_obs_steps - 1 + c.n_action_steps].cpu().numpy()

    def _noise(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        c = self.config
        # drawn on the CPU: device-independent
        z = torch.randn(n, c.horizon, c.action_dim, generator=generator)
        return z.to(self.device)


class DriftingPolicy(Policy):
    """One-step policy trained with the drifting loss on action sequences (§5.3)."""

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model(self._noise(cond.shape[0], generator), cond)  # [B, Tp, act_dim], one pass

    def compute_loss(self, batch: dict,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """``n_gen`` sequences per observation drift toward its demonstration (and, when the batch has
        ``positives [B, P, Tp, act_dim]``, toward those) and away from each other."""
        c = self.config
        cond, target = self._check_batch(batch)  # [B, To*obs_dim], [B, Tp, act_dim]
        B, N = cond.shape[0], c.n_gen
        x = self.model(self._noise(B * N, generator), cond.repeat_interleave(N, dim=0))  # [B*N, Tp, act_dim]
        # one problem per observation: [B, N, Tp*act_dim], or per timestep [B, N, Tp, act_dim]
        shape = (c.horizon, c.action_dim) if c.per_timestep else (c.horizon * c.action_dim,)
        gen = x.reshape(B, N, *shape)
        if "positives" in batch:
            pos = batch["positives"].to(self.device).float()
            if pos.dim() != 4 or pos.shape[0] != B or pos.shape[2:] != (c.horizon, c.action_dim):
                raise ValueError(f"positives must be [B={B}, P, horizon={c.horizon}, "
                                 f"action_dim={c.action_dim}], got {tuple(pos.shape)}")
            pos = self.action_norm.normalize(pos).reshape(B, -1, *shape)  # [B, P, ...]
        else:
            pos = target.reshape(B, 1, *shape)  # [B, 1, ...]: its demonstration
        loss, stats = drifting_loss(gen, pos, temperatures=c.temperatures)
        return loss, {k: float(v) for k, v in stats.items()}


class DiffusionPolicy(Policy):
    """Diffusion Policy (Chi et al. 2023): DDPM on action sequences, epsilon prediction."""

    def __init__(self, config: PolicyConfig, obs_norm: Normalizer | None = None,
                 action_norm: Normalizer | None = None):
        super().__init__(config, obs_norm, action_norm)
        from diffusers import DDIMScheduler, DDPMScheduler

        self.train_scheduler = DDPMScheduler(num_train_timesteps=config.train_timesteps,
                                             beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                             prediction_type="epsilon")
        cls = DDPMScheduler if config.scheduler == "ddpm" else DDIMScheduler
        self.sample_scheduler = cls.from_config(self.train_scheduler.config)

    def compute_loss(self, batch: dict,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        cond, a0 = self._check_batch(batch)  # [B, To*obs_dim], [B, Tp, act_dim]
        B = a0.shape[0]
        eps = self._noise(B, generator)
        t = torch.randint(0, self.config.train_timesteps, (B,), generator=generator).to(self.device)
        noisy = self.train_scheduler.add_noise(a0, eps, t)
        loss = (self.model(noisy, cond, t) - eps).square().mean()
        return loss, {}

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        sched = self.sample_scheduler
        sched.set_timesteps(self.config.inference_steps)
        x = self._noise(cond.shape[0], generator)  # [B, Tp, act_dim]
        for t in sched.timesteps:
            eps = self.model(x, cond, t.to(self.device).expand(cond.shape[0]))
            x = sched.step(eps, t, x, generator=generator).prev_sample
        return x


class RegressionPolicy(Policy):
    """The U-Net as a deterministic regressor: input zeros, L2 to the demonstrated sequence (NFE 1)."""

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        zeros = torch.zeros(cond.shape[0], c.horizon, c.action_dim, device=cond.device)
        return self.model(zeros, cond)  # [B, Tp, act_dim]

    def compute_loss(self, batch: dict,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        cond, target = self._check_batch(batch)  # [B, To*obs_dim], [B, Tp, act_dim]
        return (self.sample(cond) - target).square().mean(), {}


_POLICY_CLASSES = {"drifting": DriftingPolicy, "diffusion": DiffusionPolicy, "regression": RegressionPolicy}


def build_policy(config: PolicyConfig, obs_norm: Normalizer | None = None,
                 action_norm: Normalizer | None = None) -> Policy:
    """The policy of ``config.kind``."""
    config.validate()
    return _POLICY_CLASSES[config.kind](config, obs_norm, action_norm)


def config_dict(config: PolicyConfig) -> dict:
    """JSON-able form of a config (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


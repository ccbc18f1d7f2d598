"""Demonstrations as training windows, and the normalizer fitted on them (Diffusion Policy's contract).

Horizons (Chi et al. 2023): a policy sees the last ``To = n_obs_steps`` observations, predicts
``Tp = horizon`` actions starting at the oldest of them, and executes ``Ta = n_action_steps`` of
them starting at the current step (index ``To - 1`` of the prediction), then replans (receding
horizon). A training window therefore starts ``To - 1`` steps before its current step; windows
that run over an episode's start or end repeat the edge step, as Diffusion Policy's sampler
pads (``To - 1`` steps before, ``Ta - 1`` after).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """Per-dimension affine map of the data's range onto ``[-1, 1]`` (Diffusion Policy's "limits"
    mode). A constant dimension maps to 0. Its state lives in buffers, so it is saved with the policy."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor, eps: float = 1e-4) -> "Normalizer":
        """Fit on ``data [T, dim]`` (any leading shape flattened)."""
        x = torch.as_tensor(np.asarray(data), dtype=torch.float32).reshape(-1, np.shape(data)[-1])
        if x.shape[0] == 0:
            raise ValueError("data must hold at least one row to fit a normalizer")
        if not torch.isfinite(x).all():
            raise ValueError("data contains non-finite values")
        lo, hi = x.min(0).values, x.max(0).values
        span = hi - lo
        flat = span < eps
        norm = cls(x.shape[1])
        norm.scale.copy_(torch.where(flat, torch.ones_like(span), 2.0 / span.clamp_min(eps)))
        norm.offset.copy_(torch.where(flat, -lo, -1.0 - lo * norm.scale))
        return norm

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> ``[..., dim]`` in ``[-1, 1]`` on the fitted range."""
        return x * self.scale + self.offset

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale


def window_indices(episode_ends: np.ndarray, n_obs_steps: int, horizon: int,
                   n_action_steps: int) -> np.ndarray:
    """Row indices ``[W, horizon]`` into the concatenated demo arrays, one row per training window.

    For an episode of length ``T`` the windows start at ``s = -(To - 1) .. T - Tp + Ta - 1`` and cover
    steps ``s .. s + Tp - 1``, each clamped into the episode (edge padding). Window ``w``'s current
    step is column ``To - 1``.
    """
    if not (1 <= n_obs_steps <= horizon and 1 <= n_action_steps <= horizon - n_obs_steps + 1):
        raise ValueError(f"horizons must satisfy 1 <= n_obs_steps <= horizon and 1 <= n_action_steps <= "
                         f"horizon - n_obs_steps + 1; got n_obs_steps={n_obs_steps}, horizon={horizon}, "
                         f"n_action_steps={n_action_steps}")
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    rows = []
    for a, b in zip(starts, ends):
        T = int(b - a)
        if T < 1:
            continue
        # window starts
        s = np.arange(-(n_obs_steps - 1), max(T - horizon + n_action_steps, 1 - n_obs_steps + 1))
        steps = np.clip(s[:, None] + np.arange(horizon)[None, :], 0, T - 1)  # [W_e, Tp]
        rows.append(a + steps)
    if not rows:
        raise ValueError("the demonstrations hold no steps")
    return np.concatenate(rows)


class WindowDataset(torch.utils.data.Dataset):
    """Training windows of demonstrations: ``{"obs": [To, obs_dim], "action": [Tp, act_dim]}``, raw units."""

    def __init__(self, obs: np.ndarray, action: np.ndarray, episode_ends: np.ndarray, *, n_obs_steps: int,
                 horizon: int, n_action_steps: int):
        if len(obs) != len(action):
            raise ValueError(f"obs and action must have one row per step; got {len(obs)} and {len(action)}")
        self.obs = torch.as_tensor(np.asarray(obs, np.float32))  # [T_total, obs_dim]
        self.action = torch.as_tensor(np.asarray(action, np.float32))  # [T_total, act_dim]
        # [W, Tp]
        self.index = torch.as_tensor(window_indices(episode_ends, n_obs_steps, horizon, n_action_steps))
        self.n_obs_steps = n_obs_steps
        ends = torch.as_tensor(np.asarray(episode_ends, np.int64))
        # [W]: each window's episode
        self.episode = torch.searchsorted(ends, self.index[:, 0].contiguous(), right=True)

    def neighbors(self, k: int, embed, radius: float, chunk: int = 1024) -> torch.Tensor:
        """``[W, k]`` window indices: each window itself, then its ``k - 1`` nearest windows from *other*
        episodes by the Euclidean distance of their embedded observation windows (``embed``: raw
        ``[..., obs_dim]`` -> ``[..., F]``, e.g. a :class:`Normalizer`'s ``normalize`` or a policy's
        ``embed_obs``; ``[To * F]`` per window, units of the ``[-1, 1]`` range). A neighbour farther
        than ``radius`` is replaced by the window
        itself. Same-episode windows are left out: they are the same demonstration shifted in time, so
        their action sequences are not alternatives for this state."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not radius >= 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        W = len(self)
        own = torch.arange(W)
        if k == 1:
            return own[:, None]
        f = embed(self.obs[self.index[:, : self.n_obs_steps]]).flatten(1)  # [W, To*F]
        out = torch.empty(W, k, dtype=torch.long)
        for a in range(0, W, chunk):
            rows = slice(a, min(a + chunk, W))
            d = torch.cdist(f[rows], f)  # [c, W]
            d.masked_fill_(self.episode[rows, None] == self.episode[None], float("inf"))
            dist, j = d.topk(min(k - 1, W), dim=1, largest=False)  # [c, k-1]
            j = torch.where(dist <= radius, j, own[rows, None])  # too far (or none left): the window itself
            out[rows] = torch.cat([own[rows, None], j], dim=1)
        return out

    def __len__(self) -> int:
        return self.index.shape[0]

    def batch(self, rows: torch.Tensor, neighbors: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Windows ``rows [B]`` at once: ``obs [B, To, obs_dim]``, ``action [B, Tp, act_dim]``; with
        ``neighbors`` (from :meth:`neighbors`) also ``positives [B, k, Tp, act_dim]``, the action
        sequences of each window and its neighbours."""
        idx = self.index[rows]  # [B, Tp]
        out = {"obs": self.obs[idx[:, : self.n_obs_steps]], "action": self.action[idx]}
        if neighbors is not None:
            out["positives"] = self.action[self.index[neighbors[rows]]]  # [B, k, Tp, act_dim]
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.batch(torch.tensor([i]))
        return {k: v[0] for k, v in b.items()}

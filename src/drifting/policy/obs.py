"""Observation features of the policies: what the U-Net is conditioned on, computed from the raw env
observation so that demonstrations, evaluation and saved policies all keep the env's own layout.

PushT's raw observation ``[agent_x, agent_y, block_x, block_y, block_angle]`` takes the angle modulo
``2 pi``, so the input jumps across its whole range when the block turns through 0. Two features
that never wrap:

* ``"sincos"``: ``[agent_x, agent_y, block_x, block_y, sin(angle), cos(angle)]`` (6 numbers);
* ``"keypoints"``: the agent position and the T's 8 outline vertices in world coordinates
  (18 numbers), as Diffusion Policy's low-dim PushT task observes keypoints of the T.

``"raw"`` is the observation itself (the only choice for LunarLander).
"""

from __future__ import annotations

import numpy as np
import torch

# [8, 2] counter-clockwise outline of PushT's T in the block's frame (its origin is the observed block
# position): the bar spans y in [0, 30], the stem runs from it to y = 120
T_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], dtype=np.float64
)

OBS_FEATURES = ("raw", "sincos", "keypoints")


def check_obs_features(env: str, mode: str) -> str:
    if mode not in OBS_FEATURES:
        raise ValueError(f"obs_features must be one of {OBS_FEATURES}, got {mode!r}")
    if mode != "raw" and env != "pusht":
        raise ValueError(f"obs_features {mode!r} is defined for env 'pusht' only; use 'raw' for {env!r}")
    return mode


def feature_dim(obs_dim: int, mode: str) -> int:
    """Width of the features of an ``obs_dim`` observation."""
    return {"raw": obs_dim, "sincos": obs_dim + 1, "keypoints": 2 + 2 * len(T_OUTLINE)}[mode]


def obs_features(obs: torch.Tensor, mode: str) -> torch.Tensor:
    """Raw observations ``[..., obs_dim]`` -> features ``[..., feature_dim]`` (see the module doc)."""
    if mode == "raw":
        return obs
    agent, pos, angle = obs[..., 0:2], obs[..., 2:4], obs[..., 4]
    c, s = torch.cos(angle), torch.sin(angle)
    if mode == "sincos":
        return torch.cat([agent, pos, s[..., None], c[..., None]], dim=-1)
    if mode != "keypoints":
        raise ValueError(f"obs_features must be one of {OBS_FEATURES}, got {mode!r}")
    local = torch.as_tensor(T_OUTLINE, dtype=obs.dtype, device=obs.device)  # [K, 2] block-local
    # world = pos + R(angle) @ local, R = [[c, -s], [s, c]]
    x = pos[..., None, 0] + c[..., None] * local[:, 0] - s[..., None] * local[:, 1]  # [..., K]
    y = pos[..., None, 1] + s[..., None] * local[:, 0] + c[..., None] * local[:, 1]  # [..., K]
    return torch.cat([agent, torch.stack([x, y], dim=-1).flatten(-2)], dim=-1)

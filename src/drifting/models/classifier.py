"""A small in-domain CNN classifier, used to monitor sample quality (accuracy on class-conditional
samples, Fréchet distance in its penultimate features)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .pretrained import PretrainedMixin


@dataclass
class ClassifierConfig:
    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128


class SmallCNN(PretrainedMixin, nn.Module):
    """conv-conv-pool-conv-conv-pool-MLP; ``features(x) [B, feature_dim]`` feeds the Fréchet distance."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(config.in_channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * w * 16, config.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # [B, feature_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [B, K]

"""A small MLP generator for point clouds (the paper's toy studies, Fig. 3-4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class MLPConfig:
    noise_dim: int = 8  # dimension of the Gaussian noise epsilon
    out_dim: int = 2  # dimension d of the generated points
    hidden: int = 256
    depth: int = 3  # number of hidden layers
    # Random style embeddings (paper A.2): each sample also draws `style_tokens` random indices
    # into a learnable codebook of `codebook_size` vectors, summed into the first hidden layer.
    # The noise is then (Gaussian, discrete): the generator can place disconnected modes
    # without stretching one continuous map across the gaps between them. 0 disables it.
    style_tokens: int = 0
    codebook_size: int = 64


class MLPGenerator(nn.Module):
    """``f(eps) -> x``: ``[n, noise_dim] -> [n, out_dim]``, SiLU MLP.

    Follows the generator contract ``forward(noise, labels=None, alpha=None)``; this model is
    unconditional and ignores ``labels`` and ``alpha``.
    """

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        dims = [config.noise_dim] + [config.hidden] * config.depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dims[-1], config.out_dim)
        self.codebook = None
        if config.style_tokens > 0:
            self.codebook = nn.Embedding(config.codebook_size, config.hidden)
            nn.init.normal_(self.codebook.weight, std=1.0 / config.style_tokens**0.5)

    def forward(self, noise: torch.Tensor, labels=None, alpha=None,
                style: torch.Tensor | None = None) -> torch.Tensor:
        """``noise [n, noise_dim]``; ``style [n, style_tokens]`` integer indices (drawn if None)."""
        h = self.body[0](noise)  # [n, hidden]
        if self.codebook is not None:
            if style is None:
                style = torch.randint(self.config.codebook_size, (noise.shape[0], self.config.style_tokens),
                                      device=noise.device)
            h = h + self.codebook(style).sum(1)  # [n, hidden]
        for layer in self.body[1:]:
            h = layer(h)
        return self.head(h)  # [n, out_dim]

    def draw_noise(self, n: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The generator's full noise: Gaussian ``[n, noise_dim]`` and style indices ``[n, tokens]``."""
        noise = torch.randn(n, self.config.noise_dim, generator=generator)
        style = None
        if self.config.style_tokens > 0:
            style = torch.randint(self.config.codebook_size, (n, self.config.style_tokens),
                                  generator=generator)
        return noise, style

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        noise, style = self.draw_noise(n, generator)
        dev = next(self.parameters()).device
        return self(noise.to(dev), style=None if style is None else style.to(dev))

    @torch.no_grad()
    def init_output(self, center: torch.Tensor, spread: float) -> None:
        """Start the pushforward q near ``center`` with a small ``spread`` (Fig. 3's initializations)."""
        self.head.bias.copy_(torch.as_tensor(center, dtype=self.head.bias.dtype))
        w = self.head.weight
        h = self.head
        self.head = nn.Identity()
        probe = self.sample(1024)  # [1024, hidden]: features before the head
        self.head = h
        out_std = (probe @ w.T).std(0).mean().clamp_min(1e-12)
        w.mul_(spread / out_std)

    def config_dict(self) -> dict:
        return asdict(self.config)

"""What every one-step generator of this library shares (the DiT of A.2 and the convolutional one).

A generator is a plain ``forward(noise, labels, alpha, style) -> x`` whose config has ``input_size``,
``in_channels``, ``num_classes``, ``style_tokens``, ``codebook_size`` and ``time_cond``; this mixin gives it
the argument checks (clear errors naming the argument), the style draws of A.2 and one-step ``sample``.
A subclass sets ``self.config`` and has a ``class_embed`` (its device is the model's).
"""

from __future__ import annotations

import math

import torch


def _checking_values() -> bool:
    """Value checks (label range, alpha >= 1) need a device sync; skip them inside torch.compile."""
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


class OneStepGenerator:
    """Mixin: input checks, style draws and 1-NFE sampling for ``f(noise, labels, alpha, style)``."""

    @property
    def device(self) -> torch.device:
        return self.class_embed.weight.device

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (the fixed position/RoPE tables are buffers and not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_inputs(self, noise, labels, alpha, style) -> torch.Tensor:
        """Validate the forward arguments; return alpha as a float tensor ``[B]``."""
        cfg = self.config
        want = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if not isinstance(noise, torch.Tensor) or noise.dim() != 4 or tuple(noise.shape[1:]) != want:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise: expected shape [B, {want[0]}, {want[1]}, {want[2]}], got {got}")
        if not noise.is_floating_point():
            raise ValueError(f"noise: expected a floating-point tensor, got {noise.dtype}")
        B = noise.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (B,) or labels.is_floating_point() \
                or labels.is_complex() or labels.dtype == torch.bool:
            got = (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                   else type(labels).__name__)
            raise ValueError(f"labels: expected an integer tensor of shape [{B}], got {got}")
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if not (math.isfinite(alpha) and alpha >= 1):
                raise ValueError(f"alpha: the CFG scale must be a finite float >= 1, got {alpha}")
            alpha = torch.full((B,), float(alpha), device=noise.device)
        elif isinstance(alpha, torch.Tensor) and alpha.shape in ((), (B,)):
            alpha = alpha.to(device=noise.device, dtype=torch.float32).expand(B)
        else:
            got = tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
            raise ValueError(f"alpha: expected a float or a tensor of shape [{B}], got {got}")
        if style is not None:
            K = cfg.style_tokens
            if not isinstance(style, torch.Tensor) or style.shape != (B, K) or style.is_floating_point():
                got = (f"{style.dtype} {tuple(style.shape)}" if isinstance(style, torch.Tensor)
                       else type(style).__name__)
                raise ValueError(f"style: expected an integer tensor of shape [{B}, {K}], got {got}")
        if _checking_values():  # data-dependent checks: a host sync, skipped under torch.compile
            if B > 0 and (labels.min() < 0 or labels.max() >= cfg.num_classes):
                raise ValueError(f"labels: must lie in [0, {cfg.num_classes}), got range "
                                 f"[{labels.min().item()}, {labels.max().item()}]")
            if B > 0 and not bool((alpha >= 1).all() & torch.isfinite(alpha).all()):
                raise ValueError("alpha: the CFG scale must be finite and >= 1, got "
                                 f"min {alpha.min().item()}")
            if style is not None and style.numel() > 0 and (style.min() < 0
                                                            or style.max() >= cfg.codebook_size):
                raise ValueError(f"style: indices must lie in [0, {cfg.codebook_size}), got range "
                                 f"[{style.min().item()}, {style.max().item()}]")
        return alpha

    def _check_time(self, t, B: int, device: torch.device) -> torch.Tensor | None:
        """Validate ``t`` against ``config.time_cond``; return it as a float tensor ``[B]`` (or None)."""
        return self._check_unit_input(t, "t", "the flow time", "time_cond", B, device)

    def _check_interval(self, h, B: int, device: torch.device) -> torch.Tensor | None:
        """Validate MeanFlow's interval ``h = t - r`` against ``config.interval_cond``; return it as a float
        tensor ``[B]`` (or None)."""
        return self._check_unit_input(h, "h", "the interval t - r", "interval_cond", B, device)

    def _check_unit_input(self, v, name: str, what: str, flag: str, B: int,
                          device: torch.device) -> torch.Tensor | None:
        """``v`` (a float or a ``[]`` / ``[B]`` float tensor in [0, 1]) as ``[B]`` when ``config.<flag>`` is
        on;
        None when it is off (then ``v`` must be None). Errors name ``name`` and the allowed values."""
        cls = type(self.config).__name__
        if not getattr(self.config, flag, False):
            if v is not None:
                raise ValueError(f"{name}: this model has no such conditioning ({cls}.{flag}=False); "
                                 f"{name} must be None (leave it out)")
            return None
        if v is None:
            raise ValueError(f"{name}: this model is {flag.split('_')[0]}-conditioned ({cls}.{flag}=True); "
                             f"pass {name}, a float in [0, 1] or a float tensor of shape [] or [{B}] with "
                             "values in [0, 1]")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name}: {what} must be a float in [0, 1], got {v}")
            return torch.full((B,), float(v), device=device)
        if isinstance(v, torch.Tensor) and v.shape in ((), (B,)) and v.is_floating_point():
            v = v.to(device=device, dtype=torch.float32).expand(B)
            if _checking_values() and B > 0 and not bool(((v >= 0) & (v <= 1)).all()):  # NaN fails too
                raise ValueError(f"{name}: {what} must lie in [0, 1], got range "
                                 f"[{v.min().item()}, {v.max().item()}]")
            return v
        got = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{name}: expected a float in [0, 1] or a float tensor of shape [] or [{B}], "
                         f"got {got}")

    # ---- noise and sampling --------------------------------------------------------------

    def draw_style(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform style indices ``[batch, style_tokens]`` (``[batch, 0]`` when style is off).

        Drawn on the generator's device (the model's when ``generator`` is None), returned on the
        model's device, so a seeded CPU generator gives the same styles on any device.
        """
        dev = generator.device if generator is not None else self.device
        style = torch.randint(max(self.config.codebook_size, 1), (batch, self.config.style_tokens),
                              generator=generator, device=dev)
        return style.to(self.device)

    @torch.no_grad()
    def sample(self, labels, alpha: torch.Tensor | float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One-step generation (1 NFE): draw noise then style with ``generator``, return ``x``."""
        labels = torch.as_tensor(labels, device=self.device)
        if labels.dim() != 1:
            raise ValueError("labels: expected a 1-D sequence of class indices, got "
                             f"shape {tuple(labels.shape)}")
        cfg = self.config
        B = labels.shape[0]
        dev = generator.device if generator is not None else self.device
        noise = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator,
                            device=dev)
        style = self.draw_style(B, generator) if cfg.style_tokens > 0 else None
        return self(noise.to(self.device), labels, alpha, style)

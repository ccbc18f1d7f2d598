"""How a drifting field is computed: :class:`FieldOptions`, the one carrier of the field's options.

The loss (:func:`drifting.drifting_loss`), the batched field (:func:`drifting.field.drift_fields`), the
reference field (:func:`drifting.compute_V`, :func:`drifting.field.drift_from_distances`), Drift-RAE's loss
and the run configurations (points, images, distillation) all take one ``FieldOptions`` instead of repeating
its fields. A function that takes ``options`` also takes any of its fields as keywords, which override it:
``drifting_loss(gen, pos, temperatures=(0.05,))`` is ``drifting_loss(gen, pos,
options=FieldOptions(temperatures=(0.05,)))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .common import NORMALIZE_CHOICES, Normalize

DEFAULT_TEMPERATURES = (0.02, 0.05, 0.2)  # A.6: tau in {0.02, 0.05, 0.2}, one normalized drift each, summed
KERNELS = ("laplace", "mmd")  # Alg. 2's kernel, or the Gaussian-kernel MMD field of C.2


@dataclass(frozen=True)
class FieldOptions:
    """The drifting field's options (frozen; validated when made, errors name the field).

    Attributes:
        temperatures: the tau values (A.6); the loss sums one normalized drift per tau, at the kernel
            temperature ``tau * sqrt(C_j)`` of the normalized features of group j (Eq. 22).
        normalize: the kernel's normalization (Table 11): ``"both"`` (Alg. 2: the geometric mean of the
            softmaxes over y and over x), ``"y"`` (over y only), ``"none"``, or ``"separate"`` (Eq. 8-10:
            V+ and V- each normalized over their own set).
        attraction, repulsion: a and r in ``V = a V+ - r V-`` (Table 1; 1 and 1 is the anti-symmetric field).
        kernel: ``"laplace"`` (Alg. 2) or ``"mmd"`` (C.2; normalize, attraction and repulsion must then keep
            their defaults).
        normalize_features: divide every feature group by its mean pairwise distance ``S_j`` (Eq. 21).
        normalize_drift: divide every drift by ``lambda_j = sqrt(E ||V~||^2 / C_j)`` (Eq. 25).
    """

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    normalize: Normalize = "both"
    attraction: float = 1.0
    repulsion: float = 1.0
    kernel: str = "laplace"
    normalize_features: bool = True
    normalize_drift: bool = True

    def __post_init__(self) -> None:
        temps = self.temperatures
        if isinstance(temps, (int, float)):
            temps = (temps,)
        try:
            temps = tuple(float(t) for t in temps)
        except (TypeError, ValueError):
            temps = ()
        if not temps or any(not (math.isfinite(t) and t > 0) for t in temps):
            raise ValueError("temperatures must be a non-empty list of positive numbers, "
                             f"got {self.temperatures!r}")
        object.__setattr__(self, "temperatures", temps)  # a list from JSON or a flag becomes a tuple
        if self.normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {self.normalize!r}")
        for name in ("attraction", "repulsion"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        laplace_only = self.normalize != "both" or self.attraction != 1.0 or self.repulsion != 1.0
        if self.kernel == "mmd" and laplace_only:
            raise ValueError("normalize, attraction and repulsion apply to the Laplace kernel of Alg. 2, "
                             "not to kernel='mmd'")


FIELD_OPTION_NAMES = tuple(f.name for f in fields(FieldOptions))
# the options of one kernel evaluation at a given temperature (compute_V, drift_from_distances, drift_fields);
# the others (temperatures, kernel, feature and drift normalization) belong to the loss
KERNEL_OPTION_NAMES = ("normalize", "attraction", "repulsion")


def field_options(options: FieldOptions | None, overrides: dict, where: str,
                  allowed: tuple[str, ...] = FIELD_OPTION_NAMES) -> FieldOptions:
    """``options`` (default: ``FieldOptions()``) with ``overrides`` (keywords given to the function ``where``)
    applied; a keyword outside ``allowed`` is a ``TypeError`` that lists the allowed ones."""
    if options is None:
        options = FieldOptions()
    elif not isinstance(options, FieldOptions):
        raise TypeError(f"{where}(): options must be a FieldOptions, got {type(options).__name__}")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {unknown}; the field options it takes "
                        f"as keywords are {list(allowed)}")
    return replace(options, **overrides) if overrides else options

"""drifting: one-step generative models trained with a drifting field.

Public API (see README): :func:`compute_V` (Alg. 2), :func:`mmd_field` (C.2),
:func:`drift_rae_field` (Drift-RAE Eq. 11 / Prop. 1) and :func:`drifting_loss` (Eq. 14, A.6), with the
field's options in one :class:`FieldOptions`.
"""

from .field import (
    DEFAULT_TEMPERATURES,
    FieldOptions,
    compute_V,
    drift_rae_field,
    mmd_field,
    pairwise_distances,
)
from .loss import drifting_loss

__version__ = "0.1.0"
__all__ = [
    "compute_V",
    "mmd_field",
    "drift_rae_field",
    "pairwise_distances",
    "drifting_loss",
    "FieldOptions",
    "DEFAULT_TEMPERATURES",
    "__version__",
]

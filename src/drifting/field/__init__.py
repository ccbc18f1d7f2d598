"""The drifting field V and its variants (pure functions, no learnable state).

Every field is computed under ``torch.no_grad`` on detached inputs: the drifting loss (Eq. 6)
treats ``x + V`` as a frozen target, so no gradient may flow through V. Modules, each imported
only by the ones after it:

    common      notation, input validation, negative weights, pairwise distances
    options     FieldOptions: the field's options, one frozen dataclass for every caller
    fast        Alg. 2 for many problems and temperatures at once, exact, bounded memory
    reference   compute_V (Eq. 11), Alg. 2 from directly evaluated distances, Alg. 2 literally
    mmd         C.2's MMD field
    drift_rae   the Drift-RAE field (single softmax) and Eq. 12's perturbation
"""

from .common import NORMALIZE_CHOICES, Normalize, all_finite, broadcast_neg_weights, pairwise_distances
from .drift_rae import drift_rae_field, laplace_norm_noise
from .fast import DEFAULT_MAX_ELEMENTS, Distances, drift_fields, plan_chunks
from .mmd import mmd_field, mmd_from_distances
from .options import DEFAULT_TEMPERATURES, KERNELS, FieldOptions
from .reference import alg2_literal, compute_V, drift_from_distances

__all__ = ["DEFAULT_MAX_ELEMENTS", "DEFAULT_TEMPERATURES", "KERNELS", "NORMALIZE_CHOICES", "Distances",
           "FieldOptions", "Normalize", "alg2_literal",
           "all_finite", "broadcast_neg_weights", "compute_V", "drift_fields", "drift_from_distances",
           "drift_rae_field", "laplace_norm_noise", "mmd_field", "mmd_from_distances", "pairwise_distances",
           "plan_chunks"]

"""The drifting loss with feature normalization, drift normalization and several temperatures.

Paper: Deng et al. 2026, Eq. (6) and (13)-(14) for the loss, A.6 (Eq. 18-26) for the
normalizations. A *feature group* ``j`` is one kind of feature vector (one feature map of an
encoder, one pooled statistic, the raw output, ...). Its tensor has shape

* ``[B, N, C]``     B independent problems (e.g. classes), N samples, C channels, or
* ``[B, N, L, C]``  with L locations that share one normalization (A.6, "normalization
  across spatial locations"); every (b, l) pair is its own drifting problem.

For each group the loss computes, all under stop-gradient except ``phi~(x)`` itself:

* ``S_j``  (Eq. 21): mean distance between generated and target features over the whole
  group (targets = generated, positives, extra negatives weighted by their weights; self
  pairs included, as in the authors' release), divided by ``sqrt(C_j)``. ``phi~ = phi / S_j``.
* for each ``tau``: ``V_{j,tau}`` from Alg. 2 at temperature ``tau * sqrt(C_j)`` (Eq. 22) on the
  normalized features, and ``lambda_{j,tau} = sqrt(E[||V||^2 / C_j])`` over the group (Eq. 25).
* ``V~_j = sum_tau V_{j,tau} / lambda_{j,tau}`` and ``L_j = MSE(phi~ - sg(phi~ + V~_j))`` (Eq. 26).

The total is ``sum_j L_j``. With drift normalization the loss is near a constant by design;
``stats[f"{j}/V2@{tau}"]`` holds the raw mean ``||V_{j,tau}||^2`` (in normalized-feature units,
before ``lambda``), the number that goes down as q approaches p.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .field import (
    DEFAULT_TEMPERATURES,  # noqa: F401 (its home was here; kept importable)
    KERNELS,  # noqa: F401
    Distances,
    FieldOptions,
    all_finite,
    broadcast_neg_weights,
    drift_fields,
    mmd_from_distances,
    pairwise_distances,
)
from .field.options import field_options

_EPS = 1e-12
# keep a group's distances between the S_j pass and the field pass when there are at most this many
CACHE_DISTANCES = 1 << 24


def _to_problems(name: str, t: torch.Tensor, B: int | None = None) -> tuple[torch.Tensor, int]:
    """``[B, n, C]`` or ``[B, n, L, C]`` -> ``([B*L, n, C], L)``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 3:
        t = t.unsqueeze(2)  # [B, n, 1, C]
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape [B, n, C] or [B, n, L, C]; got {tuple(t.shape)}")
    if B is not None and t.shape[0] != B:
        raise ValueError(f"{name} has B={t.shape[0]} problems but the generated features have B={B}")
    b, n, L, C = t.shape
    return t.permute(0, 2, 1, 3).reshape(b * L, n, C), L  # [B*L, n, C]


class _FrozenTargetSq(torch.autograd.Function):
    """Each problem's ``sum((x / S - goal)^2)``, ``[BL]``, with ``S`` (a scalar or ``[BL, 1, 1]``) and
    ``goal`` constants (Eq. 26's stop-gradient target), ``x`` and ``goal`` ``[BL, N, C]``: one pass for the
    difference, one for its norm, one for the gradient ``2 g_b (x / S - goal) / S`` (autograd's chain of
    division, difference, square and sum makes about seven)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, S: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        diff = x.detach().to(goal.dtype).div(S).sub_(goal)  # [BL, N, C]
        ctx.save_for_backward(diff, S)
        ctx.in_dtype = x.dtype
        # per problem: one norm over all B*N*C values accumulates an error of ~1e-5 in fp32
        return torch.linalg.vector_norm(diff.reshape(diff.shape[0], -1), dim=-1).square_()  # [BL]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        diff, S = ctx.saved_tensors
        g = diff.mul((grad * 2.0).view(-1, 1, 1) / S).to(ctx.in_dtype)
        return g, None, None


def _frozen_target_sq(x: torch.Tensor, S: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Each problem's ``sum((x / S - goal)^2)``, ``[BL]``, differentiable in ``x`` only
    (:class:`_FrozenTargetSq`)."""
    return _FrozenTargetSq.apply(x, S.detach(), goal.detach())


def _as_groups(name: str, v) -> dict[str, torch.Tensor]:
    if v is None:
        return {}
    if isinstance(v, torch.Tensor):
        return {"x": v}
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"{name} must be a tensor or a mapping of group name -> tensor, got {type(v).__name__}")


def _name_non_finite(j, x: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """Raise ``ValueError`` naming group ``j``'s first input (gen, pos, then neg) that holds a NaN or inf."""
    if not all_finite(x):
        raise ValueError(f"gen[{j!r}] contains non-finite values (NaN or inf)")
    for k, t in enumerate(parts):
        if not all_finite(t):
            name = "pos" if k == 0 else "neg"
            raise ValueError(f"{name}[{j!r}] contains non-finite values (NaN or inf)")


def drifting_loss(
    gen,
    pos,
    neg=None,
    *,
    neg_weights: torch.Tensor | None = None,
    options: FieldOptions | None = None,
    gen_as_negatives: bool = True,
    comm=None,
    max_elements: int | None = None,
    compile: bool = False,
    **overrides,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Drifting loss summed over feature groups (Eq. 14 with A.6's normalizations).

    Args:
        gen: generated features, a tensor or ``{group: tensor}``; ``[B, N, C]`` or ``[B, N, L, C]``.
            Gradients flow into ``gen`` only.
        pos: positive features with the same keys, ``[B, P, C]`` / ``[B, P, L, C]``.
        neg: optional extra negatives (e.g. unconditional real samples for CFG) with the same
            keys, ``[B, M, C]`` / ``[B, M, L, C]``.
        neg_weights: weights of the extra negatives, ``[M]`` or ``[B, M]`` (the CFG weight w of
            A.7), shared by all groups; used in the kernel and in ``S_j``.
        options: the field's options (:class:`drifting.FieldOptions`: temperatures, one normalized
            drift each, summed (A.6); the kernel's normalization, attraction and repulsion (Tables 11, 1);
            ``S_j`` (Eq. 21) and ``lambda_j`` (Eq. 25) on or off; the kernel). With ``kernel="mmd"`` the
            field is that of an MMD loss with a Gaussian kernel of bandwidth ``tau * sqrt(C_j)`` per
            temperature (C.2, Eq. 41-45, :func:`drifting.field.mmd_from_distances`); with
            ``normalize_drift=False`` its gradient is that of the squared MMD (summed over bandwidths) in
            the normalized feature space, up to a constant factor: the MMD-loss generator of C.2.
        **overrides: any field of :class:`drifting.FieldOptions` as a keyword, applied over ``options``.
        gen_as_negatives: the generated samples are also the first N negatives, with the self
            pair masked (Alg. 1-2). If False, ``neg`` must be given and is the only negative set.
        comm: a :class:`drifting.distributed.LossComm` when the batch is spread over ranks: ``gen``,
            ``pos``, ``neg`` and ``neg_weights`` are then this rank's share, targets are gathered
            across the ranks that share the classes, and ``S_j`` / ``lambda_j`` are global means.
        max_elements, compile: memory bound and ``torch.compile`` switch of the field
            (:func:`drifting.field.fast.drift_fields`).

    Returns:
        ``(loss, stats)``: scalar loss (fp32) and a dict of detached scalars:
        ``{j}/loss``, ``{j}/S``, ``{j}/V2@{tau}`` (raw mean ``||V||^2``) and ``{j}/lambda@{tau}``.
    """
    opts = field_options(options, overrides, "drifting_loss")
    gens, poss, negs = _as_groups("gen", gen), _as_groups("pos", pos), _as_groups("neg", neg)
    _check_loss_args(gens, poss, negs, neg_weights, gen_as_negatives)
    groups = {j: _group_targets(j, g, poss[j], negs.get(j), gen_as_negatives, comm) for j, g in gens.items()}
    losses: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    for names in _stackable(groups):
        _stacked_loss(names, groups, losses, stats, neg_weights=neg_weights, opts=opts, comm=comm,
                      gen_as_negatives=gen_as_negatives, max_elements=max_elements, compile=compile)
    total = None
    for j in gens:  # summed in the groups' order, whatever their stacking
        total = losses[j] if total is None else total + losses[j]
    return total, stats


def _stackable(groups: dict) -> list[list[str]]:
    """The groups in lists whose problems can be stacked along the problem axis and computed as one: equal
    width C, samples N, target sets and dtypes (e.g. a tap's locations and its pooled statistics). Each
    keeps its own ``S_j`` and ``lambda_j``; one call per list instead of one per group saves the per-call
    cost of the field's many small operations."""
    lists: dict[tuple, list[str]] = {}
    for j, (x, parts, P, M_extra, _) in groups.items():
        key = (x.shape[1:], x.dtype, P, M_extra, tuple((t.shape[1], t.dtype) for t in parts))
        lists.setdefault(key, []).append(j)
    return list(lists.values())


def _stacked_loss(names: list[str], groups: dict, losses: dict, stats: dict, *, neg_weights,
                  opts: FieldOptions, gen_as_negatives: bool, comm, max_elements: int | None,
                  compile: bool) -> None:
    """Eq. 21-26 for the groups ``names`` (of one :func:`_stackable` list) at once, their problems stacked:
    ``S``, ``lambda`` and the loss per group, the distances and the field in one pass. Writes each group's
    loss into ``losses`` and its statistics into ``stats``."""
    one = len(names) == 1
    xs = [groups[j][0] for j in names]  # [BL_g, N, C] each
    _, _, P, M_extra, _ = groups[names[0]]
    x = xs[0] if one else torch.cat(xs)  # [BL, N, C], the gradient flows back to each group
    parts = groups[names[0]][1] if one else [torch.cat(ts) for ts in zip(*(groups[j][1] for j in names))]
    sizes = [t.shape[0] for t in xs]
    BL, N, C = x.shape
    x_sg = x.detach()
    temperatures = opts.temperatures

    def name_bad():  # no validation pass over the features: only a non-finite S or loss has them checked
        for j in names:
            _name_non_finite(j, groups[j][0].detach(), groups[j][1])

    with torch.no_grad():
        w = None
        if neg_weights is not None:  # [BL, 1, M_all]
            ws = [_target_weights(neg_weights, groups[j][0].detach(), groups[j][1], P, M_extra, groups[j][4],
                                  gen_as_negatives, comm) for j in names]
            w = ws[0] if one else torch.cat(ws)
        seg = torch.repeat_interleave(torch.arange(len(names), device=x.device),
                                      torch.tensor(sizes, device=x.device))  # [BL]: each problem's group
        self_col = None if not gen_as_negatives else P + (0 if comm is None else comm.group_rank * N)
        dists = Distances(x_sg, parts, self_col=self_col, cache_elements=CACHE_DISTANCES)
        if opts.normalize_features:  # Eq. (21)
            S = _feature_scale(dists, P, w, seg, sizes, comm, max_elements, len(temperatures))  # [G]
            if not all_finite(S):
                name_bad()
        else:
            S = torch.ones(len(names), dtype=dists.dtype, device=x.device)
        S_b = S[seg].view(BL, 1, 1)  # [BL, 1, 1]: each problem's S_j
        V_all, unit = _group_field(dists, x_sg, parts, P, S_b, w, gen_as_negatives, opts=opts, comm=comm,
                                   max_elements=max_elements, compile=compile)  # [BL, K, N, C]
        # Eq. 25-26
        goal, V2, lam = _drift_goal(x_sg, V_all, S_b, unit, seg, sizes, opts.normalize_drift, comm)
    # mean (x / S - goal)^2 per group, gradient into x only
    sq = _frozen_target_sq(x, S_b, goal).split(sizes)  # [BL_g] each
    for g, j in enumerate(names):
        loss_j = sq[g].sum() / (sizes[g] * N * C)
        if not all_finite(loss_j):
            name_bad()
        for k, tau in enumerate(temperatures):
            stats[f"{j}/V2@{tau:g}"] = V2[g, k]
            stats[f"{j}/lambda@{tau:g}"] = lam[g, k]
        stats[f"{j}/loss"] = loss_j.detach()
        stats[f"{j}/S"] = S[g]
        losses[j] = loss_j


def _check_loss_args(gens: dict, poss: dict, negs: dict, neg_weights, gen_as_negatives: bool) -> None:
    """Raise ``ValueError`` naming the first bad argument of :func:`drifting_loss` (its field options were
    checked when their :class:`FieldOptions` was made)."""
    if not gens:
        raise ValueError("gen must hold at least one feature group")
    if set(poss) != set(gens):
        raise ValueError(f"pos must have the same groups as gen: {sorted(gens)} vs {sorted(poss)}")
    if negs and set(negs) != set(gens):
        raise ValueError(f"neg must have the same groups as gen: {sorted(gens)} vs {sorted(negs)}")
    if not gen_as_negatives and not negs:
        raise ValueError("gen_as_negatives=False needs explicit negatives in neg")
    if neg_weights is not None and not negs:
        raise ValueError("neg_weights given but there are no extra negatives (neg is None)")


def _group_targets(j, g: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, gen_as_negatives: bool,
                   comm) -> tuple[torch.Tensor, list[torch.Tensor], int, int, int]:
    """Group ``j``'s problems: ``(x [BL, N, C], parts, P, M_extra, L)`` with ``parts`` the detached targets
    ``[BL, n_k, C]`` in column order (positives, the generated samples when they are negatives, the extra
    negatives; each gathered over the ranks of ``comm``), kept as parts, never concatenated."""
    B = g.shape[0]
    x, L = _to_problems(f"gen[{j!r}]", g)  # [B*L, N, C]
    y_pos, _ = _to_problems(f"pos[{j!r}]", pos, B)  # [B*L, P, C]
    BL, N, C = x.shape
    if y_pos.shape[-1] != C or y_pos.shape[0] != BL:
        raise ValueError(f"pos[{j!r}] must match gen[{j!r}] in L and C; got {tuple(pos.shape)}")
    if y_pos.shape[1] < 1:
        raise ValueError(f"pos[{j!r}] must hold at least one positive sample")
    gather = (lambda t: t.detach()) if comm is None else comm.gather  # [BL, n, C] -> [BL, n_all, C]
    parts = [gather(y_pos)]
    if gen_as_negatives:
        parts.append(gather(x.detach()))
    M_extra = 0
    if neg is not None:
        extra, _ = _to_problems(f"neg[{j!r}]", neg, B)  # [B*L, M, C]
        if extra.shape[-1] != C or extra.shape[0] != BL:
            raise ValueError(f"neg[{j!r}] must match gen[{j!r}] in L and C; got {tuple(neg.shape)}")
        M_extra = extra.shape[1]
        parts.append(gather(extra))
    return x, parts, parts[0].shape[1], M_extra, L


def _target_weights(neg_weights: torch.Tensor, x_sg: torch.Tensor, parts: list[torch.Tensor], P: int,
                    M_extra: int, L: int, gen_as_negatives: bool, comm) -> torch.Tensor:
    """The negatives' weights ``[BL, 1, M_all]``: 1 for the generated samples (when they are negatives),
    ``neg_weights`` (``[M]`` or ``[B, M]``, the CFG weight of A.7) for the extra ones at every location."""
    BL = x_sg.shape[0]
    B = BL // L
    w_extra = broadcast_neg_weights(neg_weights, B, M_extra, x_sg)  # [B, 1, M]
    w_extra = w_extra.expand(B, L, M_extra).reshape(BL, 1, M_extra)
    if comm is not None:
        w_extra = comm.gather(w_extra, dim=2)
    if not gen_as_negatives:
        return w_extra
    N_all = sum(t.shape[1] for t in parts) - P - w_extra.shape[2]
    return torch.cat([torch.ones(BL, 1, N_all, dtype=w_extra.dtype, device=x_sg.device), w_extra], -1)


def _feature_scale(dists: Distances, P: int, w: torch.Tensor | None, seg: torch.Tensor, sizes: list[int],
                   comm, max_elements: int | None, K: int) -> torch.Tensor:
    """``S_j`` (Eq. 21) of each group stacked in ``dists`` (problem ``b`` belongs to group ``seg[b]``; group
    ``g`` has ``sizes[g]`` problems), ``[G]``: the weighted mean distance over every (x, y) pair of the
    group, over ``sqrt(C)`` (a global mean over the ranks of ``comm``)."""
    N, C, G = dists.N, dists.D, len(sizes)
    per_problem = dists.weighted_sum(P, w, max_elements, K=K, per_problem=True)  # [BL]
    num = per_problem.new_zeros(G).index_add_(0, seg, per_problem)  # [G]
    den = torch.tensor(sizes, dtype=num.dtype, device=num.device) * float(N * (dists.Y if w is None else P))
    if w is not None:
        den.index_add_(0, seg, w.sum(dim=(1, 2)).to(num.dtype) * N)
    if comm is not None:
        num, den = comm.sum(num), comm.sum(den)
    return (num / den / math.sqrt(C)).clamp_min(_EPS)


def _group_field(dists: Distances, x_sg: torch.Tensor, parts: list[torch.Tensor], P: int, S: torch.Tensor,
                 w: torch.Tensor | None, gen_as_negatives: bool, *, opts: FieldOptions, comm,
                 max_elements: int | None, compile: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V_all [BL, K, N, C], unit [BL, 1, 1])``: the field at every temperature ``tau * sqrt(C)`` of the
    normalized features (Eq. 22), each problem's features over its own ``S [BL, 1, 1]``, in units where
    ``V_all / unit`` is the normalized field."""
    BL, C, temperatures = x_sg.shape[0], x_sg.shape[-1], opts.temperatures
    if opts.kernel == "mmd":  # not scale-free: evaluate it on the normalized features themselves
        if comm is not None:
            raise ValueError("kernel='mmd' does not support multi-rank losses (comm)")
        y = torch.cat(parts, dim=1)  # [BL, P+M_all, C]
        ys, dists_s = y / S, pairwise_distances(x_sg, y) / S  # [BL, P+M_all, C], [BL, N, P+M_all]
        xs = x_sg.to(S.dtype) / S
        V_all = torch.stack([mmd_from_distances(ys, dists_s, P, float(tau * math.sqrt(C)),
                                                mask_self=gen_as_negatives, neg_weights=w, x=xs)
                             for tau in temperatures], dim=1)  # [BL, K, N, C], normalized units
        return V_all, torch.ones_like(S)
    # V is linear in the targets: V(x/S, y/S; dist/S, T) = V(x, y; dist, S T) / S, so the normalized
    # features phi~ = phi / S never need to be materialized; V_all is in raw units
    taus = torch.tensor(temperatures, dtype=S.dtype, device=S.device) * math.sqrt(C)  # [K]
    V_all = drift_fields(dists, P, S.view(BL, 1) * taus, options=opts, neg_weights=w,  # T [BL, K]
                         max_elements=max_elements, compile=compile,
                         column_reduce=None if comm is None else comm.column_lse)  # [BL, K, N, C]
    return V_all, S


def _drift_goal(x_sg: torch.Tensor, V_all: torch.Tensor, S: torch.Tensor, unit: torch.Tensor,
                seg: torch.Tensor, sizes: list[int], normalize_drift: bool, comm
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(goal [BL, N, C], V2 [G, K], lambda [G, K])``: the frozen target ``x~ + sum_k V~_k / lambda_k``
    (Eq. 26) with ``lambda_k = sqrt(E ||V~_k||^2 / C)`` (Eq. 25) over each group's problems (problem ``b`` in
    group ``seg[b]``, ``sizes[g]`` problems in group ``g``), and each group's raw mean ``||V~_k||^2``."""
    BL, K, N, C = V_all.shape
    # a norm over each problem's contiguous N*C values (a strided reduction over (b, n, c) is 5x slower)
    per = torch.linalg.vector_norm(V_all.reshape(BL, K, N * C), dim=-1).square_() / unit.view(BL, 1).square()
    count = torch.tensor(sizes, dtype=per.dtype, device=per.device).view(-1, 1) * N  # [G, 1]
    V2 = per.new_zeros(len(sizes), K).index_add_(0, seg, per) / count  # [G, K]
    if comm is not None:
        V2 = comm.mean(V2)  # equal shares: the mean of the ranks' means
    lam = (V2 / C).sqrt().clamp_min(_EPS) if normalize_drift else torch.ones_like(V2)  # [G, K]
    coef = (lam[seg] * unit.view(BL, 1)).reciprocal()  # [BL, K]: V_all[:, k] * coef[:, k] = V~_k / lambda_k
    goal = x_sg.to(S.dtype) / S  # [BL, N, C], built in place
    for k in range(K):
        goal.addcmul_(V_all[:, k], coef[:, k].view(BL, 1, 1))
    return goal, V2, lam

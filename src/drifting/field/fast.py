"""The drifting field of Alg. 2, fast and exact, for many problems and temperatures at once.

The reference (:func:`drifting.field.reference.drift_from_distances`) computes one temperature at a time
from directly evaluated distances. Here, for ``B`` independent problems (classes x feature
locations), ``N`` drifted samples ``x`` and ``Y = P + M`` targets ``y`` (positives, then
negatives) per problem:

* **Distances once, in matrix-product form**: ``d^2 = |x|^2 + |y|^2 - 2 x.y`` (one ``baddbmm``),
  after centering both sets on the mean of x (distances are translation invariant; centering
  keeps ``|x|^2`` small, so the cancellation error stays ~eps relative to the set's spread rather
  than its offset). Pairs much closer than their norms (``d^2 < (|x|^2 + |y|^2) / 16``) are
  recomputed directly, so no distance loses more than a few bits; self pairs are exactly 0.
* **All temperatures in one pass**: the logits of every tau live in one ``[b, K, N, Y]`` tensor
  and the aggregation ``A @ y`` is a single ``bmm`` over ``K N`` rows.
* **Bounded memory**: problems are processed in chunks of ``chunk`` and, when even one problem's
  ``[K, N, Y]`` logits exceed the budget, targets in blocks of ``block`` columns. The column
  softmax (over the N samples) is local to a column; the row normalizer (over the Y targets) and
  the cross-weighting sums are accumulated online with a running maximum (as in streaming
  attention), so the result is exact, not approximated, and memory does not grow with Y.
* **Precision**: inputs may be bf16/fp16; distances, logits and the aggregation are fp32 (fp64 for
  fp64 inputs). On CUDA, TF32 is switched off for the distance product (its 10-bit mantissa
  would swamp ``d^2`` in cancellation).

Algebra used by the streaming form (Alg. 2 with per-negative weights ``w`` and the scales ``a``,
``r`` of Table 1). Every normalization makes ``A_ij = c_i,g(j) * e_ij`` with ``e_ij =
exp(L_ij - col_j) w_j`` and a per-row constant ``c`` (``g(j)``: positive or negative set). With
``E_g = sum_{j in g} e_ij`` and ``U_g = sum_{j in g} e_ij y_j``::

    V_i = c_pos c_neg (a E_neg U_pos - r E_pos U_neg + (r - a) E_pos E_neg x_i)

* ``"both"``:  ``col_j = lse_col_j / 2``, ``c = exp(-lse_row / 2)``  ->  ``c_pos c_neg = exp(-lse_row)``
* ``"y"``:     ``col = 0``, ``c = exp(-lse_row)``
* ``"none"``:  ``col = 0``, ``c = 1``
* ``"separate"``: ``col = 0``, ``c_g = 1 / E_g`` (each set its own softmax; with weights the
  weighted renormalization of the reference).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch

from .common import MASKED_LOGIT
from .options import KERNEL_OPTION_NAMES, FieldOptions, field_options

# The temporaries of one chunk (logits, their shifted copy, the chunk's centered samples) hold at
# most this many values when no budget is given: 2^21 fp32 values = 8 MiB. Small enough to stay in
# cache and in the allocator's reused heap (glibc maps blocks over 32 MiB afresh and page-faults on
# every use), large enough to amortize per-op overhead; benchmarks/field.py measures both.
DEFAULT_MAX_ELEMENTS = 1 << 21

# pairs with d^2 below this fraction of |x|^2 + |y|^2 are recomputed as |x - y|^2 (see _Chunk.block)
_REFINE = 1.0 / 16

# exp() of arguments below ~-87.3 (where fp32 underflows) takes a scalar slow path in PyTorch's CPU
# kernels, 10-40x slower than in range (benchmarks/field.py). The field's small temperatures put
# most logits there, so every exp here clamps its argument at this floor: exp(-87) = 1.6e-38
# stands in for anything smaller. Each such term is then at most 1.6e-38 where the sums it joins
# are >= 1 (log-sum-exp: the max term is exp(0)) or products that underflow to 0 either way.
_EXP_FLOOR = -87.0

# the distance that masks a self pair (see _mask_self_)
_MASKED_DISTANCE = 1e30

ColumnReduce = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """IEEE fp32 matrix products inside, whatever the process's ``torch.set_float32_matmul_precision``.

    ``"high"`` or ``"medium"`` lets CUDA use TF32 and the CPU's oneDNN use TF32 or bf16 (on CPUs with
    AMX, ``"medium"`` turns an fp32 ``bmm`` into a bf16 one): about 1e-3 relative error in the distances
    and the aggregation, 100x the field's float32 accuracy (docs/performance.md). The setting is restored
    on exit; nested use is fine."""
    backend = (torch.backends.cuda.matmul if device.type == "cuda"
               else torch.backends.mkldnn.matmul if device.type == "cpu" else None)
    if backend is None:
        yield
        return
    old = backend.fp32_precision
    if old == "ieee":
        yield
        return
    backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        backend.fp32_precision = old


def plan_chunks(B: int, N: int, Y: int, K: int, D: int, max_elements: int | None = None) -> tuple[int, int]:
    """``(chunk, block)``: problems per chunk and target columns per block such that a chunk's
    temporaries hold at most ``max_elements`` values: three ``[chunk, K, N, block]`` logit buffers, the
    centered ``[chunk, block, D]`` targets and ``[chunk, N, D]`` samples. Not counted: what scales
    with the output ``[B, K, N, D]`` alone (the output, and when streaming the ``4 K N D`` running sums
    of the one problem in flight), which does not grow with Y."""
    budget = DEFAULT_MAX_ELEMENTS if max_elements is None else int(max_elements)
    if budget < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    per_problem = 3 * K * N * Y + Y * D + N * D
    if per_problem <= budget:
        return max(1, min(B, budget // per_problem)), Y
    return 1, max(1, min(Y, (budget - N * D) // (3 * K * N + D)))


class Distances:
    """Euclidean distances ``d[b, i, j] = |x_bi - y_bj|`` between ``x [B, N, D]`` and ``y [B, Y, D]``.

    ``y`` may also be a sequence of target sets ``[B, Y_k, D]`` (e.g. positives, then negatives), read as
    their concatenation along the second axis without making it: a chunk copies only its own block of
    targets, which it makes anyway (centered, in fp32).

    Computed on demand per problem chunk (:meth:`chunk`) and column block, in matrix-product form
    on centered copies that the field's aggregation reuses while they are in cache. ``self_col``:
    the column of ``y`` that holds ``x_i`` is ``self_col + i`` (None: no self pairs); those
    distances are exactly 0. With ``cache_elements`` >= B N Y, computed distances are kept, so a
    second pass (the loss's field after its feature scale S) reads them back.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor | Sequence[torch.Tensor], *,
                 self_col: int | None = None, cache_elements: int = 0):
        parts = [y] if isinstance(y, torch.Tensor) else list(y)
        for t in parts:
            if x.dim() != 3 or t.dim() != 3 or x.shape[0] != t.shape[0] or x.shape[2] != t.shape[2]:
                raise ValueError(f"x and y must be [B, N, D] and [B, Y, D]; got {tuple(x.shape)} "
                                 f"and {tuple(t.shape)}")
        self.dtype = torch.promote_types(x.dtype, torch.float32)
        self.x = x.detach()  # [B, N, D], any float dtype
        self.parts = [t.detach() for t in parts if t.shape[1] > 0]  # [B, Y_k, D] each, any float dtype
        self.B, self.N, self.D = x.shape
        self.Y = sum(t.shape[1] for t in self.parts)
        if self.Y < 1:
            raise ValueError("y must hold at least one target")
        if self_col is not None and not (0 <= self_col and self_col + self.N <= self.Y):
            raise ValueError(f"self_col={self_col} + N={self.N} exceeds the Y={self.Y} targets")
        self.self_col = self_col
        self._keep = self.B * self.N * self.Y <= cache_elements
        self._cache: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def chunk(self, b0: int, b1: int) -> "_Chunk":
        return _Chunk(self, b0, b1)

    def centered_targets(self, b0: int, b1: int, c0: int, c1: int, center: torch.Tensor) -> torch.Tensor:
        """``y[b0:b1, c0:c1] - center`` in ``self.dtype``, a fresh ``[b, c1 - c0, D]`` tensor, read from
        the parts that hold those columns."""
        out = None
        start = 0
        for t in self.parts:
            lo, hi = max(c0, start), min(c1, start + t.shape[1])
            if lo < hi:
                if lo == c0 and hi == c1:  # one part holds the whole block
                    return t[b0:b1, lo - start: hi - start].to(self.dtype) - center
                if out is None:
                    out = torch.empty(b1 - b0, c1 - c0, self.D, dtype=self.dtype, device=self.x.device)
                torch.sub(t[b0:b1, lo - start: hi - start], center, out=out[:, lo - c0: hi - c0])
            start += t.shape[1]
        return out

    def self_pairs(self, c0: int, c1: int) -> tuple[int, int, int] | None:
        """Rows ``[i0, i1)`` whose self column lies in ``[c0, c1)`` and the block offset of row i0's."""
        if self.self_col is None:
            return None
        i0, i1 = max(0, c0 - self.self_col), min(self.N, c1 - self.self_col)
        return (i0, i1, self.self_col + i0 - c0) if i0 < i1 else None

    def weighted_sum(self, P: int, w: torch.Tensor | None, max_elements: int | None = None, K: int = 1,
                     per_problem: bool = False) -> torch.Tensor:
        """``sum_b,i [sum_{j<P} d_bij + sum_{j>=P} w_bj d_bij]`` (the numerator of Eq. 21), ``w [B, 1, Y-P]``;
        with ``per_problem`` the sum over ``i, j`` of each problem ``b``, ``[B]``. Chunked as a
        ``K``-temperature :func:`drift_fields` call with the same ``max_elements`` is, so that call finds
        these distances in the cache (``cache_elements``)."""
        chunk, block = plan_chunks(self.B, self.N, self.Y, K, self.D, max_elements)
        total = torch.zeros(self.B, dtype=self.dtype, device=self.x.device)  # [B]
        for b0 in range(0, self.B, chunk):
            ch = self.chunk(b0, min(self.B, b0 + chunk))
            for c0 in range(0, self.Y, block):
                c1 = min(self.Y, c0 + block)
                d = ch.distances(c0, c1)  # [b, N, cb]
                p = min(max(P - c0, 0), c1 - c0)  # positive columns in this block
                if w is not None and p < c1 - c0:
                    d[..., p:] *= w[ch.b0:ch.b1, :, c0 + p - P: c1 - P]  # (d is the caller's copy)
                total[ch.b0:ch.b1] += d.sum(dim=(1, 2))
        return total if per_problem else total.sum()


def _sq_norms(t: torch.Tensor) -> torch.Tensor:
    """``|t|^2`` over the last axis, ``[..., 1]``, without a temporary of ``t``'s size."""
    return torch.linalg.vector_norm(t, dim=-1, keepdim=True).square_()


class _Chunk:
    """Problems ``[b0, b1)`` of a :class:`Distances`, centered on the mean of x (distances are
    translation invariant; centering keeps the cancellation error of the matrix-product form relative
    to the spread, and x's mean does not depend on the order or the split of the targets)."""

    def __init__(self, dists: Distances, b0: int, b1: int):
        self.dists, self.b0, self.b1 = dists, b0, b1
        x = dists.x[b0:b1].to(dists.dtype)
        self.c = x.mean(dim=1, keepdim=True)  # [b, 1, D]
        self.x = x - self.c  # [b, N, D]
        self._x_sq = _sq_norms(self.x)  # [b, N, 1]
        self._y: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def targets(self, c0: int, c1: int) -> torch.Tensor:
        """Targets ``[c0, c1)`` centered, ``[b, cb, D]`` (the last block asked for is kept)."""
        if self._y is None or self._y[:2] != (c0, c1):
            y = self.dists.centered_targets(self.b0, self.b1, c0, c1, self.c)  # [b, cb, D]
            self._y = (c0, c1, y, _sq_norms(y).transpose(1, 2))  # and |y|^2 [b, 1, cb]
        return self._y[2]

    def distances(self, c0: int, c1: int) -> torch.Tensor:
        """``d [b, N, c1-c0]``, a fresh tensor the caller may overwrite."""
        key = (self.b0, self.b1, c0, c1)
        cache = self.dists._cache
        if key in cache:
            return cache[key].clone()
        y = self.targets(c0, c1)
        y_sq = self._y[3]
        with ieee_fp32(self.x.device):
            d2 = torch.baddbmm(y_sq, self.x, y.transpose(1, 2), alpha=-2.0)  # [b, N, cb] = |y|^2 - 2 x.y
        d2.add_(self._x_sq)  # [b, N, cb] = |x - y|^2 up to eps (|x|^2 + |y|^2)
        sp = self.dists.self_pairs(c0, c1)
        # Near pairs lose their digits to cancellation (a relative error eps (|x|^2 + |y|^2) / d^2):
        # recompute those directly, so every distance keeps a relative error below ~8 eps.
        near = d2 < _REFINE * (self._x_sq + y_sq)
        if sp is not None:  # self pairs are set to 0 below
            i0, i1, j0 = sp
            near[:, i0:i1, j0: j0 + i1 - i0].diagonal(dim1=-2, dim2=-1).fill_(False)
        if near.count_nonzero() > 0:  # (3x faster than .any() on CPU)
            bi, i, j = near.nonzero(as_tuple=True)
            d2[bi, i, j] = (self.x[bi, i] - y[bi, j]).square().sum(-1)
        d = d2.clamp_min_(0.0).sqrt_()
        if sp is not None:
            d[:, i0:i1, j0: j0 + i1 - i0].diagonal(dim1=-2, dim2=-1).zero_()
        if self.dists._keep:
            cache[key] = d.clone()
        return d


def _exp_(t: torch.Tensor, floor: float = _EXP_FLOOR) -> torch.Tensor:
    """``exp`` in place, with the argument clamped at ``floor`` (see ``_EXP_FLOOR``)."""
    return t.clamp_min_(floor).exp_()


def _logsumexp(L: torch.Tensor, dim: int) -> torch.Tensor:
    """``log sum exp`` along ``dim`` (kept), shifted by the max, with the floor of :func:`_exp_`."""
    m = L.amax(dim=dim, keepdim=True)
    return _exp_(L - m).sum(dim=dim, keepdim=True).log_().add_(m)


def _softmax(L: torch.Tensor, dim: int) -> torch.Tensor:
    e = _exp_(L - L.amax(dim=dim, keepdim=True))
    return e.div_(e.sum(dim=dim, keepdim=True))


def _mask_self_(d: torch.Tensor, self_pairs) -> None:
    """Give the self pairs of ``d [b, N, cb]`` (from :meth:`Distances.self_pairs`) a distance so large that
    every ``exp`` of their logit lands on the floor, like the reference's masked logit. Finite, so a
    column whose only row is masked (N = 1) gives 0 - 0, not inf - inf."""
    if self_pairs is not None:
        i0, i1, j0 = self_pairs
        d[:, i0:i1, j0: j0 + i1 - i0].diagonal(dim1=-2, dim2=-1).fill_(_MASKED_DISTANCE)


def _dense_weights(d, neg_inv_T, w, P: int, normalize: str, a: float, r: float, col_reduce):
    """Alg. 2's cross-weighted affinities from the distances of a chunk, every temperature at once.

    ``d [b, N, Y]`` with the self pairs masked (:func:`_mask_self_`), ``neg_inv_T [1 or b, K, 1, 1]``,
    ``w [b, 1, 1, M]`` or None. Returns ``W [b, K, N, Y]`` (``a A_pos s_neg`` then ``-r A_neg s_pos``)
    and ``s_pos s_neg [b, K, N, 1]``; ``W @ y`` is the field. Pure, so ``torch.compile`` can fuse it.
    """
    row = None  # a per-row factor of A left out of the [b, K, N, Y] passes, applied to the sums
    if normalize == "both":
        # sqrt(softmax_y * softmax_x) = Q_row Q_col / (sqrt(R_i) sqrt(C_j)) with the half logits
        # L / 2 = c d (c = -1 / 2T), Q_row = exp(L/2 - max_j L/2), R_i = sum_j Q_row^2 (likewise over i
        # for the columns): two exps per logit instead of three. The maxima come from the distances
        # (max_j c d_ij = c min_j d_ij, once for all K); Q >= exp(-87 / 2), so Q_row Q_col stays normal.
        c = neg_inv_T * 0.5  # [1 or b, K, 1, 1]
        # [b, 1, Y] (over a non-last dim: a [b, N, Y] pass, not K of them)
        d_col = d.amin(dim=-2, keepdim=True)
        Q_row = _exp_((d - d.amin(dim=-1, keepdim=True)).unsqueeze(1) * c, _EXP_FLOOR / 2)  # [b, K, N, Y]
        Q_col = _exp_((d - d_col).unsqueeze(1) * c, _EXP_FLOOR / 2)  # [b, K, N, Y]
        # R^-1 [b, K, N, 1]
        row = torch.linalg.vector_norm(Q_row, dim=-1, keepdim=True).square_().reciprocal_()
        # C^1/2 [b, K, 1, Y] (not vector_norm: over a non-last dim it is 10-60x slower on CPU)
        n_col = (Q_col * Q_col).sum(dim=-2, keepdim=True).sqrt_()
        if col_reduce is None:
            f_col = n_col.reciprocal_()
        else:  # C over all ranks: lse_col = 2 (m_col + log ||Q_col||), reduced, back to C^-1/2 here
            m_col = d_col.unsqueeze(1) * c  # [b, K, 1, Y]
            lse_col = col_reduce(n_col.log_().add_(m_col).mul_(2.0))
            f_col = (m_col - 0.5 * lse_col).exp_()
        A = Q_row.mul_(Q_col.mul_(f_col))  # = sqrt(softmax_y softmax_x) sqrt(R_i)
    else:
        # [b, K, N, Y]: logits -d / tau for every tau, none below the reference's masked logit (at
        # tau < 3e-9 the masked distance would give -inf, and a softmax over only masked pairs nan)
        L = (d.unsqueeze(1) * neg_inv_T).clamp_min_(MASKED_LOGIT)
        if normalize == "y":
            A = _softmax(L, -1)
        elif normalize == "none":
            A = _exp_(L)
        else:  # "separate"
            A = torch.cat([_softmax(L[..., :P], -1), _softmax(L[..., P:], -1)], dim=-1)
    A_pos, A_neg = A[..., :P], A[..., P:]  # views [b, K, N, P], [b, K, N, M]
    if w is not None:
        A_neg.mul_(w)
        if normalize == "separate":
            A_neg.div_(A_neg.sum(dim=-1, keepdim=True).clamp_min(1e-30))
    s_pos = A_pos.sum(dim=-1, keepdim=True)  # [b, K, N, 1]
    s_neg = A_neg.sum(dim=-1, keepdim=True)
    ss = s_pos * s_neg
    if row is not None:  # the true A is R^-1/2 A, so the true sums are R^-1/2 s: W = A (R^-1 s), ss R^-1
        ss.mul_(row)
        s_pos.mul_(row)
        s_neg.mul_(row)
    A_pos.mul_(s_neg.mul_(a))  # attraction weighted by the total repulsion
    A_neg.mul_(s_pos.mul_(-r))  # repulsion weighted by the total attraction
    return A, ss


_compiled_weights = None


def _weights_fn(compile: bool):
    global _compiled_weights
    if not compile:
        return _dense_weights
    if _compiled_weights is None:
        _compiled_weights = torch.compile(_dense_weights, dynamic=False)  # one graph per shape
    return _compiled_weights


def _dense_chunk(ch: _Chunk, out, P, neg_inv_T, normalize, w, a, r, col_reduce, compile) -> None:
    """Alg. 2 for one chunk with all Y columns at once, written into ``out [b, K, N, D]``."""
    dists = ch.dists
    d = ch.distances(0, dists.Y)  # [b, N, Y]
    _mask_self_(d, dists.self_pairs(0, dists.Y))
    fn = _weights_fn(compile and col_reduce is None)
    W, ss = fn(d, neg_inv_T, w, P, normalize, a, r, col_reduce)
    b, K, N, Y = W.shape
    torch.bmm(W.view(b, K * N, Y), ch.targets(0, Y), out=out.view(b, K * N, -1))  # [b, K N, D]
    if a != r:  # the "- x" terms of Eq. (8) no longer cancel
        out -= ((a - r) * ss) * ch.x.unsqueeze(1)


def _streaming_chunk(ch: _Chunk, out, P, neg_inv_T, normalize, w, a, r, col_reduce, block) -> None:
    """Alg. 2 for one chunk, targets in column blocks, exact (module docstring); into ``out [b, K, N, D]``."""
    dists = ch.dists
    b, K, N, D = ch.b1 - ch.b0, neg_inv_T.shape[1], dists.N, dists.D
    dt, dev = ch.x.dtype, ch.x.device
    m = torch.full((b, K, N, 1), -math.inf, dtype=dt, device=dev)  # running max of L - col
    lse_row = torch.full((b, K, N, 1), -math.inf, dtype=dt, device=dev)
    E = torch.zeros(2, b, K, N, 1, dtype=dt, device=dev)  # E_pos, E_neg
    U = torch.zeros(2, b, K, N, D, dtype=dt, device=dev)  # U_pos, U_neg
    for c0 in range(0, dists.Y, block):
        c1 = min(dists.Y, c0 + block)
        L = ch.distances(c0, c1).unsqueeze(1) * neg_inv_T  # [b, K, N, cb]
        sp = dists.self_pairs(c0, c1)
        if sp is not None:
            i0, i1, j0 = sp
            L[..., i0:i1, j0: j0 + i1 - i0].diagonal(dim1=-2, dim2=-1).fill_(MASKED_LOGIT)
        if normalize in ("both", "y"):
            lse_row = torch.logaddexp(lse_row, _logsumexp(L, -1))
        if normalize == "both":
            lse_col = _logsumexp(L, -2)  # [b, K, 1, cb]: all N rows are here
            if col_reduce is not None:
                lse_col = col_reduce(lse_col)
            L.sub_(lse_col.mul_(0.5))
        m_new = torch.maximum(m, L.amax(dim=-1, keepdim=True))  # [b, K, N, 1]
        rescale = (m - m_new).exp_()  # 0 on the first block (m = -inf); [b, K, N, 1], small
        e = _exp_(L.sub_(m_new))  # [b, K, N, cb]
        p = min(max(P - c0, 0), c1 - c0)  # positive columns in this block
        if w is not None and p < c1 - c0:
            e[..., p:].mul_(w[..., c0 + p - P: c1 - P])
        E.mul_(rescale)
        U.mul_(rescale)
        for g, (j0, j1) in enumerate(((0, p), (p, c1 - c0))):
            if j1 > j0:
                E[g] += e[..., j0:j1].sum(dim=-1, keepdim=True)
                U[g] += torch.bmm(e[..., j0:j1].reshape(b, K * N, j1 - j0),
                                  ch.targets(c0, c1)[:, j0:j1]).view(b, K, N, D)
        m = m_new
    (E_pos, E_neg), (U_pos, U_neg) = E, U
    x = ch.x.unsqueeze(1)  # [b, 1, N, D]
    if normalize == "separate":  # c_g = 1 / E_g
        E_pos, E_neg = E_pos.clamp_min(1e-30), E_neg.clamp_min(1e-30)
        out.copy_(a * U_pos / E_pos - r * U_neg / E_neg + (r - a) * x)
        return
    V = a * E_neg * U_pos - r * E_pos * U_neg  # [b, K, N, D], times exp(-2m)
    if a != r:
        V += ((r - a) * E_pos * E_neg) * x
    log_scale = 2 * m  # undo the running offset of both factors
    if normalize == "both":
        log_scale = log_scale - lse_row
    elif normalize == "y":
        log_scale = log_scale - 2 * lse_row
    torch.mul(V, log_scale.exp_(), out=out)


def _neg_inverse_temperatures(temperatures, B: int, dtype, device) -> torch.Tensor:
    """``-1 / T`` as ``[1, K, 1, 1]`` (K temperatures shared by every problem) or ``[B, K, 1, 1]`` (from a
    ``[B, K]`` tensor: each problem its own, e.g. feature groups of different ``S_j`` computed together)."""
    if isinstance(temperatures, torch.Tensor) and temperatures.dim() == 2:
        if temperatures.shape[0] != B or temperatures.shape[1] < 1:
            raise ValueError(f"per-problem temperatures must be [B={B}, K >= 1], "
                             f"got {tuple(temperatures.shape)}")
        T = temperatures.detach().to(dtype=dtype, device=device)
        if not bool(((T > 0) & torch.isfinite(T)).all()):
            raise ValueError("temperatures must be positive finite numbers")
        return T.reciprocal().neg_().view(B, -1, 1, 1)
    temps = [float(t) for t in temperatures]
    if not temps or any(not (t > 0 and math.isfinite(t)) for t in temps):
        raise ValueError(f"temperatures must be positive finite numbers, got {temperatures}")
    return torch.tensor([-1.0 / t for t in temps], dtype=dtype, device=device).view(1, len(temps), 1, 1)


def drift_fields(
    dists: Distances,
    P: int,
    temperatures: Sequence[float] | torch.Tensor,
    *,
    options: FieldOptions | None = None,
    neg_weights: torch.Tensor | None = None,
    max_elements: int | None = None,
    column_reduce: ColumnReduce | None = None,
    compile: bool = False,
    **overrides,
) -> torch.Tensor:
    """Alg. 2's field at every temperature, ``V [B, K, N, D]`` (no gradient), in the dtype of ``dists``.

    ``dists`` holds x and the targets ``y = [positives (P); negatives (M)]``; with ``dists.self_col``
    the self pairs are masked. ``neg_weights [B, 1, M]`` scale the negatives after normalization
    (CFG, A.7). ``temperatures`` are the kernel's own (already in the units of ``dists``): K numbers shared
    by every problem, or a ``[B, K]`` tensor, one row per problem; of ``options``
    (or the keywords ``normalize``, ``attraction``, ``repulsion``) the kernel options are used, as in
    :func:`drifting.compute_V`.
    ``max_elements`` bounds a chunk's temporaries (:func:`plan_chunks`); the output is ``B K N D``.
    ``column_reduce`` turns the local column log-sum-exp ``[b, K, 1, cb]`` into the global one when the
    N samples of a problem are spread over ranks (see :mod:`drifting.distributed`).
    """
    opts = field_options(options, overrides, "drift_fields", KERNEL_OPTION_NAMES)
    normalize = opts.normalize
    if not 1 <= P <= dists.Y:
        raise ValueError(f"P must be in [1, Y={dists.Y}], got {P}")
    dt, dev = dists.dtype, dists.x.device
    neg_inv_T = _neg_inverse_temperatures(temperatures, dists.B, dt, dev)  # [1 or B, K, 1, 1]
    a, r = float(opts.attraction), float(opts.repulsion)
    B, N, Y, K = dists.B, dists.N, dists.Y, neg_inv_T.shape[1]
    chunk, block = plan_chunks(B, N, Y, K, dists.D, max_elements)
    w = None if neg_weights is None else neg_weights.detach().to(dt).unsqueeze(1)  # [B, 1, 1, M]
    V = torch.empty(B, K, N, dists.D, dtype=dt, device=dev)
    with torch.no_grad(), ieee_fp32(dev):  # the aggregation's products too
        for b0 in range(0, B, chunk):
            b1 = min(B, b0 + chunk)
            wc = None if w is None else w[b0:b1]
            Tc = neg_inv_T if neg_inv_T.shape[0] == 1 else neg_inv_T[b0:b1]  # [1 or b, K, 1, 1]
            if block >= Y:  # (the chunk is built in the call, so it is freed before the next)
                _dense_chunk(dists.chunk(b0, b1), V[b0:b1], P, Tc, normalize, wc, a, r, column_reduce,
                             compile)
            else:
                _streaming_chunk(dists.chunk(b0, b1), V[b0:b1], P, Tc, normalize, wc, a, r,
                                 column_reduce, block)
    return V

"""``drifting_loss`` (value and backward) against an XLA-compiled JAX transcription of the same loss.

Issue 16 asks for the loss at >= 2x the throughput of an XLA-compiled implementation at three shapes,
measured side by side in one run. This script holds its own JAX transcription of the paper's loss for
one feature group (no code from the authors' release):

* targets ``y = [positives; generated]`` per problem; the generated samples are also the negatives,
  their self pairs masked by adding ``1e6`` to the (normalized) distance, as Alg. 2 does;
* A.6: ``S = mean_{b,i,j} |x_bi - y_bj| / sqrt(C)`` over every pair, self pairs (distance 0) included
  (Eq. 21); the features and distances divided by ``S``; ``T = tau sqrt(C)`` (Eq. 22);
* Alg. 2 at each ``tau``: ``A = sqrt(softmax_y(-d/T) softmax_x(-d/T))``, ``W_pos = A_pos sum A_neg``,
  ``W_neg = A_neg sum A_pos``, ``V = W_pos y_pos - W_neg y_neg``;
* ``lambda = sqrt(mean ||V||^2 / C)`` (Eq. 25), ``goal = sg(x~ + sum_tau V / lambda)``,
  ``loss = mean (x~ - goal)^2`` (Eq. 26); ``jax.jit(jax.value_and_grad)`` with respect to ``x``.

The distances are in matrix-product form, ``|x|^2 + |y|^2 - 2 x.y`` (what XLA does best; a broadcast
difference would need a ``[B, N, Y, C]`` temporary). Both sides see the same random features (positives
shifted by 0.5) and the same thread count; each side's value and gradient are compared with the other's.

    python benchmarks/vs_xla.py                       # the issue's three shapes, 2 threads
    python benchmarks/vs_xla.py --shapes 640,8,8,64 --threads 1 --compile
    python benchmarks/vs_xla.py --quick               # tiny shapes (smoke test)

A shape is ``B,N,P,C``: B problems of N generated samples and P positives with C channels. JAX is an
optional extra: ``pip install 'drifting[xla]'``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_args,
    fmt_ms,
    markdown_table,
    print_report,
    run_each,
    setup_threads,
    time_call,
    write_json,
)
from drifting.field import DEFAULT_TEMPERATURES  # noqa: E402
from drifting.loss import drifting_loss  # noqa: E402

NAME = "vs_xla"
DEFAULT_SHAPES = [(640, 8, 8, 64), (640, 64, 64, 128), (64, 64, 128, 1024)]
QUICK_SHAPES = [(8, 4, 4, 8), (16, 8, 8, 16)]


def parse_shape(s: str) -> tuple[int, int, int, int]:
    v = tuple(int(t) for t in s.split(","))
    if len(v) != 4 or min(v) < 1:
        raise argparse.ArgumentTypeError(f"shape {s!r}: expected B,N,P,C (positive integers)")
    return v


def make_inputs(B: int, N: int, P: int, C: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated features ``x [B, N, C]`` and positives ``[B, P, C]`` (shifted by 0.5), float32."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, N, C), dtype=np.float32),
            rng.standard_normal((B, P, C), dtype=np.float32) + np.float32(0.5))


def jax_loss_fn(taus=DEFAULT_TEMPERATURES):
    """The JAX transcription (module docstring), ``jit(value_and_grad(loss))(x, pos)``."""
    import jax
    import jax.numpy as jnp

    sg = jax.lax.stop_gradient

    def loss(x, pos):  # x [B, N, C], pos [B, P, C]
        B, N, C = x.shape
        P = pos.shape[1]
        xs = sg(x)
        y = jnp.concatenate([pos, xs], axis=1)  # [B, Y, C]: positives, then the negatives
        d2 = (jnp.sum(xs * xs, -1)[:, :, None] + jnp.sum(y * y, -1)[:, None, :]
              - 2.0 * jnp.einsum("bnc,byc->bny", xs, y))  # [B, N, Y]
        self_pair = jnp.zeros((N, P + N), bool).at[jnp.arange(N), P + jnp.arange(N)].set(True)
        d = jnp.where(self_pair, 0.0, jnp.sqrt(jnp.maximum(d2, 0.0)))
        S = jnp.mean(d) / jnp.sqrt(C)  # Eq. 21 (a stop-gradient quantity: xs, pos only)
        d = d / S + jnp.where(self_pair, 1e6, 0.0)  # normalized distances, self pairs masked (Alg. 2)
        ys = y / S
        total = jnp.zeros_like(xs)
        for tau in taus:
            logit = -d / (tau * jnp.sqrt(C))  # Eq. 22
            A = jnp.sqrt(jax.nn.softmax(logit, -1) * jax.nn.softmax(logit, -2))  # [B, N, Y]
            A_pos, A_neg = A[..., :P], A[..., P:]
            W_pos = A_pos * jnp.sum(A_neg, -1, keepdims=True)
            W_neg = A_neg * jnp.sum(A_pos, -1, keepdims=True)
            V = (jnp.einsum("bnp,bpc->bnc", W_pos, ys[:, :P])
                 - jnp.einsum("bnm,bmc->bnc", W_neg, ys[:, P:]))  # [B, N, C]
            lam = jnp.sqrt(jnp.mean(jnp.sum(V * V, -1)) / C)  # Eq. 25
            total = total + V / lam
        goal = sg(xs / S + total)
        return jnp.mean((x / S - goal) ** 2)  # Eq. 26

    return jax.jit(jax.value_and_grad(loss))


def torch_loss_and_grad(x: torch.Tensor, pos: torch.Tensor, compile: bool = False):
    """``drifting_loss`` forward and backward on ``x`` (the defaults: 3 temperatures, both
    normalizations, the generated samples as negatives); returns the loss and ``d loss / d x``."""
    xg = x.detach().requires_grad_(True)
    loss, _ = drifting_loss(xg, pos, compile=compile)
    loss.backward()
    return loss.detach(), xg.grad


def bench_shape(shape: tuple[int, int, int, int], a: argparse.Namespace, jax_fn) -> dict:
    import jax
    import jax.numpy as jnp

    B, N, P, C = shape
    x_np, pos_np = make_inputs(B, N, P, C)
    xj, pj = jnp.asarray(x_np), jnp.asarray(pos_np)
    xt, pt = torch.from_numpy(x_np), torch.from_numpy(pos_np)
    rep = dict(repeat=a.repeat, warmup=2, min_sample_s=a.min_sample_s)

    t0 = time.perf_counter()
    jax.block_until_ready(jax_fn(xj, pj))  # compiles for this shape
    jax_compile = time.perf_counter() - t0
    t = {"jax": time_call(lambda: jax.block_until_ready(jax_fn(xj, pj)), **rep),
         "torch": time_call(lambda: torch_loss_and_grad(xt, pt), **rep)}
    if a.compile:
        torch_loss_and_grad(xt, pt, compile=True)  # compiles
        t["torch_compiled"] = time_call(lambda: torch_loss_and_grad(xt, pt, compile=True), **rep)
    lj, gj = jax_fn(xj, pj)
    lt, gt = torch_loss_and_grad(xt, pt)
    gj = torch.from_numpy(np.asarray(gj))
    s = {k: v[a.stat] for k, v in t.items()}
    return {"B": B, "N": N, "P": P, "C": C, "times": t, "jax_compile_seconds": jax_compile,
            "loss_jax": float(lj), "loss_torch": float(lt),
            "grad_rel_diff": float((gt - gj).norm() / gj.norm()),
            "throughput_vs_xla": s["jax"] / s["torch"],
            "compiled_throughput_vs_xla": s["jax"] / s["torch_compiled"] if "torch_compiled" in s else None}


def table(rows: list[dict], stat: str, compiled: bool) -> str:
    headers = ["B, N, P, C", "XLA (jax.jit) ms", "drifting_loss ms", "ours / XLA (throughput)",
               "loss XLA", "loss ours", "grad rel. diff"]
    if compiled:
        headers[3:3] = ["compiled ms", "compiled / XLA"]
    out = []
    for r in rows:
        s = {k: v[stat] for k, v in r["times"].items()}
        cells = [f"{r['B']}, {r['N']}, {r['P']}, {r['C']}", fmt_ms(s["jax"]), fmt_ms(s["torch"]),
                 f"{r['throughput_vs_xla']:.2f}x", f"{r['loss_jax']:.4f}", f"{r['loss_torch']:.4f}",
                 f"{r['grad_rel_diff']:.1e}"]
        if compiled:
            cells[3:3] = [fmt_ms(s["torch_compiled"]), f"{r['compiled_throughput_vs_xla']:.2f}x"]
        out.append(cells)
    return markdown_table(headers, out)


def main() -> None:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, NAME)
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=None, help="B,N,P,C ...")
    p.add_argument("--compile", action="store_true", help="also time drifting_loss(compile=True)")
    p.add_argument("--min-sample-s", type=float, default=0.2,
                   help="a timed sample repeats a short call until it lasts this long (default 0.2 s)")
    a = p.parse_args()
    if a.repeat < 3:
        p.error("--repeat must be >= 3")
    threads = a.threads or os.cpu_count() or 1
    # XLA's CPU thread pool, set before jax is imported (an XLA_FLAGS of the caller's wins)
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                          f"intra_op_parallelism_threads={threads}")
    try:
        import jax
    except ImportError:
        p.error("JAX is not installed: pip install 'drifting[xla]' (or pip install jax)")
    setup_threads(threads)
    jax_fn = jax_loss_fn()
    shapes = a.shapes or (QUICK_SHAPES if a.quick else DEFAULT_SHAPES)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
          f"(XLA_FLAGS={os.environ['XLA_FLAGS']!r})", flush=True)
    rows = run_each(shapes, lambda shape: bench_shape(shape, a, jax_fn))
    print_report(f"**drifting_loss vs an XLA-compiled JAX loss, value + gradient** ({a.stat} of {a.repeat} "
                 f"samples, ms per call; 3 temperatures; {threads} threads)", table(rows, a.stat, a.compile))
    write_json(a.out, NAME, {"stat": a.stat, "threads": threads, "jax": jax.__version__,
                             "xla_flags": os.environ["XLA_FLAGS"], "rows": rows}, a, started)


if __name__ == "__main__":
    main()

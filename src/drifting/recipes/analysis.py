"""Analysis of a trained image generator: the CFG sweep (Fig. 5) and nearest neighbours (Fig. 6).

* :func:`cfg_sweep` -- sample quality vs the CFG scale alpha (paper Fig. 5: FID, precision and
  recall against alpha), written as ``cfg_sweep.json`` and ``cfg_sweep.png``.
* :func:`nearest_neighbours` -- generated samples beside their top-k training images in the
  ResNet-MAE feature space by cosine similarity (paper Fig. 6: the generator does not copy its
  training set), written as a PNG grid.
* :func:`drift_diagnosis` -- what the field does on a trained generator: the raw drift norm per
  feature group and temperature, its attraction and repulsion parts, against the same numbers with
  real images in place of the samples (the finite-sample floor the norm can fall to).

All three are registered on the command line by :func:`add_analysis_parsers`
(``drifting cfg-sweep``, ``drifting neighbours`` and ``drifting drift-norm``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import METRICS, evaluate
from .images import generate, load_generator, write_grid


def _check_alphas(alphas) -> tuple[float, ...]:
    try:
        vals = tuple(float(a) for a in alphas)
    except (TypeError, ValueError):
        raise ValueError(f"alphas must be a sequence of numbers >= 1, got {alphas!r}") from None
    if not vals or any(not math.isfinite(a) or a < 1 for a in vals):
        raise ValueError(f"alphas must be a non-empty sequence of finite numbers >= 1 (alpha = 1: no CFG), got {alphas!r}")
    return vals


def _check_pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------- Fig. 5: CFG sweep
def cfg_sweep(model_dir: str | Path, alphas=(1.0, 1.5, 2.0, 3.0), *, num: int = 1000, ref: str = "fashion-mnist:test",
              metrics=("fid", "prdc"), seed: int = 0, out_dir: str | Path | None = None, progress: bool = True,
              n_ref: int | None = None, classifier_steps: int | None = None, **eval_kw) -> dict:
    """Sample quality vs CFG scale (paper Fig. 5).

    For each alpha, ``num`` samples with labels cycling through the classes (same seed for every
    alpha, so only alpha changes) are scored by :func:`drifting.recipes.evaluate.evaluate` against
    ``ref``. Returns ``{"model", "ref", "num", "seed", "metrics", "alphas": [...], "results": [{"alpha",
    <evaluate's keys>}, ...]}``; with ``out_dir``, also writes ``cfg_sweep.json`` and ``cfg_sweep.png``.
    ``eval_kw`` goes to ``evaluate`` (``inception=``, ``batch=``, ``device=``, ...).
    """
    alphas = _check_alphas(alphas)
    num = _check_pos_int("num", num)
    metrics = tuple(metrics)
    bad = sorted(set(metrics) - set(METRICS))
    if not metrics or bad:
        raise ValueError(f"metrics must be a non-empty selection from {list(METRICS)}, got {list(metrics)}")
    model, tokenizer = load_generator(model_dir)
    labels = torch.arange(num) % model.config.num_classes  # [num], cycling through the classes
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in alphas:
            imgs = generate(model, labels, alpha, seed=seed, tokenizer=tokenizer)  # [num, H, W, C] uint8
            path = Path(tmp) / f"alpha_{alpha:g}.npz"
            np.savez(path, images=imgs, labels=labels.numpy().astype(np.int64))
            res = evaluate(path, ref, metrics=metrics, n_ref=n_ref, progress=progress,
                           classifier_steps=classifier_steps, **eval_kw)
            res.pop("samples", None)  # a temporary path
            results.append({"alpha": alpha, **res})
    out = {"model": str(model_dir), "ref": ref, "num": num, "seed": seed, "metrics": list(metrics),
           "alphas": list(alphas), "results": results}
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cfg_sweep.json").write_text(json.dumps(out, indent=2))
        plot_cfg_sweep(out, d / "cfg_sweep.png")
    return out


def _series(results: list[dict]) -> dict[str, list[float]]:
    """Per-metric values over the sweep, for the metrics present at every alpha."""
    keys = {"FID": ("fid",), "precision": ("precision",), "recall": ("recall",), "density": ("density",),
            "coverage": ("coverage",), "FD_DINOv2": ("fd_dinov2",), "classifier accuracy": ("classifier", "accuracy"),
            "classifier FID": ("classifier", "classifier_fid")}
    out = {}
    for name, path in keys.items():
        vals = []
        for r in results:
            v = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            vals.append(v)
        if all(isinstance(v, (int, float)) for v in vals):
            out[name] = [float(v) for v in vals]
    return out


def plot_cfg_sweep(sweep: dict, path: str | Path) -> None:
    """Fig. 5 layout: distances (FID-like, lower is better) in the left panel, fractions
    (precision / recall / accuracy, in [0, 1]) in the right panel, both against alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = sweep["alphas"]
    s = _series(sweep["results"])
    dist = {k: v for k, v in s.items() if k in ("FID", "FD_DINOv2", "classifier FID")}
    frac = {k: v for k, v in s.items() if k not in dist and k != "density"}
    panels = [p for p in (dist, frac) if p] or [{}]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for k, v in panel.items():
            ax.plot(a, v, marker="o", label=k)
        ax.set_xlabel("CFG scale alpha")
        if panel:
            ax.legend()
        else:
            ax.set_title("no plottable metrics")
        ax.grid(alpha=0.3)
    fig.suptitle(f"CFG sweep (Fig. 5), {sweep['num']} samples vs {sweep['ref']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- Fig. 6: nearest neighbours
@torch.no_grad()
def embed(encoder, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """L2-normalised embeddings ``[N, D]`` of uint8 images ``[N, H, W, C]``: the global average pool of
    each A.5 tap map of the ResNet-MAE ``encoder`` (``forward_features``), concatenated."""
    encoder.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i: i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1  # [b, C, H, W] in [-1, 1]
        taps = encoder.forward_features(x)  # list of [b, C_i, H_i, W_i]
        out.append(torch.cat([t.mean(dim=(2, 3)) for t in taps], dim=1))  # [b, sum C_i]
    return F.normalize(torch.cat(out), dim=1)  # [N, D]


def top_k_cosine(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` keys by cosine similarity for each query, scanning ``keys`` in chunks.

    ``queries [Q, D]``, ``keys [M, D]`` (normalised here). Returns ``(indices [Q, k] int64,
    similarities [Q, k])``, similarities in descending order per row.
    """
    k = _check_pos_int("k", k)
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries [Q, D] and keys [M, D] must share D, got {tuple(queries.shape)}, {tuple(keys.shape)}")
    if k > keys.shape[0]:
        raise ValueError(f"k = {k} exceeds the {keys.shape[0]} training images searched")
    q, keys = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
    best_s = torch.full((q.shape[0], 0), -math.inf)  # [Q, <=k]
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for s0 in range(0, keys.shape[0], chunk):
        sim = q @ keys[s0: s0 + chunk].T  # [Q, c]
        idx = torch.arange(s0, s0 + sim.shape[1]).expand(q.shape[0], -1)  # [Q, c]
        cat_s, cat_i = torch.cat([best_s, sim], 1), torch.cat([best_i, idx], 1)
        best_s, j = cat_s.topk(min(k, cat_s.shape[1]), dim=1)  # sorted, descending
        best_i = cat_i.gather(1, j)
    return best_i, best_s


def nearest_neighbours(model_dir: str | Path, *, data: str | None = None, encoder_dir: str | Path | None = None,
                       num: int = 8, k: int = 5, seed: int = 0, out_path: str | Path | None = None,
                       pool_size: int | None = None, alpha: float = 1.0, chunk: int = 4096) -> dict:
    """Generated samples and their top-``k`` training neighbours (paper Fig. 6).

    ``num`` samples (labels 0, 1, 2, ... cycling through the classes) are embedded with the
    ResNet-MAE encoder of ``encoder_dir`` (default ``model_dir/../mae``, where :func:`train_images`
    puts it) as in :func:`embed`, as are the training images of ``data`` (default: the run's
    ``train_config.json`` data, else Fashion-MNIST; ``pool_size``: only the first that many).
    With ``out_path``, writes a PNG whose rows are a sample followed by its ``k`` neighbours.
    Returns ``{"labels": [num], "indices": [num][k], "similarities": [num][k], "neighbour_labels"}``.
    """
    from ..data.images import load_dataset
    from ..models.resnet_mae import ResNetMAE

    num, k = _check_pos_int("num", num), _check_pos_int("k", k)
    if pool_size is not None:
        pool_size = _check_pos_int("pool_size", pool_size)
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    model_dir = Path(model_dir)
    if data is None:
        tc = model_dir / "train_config.json"
        data = json.loads(tc.read_text()).get("data", "fashion-mnist") if tc.is_file() else "fashion-mnist"
    enc_dir = Path(encoder_dir) if encoder_dir is not None else model_dir.parent / "mae"
    if not (enc_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"encoder_dir {enc_dir} holds no ResNet-MAE export (config.json + model.safetensors)")
    encoder = ResNetMAE.from_pretrained(enc_dir).encoder

    ds = load_dataset(data, "train")
    pool = ds.images[:pool_size] if pool_size is not None else ds.images  # [M, H, W, C]
    if k > len(pool):
        raise ValueError(f"k = {k} exceeds the {len(pool)} training images searched")
    model, tokenizer = load_generator(model_dir)
    labels = torch.arange(num) % model.config.num_classes  # [num]
    samples = generate(model, labels, alpha, seed=seed, tokenizer=tokenizer)  # [num, H, W, C] uint8
    if samples.shape[1:] != pool.shape[1:]:
        raise ValueError(f"samples are {samples.shape[1:]} but the training images of {data!r} are {pool.shape[1:]}")
    if encoder.config.in_channels != samples.shape[-1]:
        raise ValueError(f"the encoder of {enc_dir} takes {encoder.config.in_channels} channels, the images have "
                         f"{samples.shape[-1]} (a latent-space MAE cannot embed pixels; pass encoder_dir=)")
    idx, sim = top_k_cosine(embed(encoder, samples), embed(encoder, pool), k, chunk=chunk)  # [num, k] each
    if out_path is not None:
        rows = np.concatenate([samples[:, None], pool[idx.numpy()]], axis=1)  # [num, 1 + k, H, W, C]
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        write_grid(rows.reshape(-1, *samples.shape[1:]), 1 + k, out_path)
    return {"data": data, "encoder": str(enc_dir), "labels": labels.tolist(), "indices": idx.tolist(),
            "similarities": sim.tolist(), "neighbour_labels": ds.labels[idx.numpy()].tolist()}


# --------------------------------------------------------------------------- the drift norm
def _group_kind(key: str) -> str:
    """``tap2.p4mean`` -> ``tap2``; ``vanilla`` and ``input.sq`` stay as they are."""
    return key.split(".")[0] if key.startswith("tap") or "/tap" in key else key


@torch.no_grad()
def drift_diagnosis(run_dir: str | Path, *, batches: int = 4, n_gen: int | None = None, n_pos: int | None = None,
                    seed: int = 0) -> dict:
    """The raw drift norm of a trained run (``drifting train --out RUN``), split by what makes it.

    For ``batches`` batches of every class: ``n_gen`` one-step samples at alpha 1 (default: the run's
    N), ``n_pos`` real positives (default: the run's P), and, as a stand-in for a perfect generator,
    ``n_gen`` *other* real images of the class. Both sets go through the run's encoder, features
    (A.5, all locations) and loss (A.6 normalizations, the run's temperatures). Returned per feature
    group and temperature: ``V2`` (the raw mean ``||V||^2`` the trainer logs), ``V2_attr`` and
    ``V2_rep`` (``||V+||^2`` and ``||V-||^2``, Eq. 8-10's two parts), and the same three for the real
    stand-in (``floor_*``). At alpha 1 the unconditional negatives have weight 0 (A.7) and are left
    out. ``V2 / floor_V2`` near 1 says the group's drift is the sampling noise of ``N`` and ``P``:
    the norm cannot fall further at this batch, whatever the generator does.
    """
    from ..data.images import load_dataset
    from ..features import group_by_class
    from ..loss import drifting_loss
    from ..models.resnet_mae import ResNetMAE
    from .images import encode

    run_dir = Path(run_dir)
    tc = run_dir / "model" / "train_config.json"
    if not tc.is_file():
        raise FileNotFoundError(f"run_dir {run_dir} has no model/train_config.json (a `drifting train --out` dir)")
    cfg = json.loads(tc.read_text())
    if cfg.get("tokenizer") or cfg.get("encoder", "mae") != "mae":
        raise ValueError("run_dir: drift_diagnosis supports pixel-space runs with the ResNet-MAE encoder only")
    N = _check_pos_int("n_gen", n_gen if n_gen is not None else cfg["n_gen"])
    P = _check_pos_int("n_pos", n_pos if n_pos is not None else cfg["n_pos"])
    batches = _check_pos_int("batches", batches)
    encoder = ResNetMAE.from_pretrained(run_dir / "mae").encoder.eval()
    model, _ = load_generator(run_dir / "model")
    ds = load_dataset(cfg["data"], "train")
    K = model.config.num_classes
    temps = tuple(cfg["temperatures"])
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(ds.labels == c) for c in range(K)]
    parts = {"": dict(), "_attr": dict(attraction=1.0, repulsion=0.0), "_rep": dict(attraction=0.0, repulsion=1.0)}
    acc: dict[str, dict[str, float]] = {}
    for b in range(batches):
        labels = torch.arange(K).repeat_interleave(N)  # [K*N]
        x = model.eval().sample(labels, 1.0, generator=torch.Generator().manual_seed(seed * 1000 + b))  # [K*N, C, H, W]
        idx = np.stack([rng.choice(ix, size=P + N, replace=False) for ix in by_class])  # [K, P+N]
        real = ds.to_tensor(idx.reshape(-1))  # [K*(P+N), C, H, W]
        f_real = group_by_class(encode(encoder, real, cfg["feature_sets"], cfg["vanilla"]), K)  # {j: [K, P+N, L, C]}
        f_gen = group_by_class(encode(encoder, x, cfg["feature_sets"], cfg["vanilla"]), K)  # {j: [K, N, L, C]}
        pos = {j: v[:, :P] for j, v in f_real.items()}
        stand_in = {j: v[:, P:] for j, v in f_real.items()}
        for tag, gen in (("", f_gen), ("floor_", stand_in)):
            for suffix, kw in parts.items():
                _, st = drifting_loss(gen, pos, temperatures=temps, normalize=cfg["normalize"], **kw)
                for key, v in st.items():
                    j, _, stat = key.rpartition("/")
                    if stat.startswith("V2@"):
                        row = acc.setdefault(f"{j}@{stat[3:]}", {})
                        name = f"{tag}V2{suffix}"
                        row[name] = row.get(name, 0.0) + float(v) / batches
    rows = [{"group": k.rpartition("@")[0], "tau": float(k.rpartition("@")[2]), **v} for k, v in acc.items()]
    kinds: dict[str, dict[str, float]] = {}
    for r in rows:
        kk = kinds.setdefault(f"{_group_kind(r['group'])}@{r['tau']:g}", {})
        for name, v in r.items():
            if name.startswith(("V2", "floor_V2")):
                kk[name] = kk.get(name, 0.0) + v
    total = {name: sum(r[name] for r in rows) for name in rows[0] if name.startswith(("V2", "floor_V2"))}
    return {"run": str(run_dir), "n_gen": N, "n_pos": P, "batches": batches, "temperatures": list(temps),
            "total": total, "by_kind": kinds, "groups": rows}


# --------------------------------------------------------------------------- command line
def _alphas_arg(s: str) -> tuple[float, ...]:
    try:
        return _check_alphas(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alphas must be comma-separated numbers >= 1, got {s!r}") from None


def cmd_cfg_sweep(a: argparse.Namespace) -> int:
    """Handler of ``drifting cfg-sweep``."""
    res = cfg_sweep(a.model, a.alphas, num=a.num, ref=a.ref, metrics=a.metrics, seed=a.seed,
                    out_dir=a.out, progress=not a.no_progress, n_ref=a.n_ref, inception=a.inception)
    for name, vals in _series(res["results"]).items():
        print(f"{name:20s} " + "  ".join(f"a={al:g}: {v:.4g}" for al, v in zip(res["alphas"], vals)))
    print(f"wrote {Path(a.out) / 'cfg_sweep.json'} and {Path(a.out) / 'cfg_sweep.png'}")
    return 0


def cmd_neighbours(a: argparse.Namespace) -> int:
    """Handler of ``drifting neighbours``."""
    res = nearest_neighbours(a.model, data=a.data, encoder_dir=a.encoder, num=a.num, k=a.k, seed=a.seed,
                             out_path=a.out, pool_size=a.pool_size)
    for lab, sims in zip(res["labels"], res["similarities"]):
        print(f"class {lab}: cosine " + " ".join(f"{s:.3f}" for s in sims))
    print(f"wrote {a.out}")
    return 0


def cmd_drift_norm(a: argparse.Namespace) -> int:
    """Handler of ``drifting drift-norm``."""
    res = drift_diagnosis(a.run, batches=a.batches, n_gen=a.n_gen, n_pos=a.n_pos, seed=a.seed)
    print(f"raw drift norm of {a.run} at N = {res['n_gen']}, P = {res['n_pos']} ({res['batches']} batches of every "
          "class), against real images in place of the samples (the floor):")
    print("| group @ tau | V2 | floor | V2 / floor | attraction V2 (floor) | repulsion V2 (floor) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, v in list(res["by_kind"].items()) + [("all", res["total"])]:
        print(f"| {k} | {v['V2']:.4g} | {v['floor_V2']:.4g} | {v['V2'] / max(v['floor_V2'], 1e-12):.2f} | "
              f"{v['V2_attr']:.4g} ({v['floor_V2_attr']:.4g}) | {v['V2_rep']:.4g} ({v['floor_V2_rep']:.4g}) |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.json}")
    return 0


def add_analysis_parsers(subparsers) -> None:
    """Register ``drifting cfg-sweep`` (Fig. 5), ``drifting neighbours`` (Fig. 6) and ``drifting drift-norm``."""
    from ..cli import _positive_int, add_threads_option  # imported here: cli imports this module lazily
    from .evaluate import _metric_list

    c = subparsers.add_parser("cfg-sweep", help="FID / precision / recall vs CFG scale alpha (Fig. 5), JSON + PNG")
    c.add_argument("model", help="a generator export (OUT/model of `drifting train`)")
    c.add_argument("--alphas", type=_alphas_arg, default=(1.0, 1.5, 2.0, 3.0), help="comma-separated, >= 1 (default 1,1.5,2,3)")
    c.add_argument("--num", type=_positive_int, default=1000, help="samples per alpha (default 1000)")
    c.add_argument("--ref", required=True, help="reference, e.g. fashion-mnist:test or an .npz (see `drifting eval`)")
    c.add_argument("--metrics", type=_metric_list, default=("fid", "prdc"), help=f"comma-separated, from: {', '.join(METRICS)} (default fid,prdc)")
    c.add_argument("--n-ref", type=_positive_int, default=None, help="use the first N reference images")
    c.add_argument("--inception", default=None, help="FID Inception weights (see `drifting eval`)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True, help="directory for cfg_sweep.json and cfg_sweep.png")
    c.add_argument("--no-progress", action="store_true")
    add_threads_option(c)
    c.set_defaults(func=cmd_cfg_sweep)

    n = subparsers.add_parser("neighbours", help="generated samples beside their top-k training neighbours (Fig. 6)")
    n.add_argument("model", help="a generator export (OUT/model of `drifting train`)")
    n.add_argument("--data", default=None, help="training data spec (default: the run's, else fashion-mnist)")
    n.add_argument("--encoder", default=None, help="ResNet-MAE export dir (default MODEL/../mae)")
    n.add_argument("--num", type=_positive_int, default=8, help="generated samples, one per class in turn (default 8)")
    n.add_argument("--k", type=_positive_int, default=5, help="neighbours per sample (default 5)")
    n.add_argument("--pool-size", type=_positive_int, default=None, help="search only the first N training images")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", required=True, help="PNG path")
    add_threads_option(n)
    n.set_defaults(func=cmd_neighbours)

    d = subparsers.add_parser("drift-norm", help="the raw drift norm of a trained run per feature group and "
                              "temperature, attraction vs repulsion, against real images in place of the samples")
    d.add_argument("run", help="a `drifting train --out` directory (with model/ and mae/)")
    d.add_argument("--batches", type=_positive_int, default=4, help="batches of every class averaged (default 4)")
    d.add_argument("--n-gen", type=_positive_int, default=None, help="samples per class (default: the run's N)")
    d.add_argument("--n-pos", type=_positive_int, default=None, help="positives per class (default: the run's P)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", default=None, help="also write the full result here")
    add_threads_option(d)
    d.set_defaults(func=cmd_drift_norm)

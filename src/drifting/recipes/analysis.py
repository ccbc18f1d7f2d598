"""Analysis of a trained image generator: the CFG sweep (Fig. 5) and nearest neighbours (Fig. 6).

* :func:`guidance_sweep` -- sample quality vs the CFG scale alpha (paper Fig. 5: FID, precision and
  recall against alpha), written as ``guidance_sweep.json`` and ``guidance_sweep.png``.
* :func:`nearest_neighbours` -- generated samples beside their top-k training images in the
  ResNet-MAE feature space by cosine similarity (paper Fig. 6: the generator does not copy its
  training set), written as a PNG grid.
* :func:`drift_diagnosis` -- what the field does on a trained generator: the raw drift norm per
  feature group and temperature, its attraction and repulsion parts, against the same numbers with
  real images in place of the samples (the finite-sample floor the norm can fall to).

Their commands (``drifting guidance-sweep``, ``drifting neighbours`` and ``drifting drift-norm``) are in
:mod:`drifting.cli.cmd_analysis`.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import METRICS, evaluate
from .image_sampling import generate, load_generator, write_grid


def _check_alphas(alphas) -> tuple[float, ...]:
    try:
        vals = tuple(float(a) for a in alphas)
    except (TypeError, ValueError):
        raise ValueError(f"alphas must be a sequence of numbers >= 1, got {alphas!r}") from None
    if not vals or any(not math.isfinite(a) or a < 1 for a in vals):
        raise ValueError("alphas must be a non-empty sequence of finite numbers >= 1 (alpha = 1: no "
                         f"CFG), got {alphas!r}")
    return vals


def _check_pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------- Fig. 5: CFG sweep
def guidance_sweep(model_dir: str | Path, alphas=(1.0, 1.5, 2.0, 3.0), *, num: int = 1000,
              ref: str = "fashion-mnist:test", metrics=("fid", "prdc"), seed: int = 0,
              out_dir: str | Path | None = None, progress: bool = True, n_ref: int | None = None,
              classifier_steps: int | None = None, **eval_kw) -> dict:
    """Sample quality vs CFG scale (paper Fig. 5).

    For each alpha, ``num`` samples with labels cycling through the classes (same seed for every
    alpha, so only alpha changes) are scored by :func:`drifting.recipes.evaluate.evaluate` against
    ``ref``. Returns ``{"model", "ref", "num", "seed", "metrics", "alphas": [...], "results": [{"alpha",
    <evaluate's keys>}, ...]}``; with ``out_dir``, also writes ``guidance_sweep.json`` and
    ``guidance_sweep.png``.
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
        (d / "guidance_sweep.json").write_text(json.dumps(out, indent=2))
        plot_guidance_sweep(out, d / "guidance_sweep.png")
    return out


def _series(results: list[dict]) -> dict[str, list[float]]:
    """Per-metric values over the sweep, for the metrics present at every alpha."""
    keys = {"FID": ("fid",), "precision": ("precision",), "recall": ("recall",), "density": ("density",),
            "coverage": ("coverage",), "FD_DINOv2": ("fd_dinov2",),
            "classifier accuracy": ("classifier", "accuracy"),
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


def plot_guidance_sweep(sweep: dict, path: str | Path) -> None:
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
        # [b, C, H, W] in [-1, 1]
        x = torch.from_numpy(images[i: i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
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
        raise ValueError("queries [Q, D] and keys [M, D] must share D, "
                         f"got {tuple(queries.shape)}, {tuple(keys.shape)}")
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


def nearest_neighbours(model_dir: str | Path, *, data: str | None = None,
                       encoder_dir: str | Path | None = None, num: int = 8, k: int = 5, seed: int = 0,
                       out_path: str | Path | None = None, pool_size: int | None = None, alpha: float = 1.0,
                       chunk: int = 4096) -> dict:
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
        raise FileNotFoundError(f"encoder_dir {enc_dir} holds no ResNet-MAE export (config.json "
                                "+ model.safetensors)")
    encoder = ResNetMAE.from_pretrained(enc_dir).encoder

    ds = load_dataset(data, "train")
    pool = ds.images[:pool_size] if pool_size is not None else ds.images  # [M, H, W, C]
    if k > len(pool):
        raise ValueError(f"k = {k} exceeds the {len(pool)} training images searched")
    model, tokenizer = load_generator(model_dir)
    labels = torch.arange(num) % model.config.num_classes  # [num]
    samples = generate(model, labels, alpha, seed=seed, tokenizer=tokenizer)  # [num, H, W, C] uint8
    if samples.shape[1:] != pool.shape[1:]:
        raise ValueError(f"samples are {samples.shape[1:]} but the training images of {data!r} "
                         f"are {pool.shape[1:]}")
    if encoder.config.in_channels != samples.shape[-1]:
        raise ValueError(f"the encoder of {enc_dir} takes {encoder.config.in_channels} channels, "
                         f"the images have {samples.shape[-1]} (a latent-space MAE cannot embed "
                         "pixels; pass encoder_dir=)")
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
def drift_diagnosis(run_dir: str | Path, *, batches: int = 4, n_gen: int | None = None,
                    n_pos: int | None = None, seed: int = 0) -> dict:
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
    from ..training.checkpoint import fill_defaults, jsonable
    from .image_config import ImageTrainConfig
    from .image_training import encode

    run_dir = Path(run_dir)
    tc = run_dir / "model" / "train_config.json"
    if not tc.is_file():
        raise FileNotFoundError(f"run_dir {run_dir} has no model/train_config.json (a "
                                "`drifting train --out` dir)")
    cfg = fill_defaults(json.loads(tc.read_text()), jsonable(asdict(ImageTrainConfig())))  # older runs too
    if cfg.get("tokenizer") or cfg.get("encoder", "mae") != "mae":
        raise ValueError("run_dir: drift_diagnosis supports pixel-space runs with the "
                         "ResNet-MAE encoder only")
    N = _check_pos_int("n_gen", n_gen if n_gen is not None else cfg["n_gen"])
    P = _check_pos_int("n_pos", n_pos if n_pos is not None else cfg["n_pos"])
    batches = _check_pos_int("batches", batches)
    encoder = ResNetMAE.from_pretrained(run_dir / "mae").encoder.eval()
    model, _ = load_generator(run_dir / "model")
    ds = load_dataset(cfg["data"], "train")
    K = model.config.num_classes
    temps, normalize = tuple(cfg["field_options"]["temperatures"]), cfg["field_options"]["normalize"]
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(ds.labels == c) for c in range(K)]
    parts = {"": dict(), "_attr": dict(attraction=1.0, repulsion=0.0),
             "_rep": dict(attraction=0.0, repulsion=1.0)}
    acc: dict[str, dict[str, float]] = {}
    for b in range(batches):
        labels = torch.arange(K).repeat_interleave(N)  # [K*N]
        # [K*N, C, H, W]
        x = model.eval().sample(labels, 1.0, generator=torch.Generator().manual_seed(seed * 1000 + b))
        idx = np.stack([rng.choice(ix, size=P + N, replace=False) for ix in by_class])  # [K, P+N]
        real = ds.to_tensor(idx.reshape(-1))  # [K*(P+N), C, H, W]
        # {j: [K, P+N, L, C]}
        sel = cfg.get("groups")  # the run's subset of groups (absent in a run before the option)
        f_real = group_by_class(encode(encoder, real, cfg["feature_sets"], cfg["vanilla"], groups=sel), K)
        # {j: [K, N, L, C]}
        f_gen = group_by_class(encode(encoder, x, cfg["feature_sets"], cfg["vanilla"], groups=sel), K)
        pos = {j: v[:, :P] for j, v in f_real.items()}
        stand_in = {j: v[:, P:] for j, v in f_real.items()}
        for tag, gen in (("", f_gen), ("floor_", stand_in)):
            for suffix, kw in parts.items():
                _, st = drifting_loss(gen, pos, temperatures=temps, normalize=normalize, **kw)
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

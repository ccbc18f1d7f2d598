"""Drift-RAE on Fashion-MNIST at CPU scale: teacher FID at K Euler steps, the distilled one-step
students of Table 3 (rows A, B, C), App. C's from-scratch variants (Table 9) and the latent
statistics of Tables 1-2 for the VAE and RAE latents. Prints Markdown tables and writes JSON.

    python benchmarks/drift_rae.py --out runs/drift_rae --json benchmarks/results/drift_rae.json

Pipeline (every stage is reused when its config is unchanged, so a second run only re-scores):
1. the RAE (the image recipe's ResNet-MAE encoder, frozen, + a trained pixel decoder) and a
   reconstruction VAE of similar size (drifting.recipes.autoencoders, cached);
2. flow-matching teachers in both latent spaces (drifting train-flow --tokenizer ...);
3. ``drifting distill`` with the presets A, B, C from the RAE teacher;
4. from scratch (App. C): VAE latents, RAE latents, RAE + decode-encode;
5. every generator sampled without guidance for the same labels and scored with ``drifting eval``
   (FID / precision / recall with the FID Inception network, in-domain classifier) against the
   first ``--eval-n`` test images; ``drifting latent-stats`` on the test split.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from drifting.recipes.autoencoders import cached_rae_dir, cached_vae_dir
from drifting.recipes.distill import PRESETS, distill_preset
from drifting.recipes.evaluate import evaluate
from drifting.recipes.flow import FlowTrainConfig, flow_generate, load_flow_model
from drifting.recipes.image_sampling import model_tokenizer, write_grid
from drifting.recipes.latent_stats import format_latent_stats, run_latent_stats
from drifting.recipes.peers import train_once
from drifting.training.checkpoint import jsonable

EULER_STEPS = (1, 2, 4, 8, 16, 32, 50)
ROWS = {"A": "baseline (Alg. 2 field, 16 pos / 16 neg)", "B": "+ input perturbation, - y-softmax",
        "C": "+ 48 pos, + 48 detached neg (64 / 16 + 48)"}


def teacher_config(spec: str, steps: int) -> FlowTrainConfig:
    """The cpu-small DiT on a latent grid with one token per latent position (patch 1)."""
    return FlowTrainConfig(tokenizer=spec, generator="cpu-small",
                           generator_overrides={"patch_size": 1, "depth": 4},
                           steps=steps, batch=80, sample_every=max(steps, 1), ckpt_every=250)


def score(model_dir: str, steps: int, labels: torch.Tensor, path: Path, eval_n: int, seed: int,
          progress: bool) -> dict:
    """Sample ``labels`` with ``steps`` Euler steps (1: the one-step map) and score them; the row is kept
    beside the samples (``path`` with .json) and reused while the model file and the settings are
    unchanged."""
    key = {"model": str(Path(model_dir).resolve()),
           "mtime": (Path(model_dir) / "model.safetensors").stat().st_mtime,
           "steps": steps, "eval_n": eval_n, "seed": seed, "n": len(labels)}
    cached = path.with_suffix(".json")
    if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
        return json.loads(cached.read_text())["row"]
    model, tok = load_flow_model(model_dir), model_tokenizer(model_dir)
    t0 = time.perf_counter()
    imgs = flow_generate(model, labels, steps, seed=seed, tokenizer=tok)
    secs = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=imgs, labels=labels.numpy().astype(np.int64))
    res = evaluate(path, "fashion-mnist:test", n_ref=eval_n, progress=progress)
    clf = res.get("classifier", {})
    row = {"nfe": steps, "fid": res.get("fid"), "precision": res.get("precision"),
           "recall": res.get("recall"), "accuracy": clf.get("accuracy"),
           "classifier_fid": clf.get("classifier_fid"),
           "images_per_second": len(labels) / secs, "samples": str(path)}
    cached.write_text(json.dumps({"key": key, "row": row}))
    return row


def table(title: str, rows: list[dict], first: str) -> str:
    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    out = [f"**{title}**", "",
           f"| {first} | NFE | FID | precision | recall | classifier acc. | classifier FID | train s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['name']} | {r['nfe']} | {f(r['fid'], '{:.1f}')} | {f(r['precision'], '{:.3f}')} "
                   f"| {f(r['recall'], '{:.3f}')} | {f(r['accuracy'], '{:.3f}')} "
                   f"| {f(r['classifier_fid'], '{:.1f}')} | {f(r.get('train_seconds'), '{:.0f}')} |")
    return "\n".join(out)


def distillation_part(a, t_dir, t_secs, labels, samples: Path, progress: bool):
    """Table 3's students from the RAE teacher, and the teacher at K Euler steps, scored."""
    extra = {} if a.distill_lr is None else {"lr": a.distill_lr, "lr_final": a.distill_lr / 100}
    students = {k: distill_preset(k, str(t_dir), steps=a.distill_steps, **extra) for k in ROWS}
    trained = {f"distill_{k}": train_once(f"distill_{k}", c, Path(a.out), progress)
               for k, c in students.items()}
    teacher_rows = []
    for k in (int(v) for v in a.euler_steps.split(",")):
        r = score(str(t_dir), k, labels, samples / f"teacher_K{k}.npz", a.eval_n, 1, progress)
        teacher_rows.append({"name": f"RAE teacher, Euler {k}", "train_seconds": t_secs, **r})
    student_rows = []
    for k, desc in ROWS.items():
        d, secs = trained[f"distill_{k}"]
        r = score(str(d), 1, labels, samples / f"student_{k}.npz", a.eval_n, 1, progress)
        student_rows.append({"name": f"{k}: {desc}", "train_seconds": secs, **r})
    result = {"eval_n": a.eval_n, "teacher": teacher_rows, "students": student_rows,
              "configs": {f"distill_{k}": jsonable(asdict(c)) for k, c in students.items()}}
    return result, teacher_rows, student_rows, trained


def write_rows_grid(rows: list[dict], path: Path) -> None:
    """One grid row per scored generator: two samples of every class."""
    zs = [np.load(r["samples"]) for r in rows]
    write_grid(np.concatenate([np.concatenate([z["images"][z["labels"] == c][:2] for c in range(10)])
                               for z in zs]),
               20, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/drift_rae")
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--vae-teacher-steps", type=int, default=None,
                   help="steps of the VAE-latent teacher (curvature, Table 9's VAE row; "
                   "default --teacher-steps)")
    p.add_argument("--distill-steps", type=int, default=300)
    p.add_argument("--distill-lr", type=float, default=None,
                   help="initial distillation lr (default: Table 8's 3e-5)")
    p.add_argument("--scratch-steps", type=int, default=300)
    p.add_argument("--scratch-lr", type=float, default=1e-3)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--euler-steps", default=",".join(map(str, EULER_STEPS)))
    p.add_argument("--per-class", type=int, default=200,
                   help="test images per class for the latent statistics")
    p.add_argument("--skip-scratch", action="store_true")
    p.add_argument("--part", choices=("all", "distill", "scratch", "teacher"), default="all",
                   help="distill: teacher + Table 3 students only (writes --json); scratch: Table 9 and "
                   "the latent statistics only (writes --json with _scratch before .json); all: both; "
                   "teacher: only score the teacher at every K, most steps first (a second process can "
                   "fill the score cache)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="benchmarks/results/drift_rae.json")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    progress = not a.no_progress
    root = Path(a.out)
    rae, vae = cached_rae_dir(progress=progress), cached_vae_dir(progress=progress)
    spaces = {"VAE": f"autoencoderkl:{vae}", "RAE": f"rae:{rae}"}
    t_cfgs = {"RAE": teacher_config(spaces["RAE"], a.teacher_steps),
              "VAE": teacher_config(spaces["VAE"], a.vae_teacher_steps or a.teacher_steps)}
    t_dir, t_secs = train_once("teacher_rae", t_cfgs["RAE"], root, progress)
    labels = torch.arange(a.eval_n) % 10
    samples = root / "samples"
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.part == "teacher":
        for k in sorted((int(v) for v in a.euler_steps.split(",")), reverse=True):
            score(str(t_dir), k, labels, samples / f"teacher_K{k}.npz", a.eval_n, 1, progress)
        return
    if a.part == "scratch":
        result, teacher_rows, student_rows, trained = {"eval_n": a.eval_n, "configs": {}}, [], [], {}
        out = out.with_name(out.stem + "_scratch.json")
    else:
        result, teacher_rows, student_rows, trained = distillation_part(a, t_dir, t_secs, labels, samples,
                                                                        progress)
        result |= {"rae_dir": str(rae), "vae_dir": str(vae)}
        result["configs"]["teacher_rae"] = jsonable(asdict(t_cfgs["RAE"]))
        out.write_text(json.dumps(jsonable(result), indent=2, default=str))  # the distillation results, first
        print(table("Teacher (flow matching in RAE latents) and Drift-RAE students, no guidance",
                    teacher_rows + student_rows, "generator"), flush=True)
        write_rows_grid(teacher_rows[:1] + teacher_rows[-1:] + student_rows, root / "drift_rae.png")
        print(f"wrote {out} and {root / 'drift_rae.png'} (rows: teacher K=1, teacher K=max, students A-C)")
        if a.part == "distill":
            return
    teachers = {"RAE": (t_dir, t_secs), "VAE": train_once("teacher_vae", t_cfgs["VAE"], root, progress)}
    stats = run_latent_stats(spaces, per_class=a.per_class,
                             teachers={k: str(v[0]) for k, v in teachers.items()}, progress=progress)
    result |= {"latent_stats": stats, "teacher_seconds": {k: v[1] for k, v in teachers.items()},
               "presets": PRESETS}
    result["configs"]["teacher_vae"] = jsonable(asdict(t_cfgs["VAE"]))
    out.write_text(json.dumps(jsonable(result), indent=2, default=str))
    print(format_latent_stats(stats), flush=True)
    scratch = {}
    if not a.skip_scratch:
        base = dict(steps=a.scratch_steps, init="scratch", lr=a.scratch_lr, lr_final=a.scratch_lr / 100)
        scratch = {"VAE latents": distill_preset("C", str(teachers["VAE"][0]), **base),
                   "RAE latents": distill_preset("C", str(t_dir), **base),
                   "RAE + decode-encode": distill_preset("C", str(t_dir), features="decode-encode", **base)}
    trained |= {k: train_once("scratch_" + k.replace(" ", "_").replace("+", "p"), c, root, progress)
                for k, c in scratch.items()}
    scratch_rows = []
    for k in scratch:
        d, secs = trained[k]
        r = score(str(d), 1, labels, samples / f"scratch_{k.replace(' ', '_').replace('+', 'p')}.npz",
                  a.eval_n, 1, progress)
        scratch_rows.append({"name": k, "train_seconds": secs, **r})
    result["scratch"] = scratch_rows
    result["configs"] |= {f"scratch {k}": jsonable(asdict(c)) for k, c in scratch.items()}
    if scratch_rows:
        print()
        print(table("From scratch, no auxiliary MAE (App. C, Table 9)", scratch_rows, "latent space"))
    if scratch_rows:
        write_rows_grid(scratch_rows, root / "drift_rae_scratch.png")
    out.write_text(json.dumps(jsonable(result), indent=2, default=str))
    print(f"wrote {out} and {root / 'drift_rae_scratch.png'} (rows: Table 9's scratch runs)")


if __name__ == "__main__":
    main()

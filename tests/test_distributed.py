"""Multi-process training on CPU: 2 gloo processes under torchrun equal one process on the same
global batch (loss, gradients, trained weights), and a 2-rank run resumes on 1 rank."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from drifting.distributed import Layout, LossComm, init_from_env
from drifting.loss import drifting_loss
from drifting.recipes.image_config import ImageTrainConfig
from drifting.recipes.image_training import train_images
from drifting.recipes.mae_pretrain import MAEConfig
from drifting.training.checkpoint import jsonable

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from dist_worker import CASES, global_batch  # noqa: E402


def torchrun(*args, nproc=2, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(HERE / "dist_worker.py"), *map(str, args)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_two_rank_loss_and_gradients_equal_one_rank(tmp_path):
    torchrun("loss", tmp_path)
    ranks = [torch.load(tmp_path / f"loss_rank{r}.pt", weights_only=True) for r in range(2)]
    gen, pos, neg, w = global_batch()
    for name, (S, opts) in CASES.items():
        g1 = {k: v.clone().requires_grad_(True) for k, v in gen.items()}
        loss, stats = drifting_loss(g1, pos, neg, neg_weights=w,
                                    **{k: v for k, v in opts.items() if k != "max_elements"})
        loss.backward()
        mean_loss = sum(r[name]["loss"] for r in ranks) / 2
        assert torch.allclose(mean_loss, loss.detach(), rtol=1e-5), name
        for k in gen:
            assert torch.allclose(ranks[0][name]["S"][f"{k}/S"], stats[f"{k}/S"], rtol=1e-5)
            # DDP averages the ranks' gradients: rank r's gradient / 2 is the 1-rank gradient of its share
            layout = [Layout(r, 2, S) for r in range(2)]
            for r in range(2):
                from dist_worker import shard
                want = shard(g1[k].grad, layout[r], w.shape[0])
                got = ranks[r][name]["grad"][k] / 2
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * want.abs().max()), (name, k, r)


def test_layout_checks_and_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() == (Layout(), None)
    with pytest.raises(ValueError, match="ranks_per_class"):
        init_from_env(2)
    lay = Layout(rank=3, world=4, ranks_per_class=2)
    assert (lay.class_group, lay.group_rank, lay.classes(8), lay.rows(6)) == (1, 1, slice(4, 8), slice(3, 6))
    with pytest.raises(ValueError, match="classes_per_step=3"):
        lay.check(3, 4, 4, 2)
    with pytest.raises(ValueError, match="n_pos=3"):
        lay.check(4, 4, 3, 2)
    assert LossComm().gather(torch.ones(2, 3)).shape == (2, 3)


def tiny_cfg(mae_dir=None, **kw):
    base = dict(generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=3, batch=32), mae_dir=mae_dir,
                steps=4, classes_per_step=4, n_gen=4, n_pos=4, n_uncond=2, ckpt_every=2, sample_every=100,
                warmup=2, eval_samples=0, max_locations=8, log_every=1)
    base.update(kw)
    return ImageTrainConfig(**base)


def test_two_rank_training_equals_one_rank_and_resumes_on_one(tmp_path):
    ref = train_images(tiny_cfg(), tmp_path / "ref", progress=False)  # also pre-trains the tiny MAE
    cfg = tiny_cfg(mae_dir=str(tmp_path / "ref" / "mae"))
    ref = train_images(cfg, tmp_path / "ref1", progress=False)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(jsonable(asdict(cfg))))

    def weights(run_dir):
        return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]

    def close(a, b):
        # The ranks' encoder and generator run on other batch shapes, so their sums round differently
        # (~1e-7 here). Adam divides each coordinate by its own gradient scale: where a gradient is near
        # zero, that rounding can move a weight by up to a whole step (lr 1e-3), and how often depends on
        # the CPU's kernels (CI once saw it on one machine). So: nearly every weight within 3% of one step,
        # none beyond the 4 steps' bound; a wrong shard or a missed all-reduce moves most weights (and the
        # loss, checked below) far more.
        off = total = 0
        for k in a:
            d = (a[k] - b[k]).abs()
            assert d.max() <= 2 * 4 * 1e-3, (k, d.max().item())
            off, total = off + int((d > 3e-5).sum()), total + d.numel()
        assert off <= 1e-3 * total, f"{off} of {total} weights differ by more than 3e-5"

    # classes sharded (2 classes per rank), and samples sharded (every class on both ranks)
    for S in (1, 2):
        torchrun("train", tmp_path / f"r2s{S}", cfg_path, S)
        close(weights(tmp_path / f"r2s{S}"), ref.generator.state_dict())
        log2 = [json.loads(ln)["loss"]
                for ln in (tmp_path / f"r2s{S}" / "log.jsonl").read_text().splitlines()]
        log1 = [json.loads(ln)["loss"] for ln in (tmp_path / "ref1" / "log.jsonl").read_text().splitlines()]
        assert torch.allclose(torch.tensor(log2), torch.tensor(log1), rtol=1e-4)

    # a 2-rank run crashes in step 3 (checkpoint of step 2 on disk); one process finishes it
    run = tmp_path / "crash"
    torchrun("train", run, cfg_path, 2, 3)
    assert (run / "crashed_rank0").is_file()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    res = train_images(cfg, run, progress=False, resume=True)
    close(res.generator.state_dict(), ref.generator.state_dict())


def test_two_rank_distillation_equals_one_rank(tmp_path):
    from drifting.data.images import load_dataset
    from drifting.recipes.distill import distill
    from drifting.recipes.flow import train_flow
    from test_drift_rae import flow_cfg, tiny_distill

    ds = load_dataset("fashion-mnist", "train")
    keep = np.concatenate([np.flatnonzero(ds.labels == k)[:12] for k in range(10)])
    data = tmp_path / "fm120.npz"
    np.savez(data, images=ds.images[keep], labels=ds.labels[keep])
    teacher = train_flow(flow_cfg(str(data)), tmp_path / "teacher", progress=False)["model_dir"]
    cfg = tiny_distill(teacher, str(data), classes_per_step=4, steps=3, sample_every=100)
    ref = distill(cfg, tmp_path / "one", progress=False, resume=False)
    cfg_path = tmp_path / "distill.json"
    cfg_path.write_text(json.dumps(jsonable(asdict(cfg))))
    torchrun("distill", tmp_path / "two", cfg_path)
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 and ref["steps"] == 3
    for k in a["model"]:
        # see the image trainer's test
        assert torch.allclose(a["model"][k], b["model"][k], rtol=0, atol=3e-5), k
    la = [json.loads(ln)["loss"] for ln in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(ln)["loss"] for ln in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert np.allclose(la, lb, rtol=1e-5)

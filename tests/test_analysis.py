"""The CFG sweep (Fig. 5) and nearest-neighbour (Fig. 6) analyses on a throwaway tiny run."""

import json

import numpy as np
import pytest
import torch

from drifting.cli import cmd_analysis as cli_an
from drifting.recipes import analysis as an
from drifting.recipes.image_config import ImageTrainConfig
from drifting.recipes.image_sampling import generate
from drifting.recipes.image_training import train_images
from drifting.recipes.mae_pretrain import MAEConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as mp:  # module scope: conftest's per-test cache env is not yet set
        mp.setenv("DRIFTING_CACHE", str(tmp_path_factory.getbasetemp() / "drifting-cache"))
        cfg = ImageTrainConfig(generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=3, batch=32),
                               steps=2, classes_per_step=3, n_gen=4, n_pos=4, n_uncond=2, eval_samples=0,
                               max_locations=None, warmup=1)
        train_images(cfg, out, progress=False)
    return out


def test_guidance_sweep_writes_json_and_png_per_alpha(run_dir, tmp_path, standin_path, monkeypatch):
    calls = []  # (labels, alpha, seed) of each generate call: a 2-step model barely reacts to alpha itself

    def spy(model, labels, alpha, **kw):
        calls.append((labels.tolist(), alpha, kw["seed"]))
        return generate(model, labels, alpha, **kw)

    monkeypatch.setattr(an, "generate", spy)
    res = an.guidance_sweep(run_dir / "model", (1, 2), num=20, ref="fashion-mnist:test",
                            metrics=("fid", "prdc"),
                            seed=0, out_dir=tmp_path, progress=False, n_ref=40, inception=standin_path)
    saved = json.loads((tmp_path / "guidance_sweep.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert saved["alphas"] == [1.0, 2.0] and [r["alpha"] for r in saved["results"]] == [1.0, 2.0]
    for r in saved["results"]:
        assert r["n_samples"] == 20 and r["n_ref"] == 40 and r["fid"] > 0
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert calls == [([i % 10 for i in range(20)], 1.0, 0), ([i % 10 for i in range(20)], 2.0, 0)]
    series = an._series(res["results"])
    assert {"FID", "precision", "recall"} <= set(series) and "classifier FID" not in series
    assert len(series["FID"]) == 2
    assert (tmp_path / "guidance_sweep.png").stat().st_size > 1000


def test_series_and_plot_with_classifier_metrics_only(tmp_path):
    sweep = {"alphas": [1.0, 2.0], "num": 4, "ref": "r", "results": [
        {"alpha": 1.0, "classifier": {"accuracy": 0.5, "classifier_fid": 3.0}},
        {"alpha": 2.0, "classifier": {"accuracy": 0.7, "classifier_fid": 2.0}}]}
    assert an._series(sweep["results"]) == {"classifier accuracy": [0.5, 0.7], "classifier FID": [3.0, 2.0]}
    an.plot_guidance_sweep(sweep, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_nearest_neighbours_chunked_matches_brute_force(run_dir, tmp_path):
    from drifting.data.images import load_fashion_mnist
    from drifting.models.resnet_mae import ResNetMAE

    png = tmp_path / "nn.png"
    res = an.nearest_neighbours(run_dir / "model", num=4, k=3, seed=1, out_path=png, pool_size=300, chunk=64)
    idx, sim = np.array(res["indices"]), np.array(res["similarities"])  # [4, 3] each
    assert idx.shape == (4, 3) and sim.shape == (4, 3) and res["labels"] == [0, 1, 2, 3]
    assert (idx >= 0).all() and (idx < 300).all()
    assert (np.diff(sim, axis=1) <= 1e-6).all() and (np.abs(sim) <= 1 + 1e-5).all()
    assert png.stat().st_size > 1000

    # brute force: the same samples and pool, every similarity at once
    from drifting.recipes.image_sampling import load_generator

    model, tok = load_generator(run_dir / "model")
    samples = generate(model, torch.arange(4), 1.0, seed=1, tokenizer=tok)
    enc = ResNetMAE.from_pretrained(run_dir / "mae").encoder
    q, keys = an.embed(enc, samples), an.embed(enc, load_fashion_mnist(split="train").images[:300])
    full = q @ keys.T  # [4, 300]
    bs, bi = full.sort(dim=1, descending=True)
    np.testing.assert_allclose(sim, bs[:, :3].numpy(), atol=1e-5)
    np.testing.assert_array_equal(idx, bi[:, :3].numpy())


def test_top_k_search_finds_an_identical_training_item():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(1000, 16, generator=g)  # [M, D]
    queries = keys[[7, 512, 999]] * 3.0  # same direction: cosine 1 with themselves
    idx, sim = an.top_k_cosine(queries, keys, k=4, chunk=100)
    assert idx[:, 0].tolist() == [7, 512, 999]
    torch.testing.assert_close(sim[:, 0], torch.ones(3))
    assert (sim[:, :-1] >= sim[:, 1:]).all()
    # a chunk smaller than k, and a single chunk, agree
    for chunk in (3, 5000):
        i2, s2 = an.top_k_cosine(queries, keys, k=4, chunk=chunk)
        assert torch.equal(i2, idx) and torch.allclose(s2, sim)


def test_bad_arguments_name_the_argument(run_dir, tmp_path):
    with pytest.raises(ValueError, match="alphas"):
        an.guidance_sweep(run_dir / "model", (0.5, 2), num=4, metrics=("classifier",))
    with pytest.raises(ValueError, match="alphas"):
        an.guidance_sweep(run_dir / "model", (), num=4, metrics=("classifier",))
    with pytest.raises(ValueError, match="metrics"):
        an.guidance_sweep(run_dir / "model", (1,), num=4, metrics=("fidd",))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        an.nearest_neighbours(run_dir / "model", k=0)
    with pytest.raises(ValueError, match="k = 5 exceeds"):
        an.nearest_neighbours(run_dir / "model", k=5, pool_size=3)
    with pytest.raises(ValueError, match="k must be"):
        an.top_k_cosine(torch.randn(2, 4), torch.randn(5, 4), k=0)
    with pytest.raises(FileNotFoundError, match="encoder_dir"):
        an.nearest_neighbours(run_dir / "model", encoder_dir=tmp_path)


def test_parsers_register_both_commands():
    import argparse

    p = argparse.ArgumentParser()
    cli_an.add_analysis_parsers(p.add_subparsers(dest="command"))
    a = p.parse_args(["guidance-sweep", "M", "--alphas", "1,1.5", "--num", "8", "--ref", "fashion-mnist:test",
                      "--metrics", "fid,prdc", "--out", "D"])
    assert a.alphas == (1.0, 1.5) and a.metrics == ("fid", "prdc") and a.func is cli_an.cmd_guidance_sweep
    a = p.parse_args(["neighbours", "M", "--k", "3", "--out", "x.png"])
    assert a.k == 3 and a.num == 8 and a.data is None and a.func is cli_an.cmd_neighbours
    for bad in (["guidance-sweep", "M", "--alphas", "0.5", "--ref", "r", "--out", "D"],
                ["neighbours", "M", "--k", "0", "--out", "x.png"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_neighbours_command_runs(run_dir, tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser()
    cli_an.add_analysis_parsers(p.add_subparsers(dest="command"))
    a = p.parse_args(["neighbours", str(run_dir / "model"), "--num", "2", "--k", "2", "--pool-size", "100",
                      "--out", str(tmp_path / "nn.png")])
    assert a.func(a) == 0
    assert (tmp_path / "nn.png").is_file() and "class 1: cosine" in capsys.readouterr().out


def test_drift_diagnosis_splits_the_norm_and_its_floor_falls_with_the_batch(run_dir, capsys, tmp_path):
    small = an.drift_diagnosis(run_dir, batches=2, n_gen=4, n_pos=4)
    big = an.drift_diagnosis(run_dir, batches=2, n_gen=16, n_pos=16)
    assert (small["n_gen"], small["n_pos"]) == (4, 4)
    groups = {r["group"] for r in small["groups"]}
    assert "vanilla" in groups and "input.sq" in groups and any(g.startswith("tap0.") for g in groups)
    for r in small["groups"]:
        for k in ("V2", "V2_attr", "V2_rep", "floor_V2", "floor_V2_attr", "floor_V2_rep"):
            assert np.isfinite(r[k]) and r[k] > 0, (r["group"], k)
    assert small["total"]["V2"] == pytest.approx(sum(r["V2"] for r in small["groups"]))
    assert sum(v["V2"] for v in small["by_kind"].values()) == pytest.approx(small["total"]["V2"])
    # real images in place of samples: what is left is the sampling noise of N and P, which shrinks as
    # they grow
    assert big["total"]["floor_V2"] < 0.6 * small["total"]["floor_V2"]
    from drifting.cli import main

    assert main(["drift-norm", str(run_dir), "--batches", "1", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert ("| vanilla@0.2 |" in out and "| all |" in out
            and json.loads((tmp_path / "d.json").read_text())["batches"] == 1)

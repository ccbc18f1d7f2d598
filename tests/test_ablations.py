"""`drifting ablate`: every paper table's rows are valid configs that reach the trainer; runs are shared and
reused."""

import json

import pytest
import torch

import drifting.recipes.ablations as ablations
import drifting.recipes.classify as classify
from drifting.cli import main
from drifting.models.dit import DriftingDiT
from drifting.recipes.ablations import ABLATIONS, Ablation, ablation_config, format_ablation, run_ablation
from drifting.recipes.image_training import train_images


def test_every_row_is_a_valid_distinct_config():
    for name, ab in ABLATIONS.items():
        cfgs = [ablation_config(o) for _, o in ab.rows]
        keys = [json.dumps(c.__dict__, default=str, sort_keys=True) for c in cfgs]
        assert len(set(keys)) == len(keys), name  # no two rows of a table train the same thing
        assert sum(1 for _, o in ab.rows if not o) == 1, name  # exactly one default row
    rows = dict(ABLATIONS["antisymmetry"].rows)
    assert ablation_config(rows["attraction-only"]).field_options.repulsion == 0.0
    assert ablation_config({}).minutes is None  # a step budget: the cpu preset's time budget is lifted
    assert ablation_config(rows["1.5x attraction"]).field_options.attraction == 1.5
    assert ablation_config(dict(ABLATIONS["encoder-width"].rows)["C = 16"]).mae.width == 16
    tau = ablation_config(dict(ABLATIONS["temperatures"].rows)["tau 0.05"])
    assert tau.field_options.temperatures == (0.05,)
    alloc = [ablation_config(o) for _, o in ABLATIONS["allocation"].rows if "seed" not in o]
    assert {c.classes_per_step * c.n_gen for c in alloc} == {80}  # the fixed generated batch of Table 2


def test_knobs_reach_the_trainer(tmp_path, monkeypatch):
    """style_tokens, mae width and kernel are used, not just stored."""
    field = {"kernel": "mmd", "normalize_drift": False, "temperatures": (0.5, 1.0)}
    cfg = ablation_config({"style_tokens": 0, "mae": {"width": 4}, "field_options": field}, preset="cpu-tiny",
                          steps=2, eval_samples=0)
    calls = []
    real = ablations.train_images.__globals__["drifting_loss"]

    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setitem(train_images.__globals__, "drifting_loss", spy)
    run = train_images(cfg, tmp_path, progress=False)
    assert calls and all(c["options"].kernel == "mmd" and c["options"].normalize_drift is False
                         for c in calls)
    assert DriftingDiT.from_pretrained(tmp_path / "model").config.style_tokens == 0
    assert json.loads((tmp_path / "mae" / "config.json").read_text())["base_width"] == 4
    assert all(torch.isfinite(p).all() for p in run.generator.parameters())


def test_run_ablation_shares_and_reuses_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    monkeypatch.setitem(ABLATIONS, "t1",
                        Ablation("t1", (("default", {}), ("no style tokens", {"style_tokens": 0}))))
    monkeypatch.setitem(ABLATIONS, "t2",
                        Ablation("t2", (("default", {}), ("(a, b)", {"feature_sets": "ab"}))))
    res = run_ablation("t1", tmp_path, steps=2, eval_samples=20, preset="cpu-tiny", progress=False)
    assert [r["row"] for r in res["rows"]] == ["default", "no style tokens"]
    assert all(0 <= r["accuracy"] <= 1 and r["clf_fid"] > 0 for r in res["rows"])
    assert res["rows"][0]["run"] != res["rows"][1]["run"]
    assert json.loads((tmp_path / "t1.json").read_text()) == res
    assert "| no style tokens |" in format_ablation(res)

    trained = []

    def no_training(cfg, *a, **kw):
        trained.append(cfg)
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ablations, "train_images", no_training)
    again = run_ablation("t1", tmp_path, steps=2, eval_samples=20, preset="cpu-tiny", progress=False)
    assert again["rows"] == res["rows"] and not trained
    with pytest.raises(AssertionError, match="trained again"):  # another table: only its default is shared
        run_ablation("t2", tmp_path, steps=2, eval_samples=20, preset="cpu-tiny", progress=False)
    assert [c.feature_sets for c in trained] == ["ab"]


def test_cli_rejects_unknown_ablation(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ablate", "bogus", "--out", "x"])
    assert e.value.code == 2
    assert "antisymmetry" in capsys.readouterr().err


def test_cli_all_runs_every_table(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(name, out, **kw):
        calls.append((name, kw["steps"]))
        return {"title": name, "preset": kw["preset"], "steps": kw["steps"],
                "eval_samples": kw["eval_samples"],
                "rows": [{"row": "default", "accuracy": 0.5, "clf_fid": 10.0, "train_seconds": 1.0}]}

    import drifting.cli.cmd_ablations as command  # the command calls run_ablation through this module

    monkeypatch.setattr(command, "run_ablation", fake)
    assert main(["ablate", "all", "--out", str(tmp_path), "--steps", "7"]) == 0
    assert calls == [(n, 7) for n in sorted(ABLATIONS)]
    assert capsys.readouterr().out.count("| default | 0.500 | 10.0 | 1 |") == len(ABLATIONS)

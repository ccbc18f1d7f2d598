"""`drifting peers`: drifting, the MMD generator (C.2) and flow matching on one budget, scored side by
side."""

import json
from dataclasses import asdict

import numpy as np
import pytest

import drifting.recipes.classify as classify
import drifting.recipes.peers as peers
from drifting.cli import main
from drifting.recipes.peers import MMD_BANDWIDTHS, format_peers, peer_configs, run_peers


def test_configs_share_the_budget():
    c = peer_configs(preset="cpu", steps=300)
    d, m, f = asdict(c["drifting"]), asdict(c["mmd"]), c["flow"]
    diff = {k for k in d if d[k] != m[k]}
    assert diff == {"field_options"}  # the field, nothing else
    fd, fm = d["field_options"], m["field_options"]
    assert {k for k in fd if fd[k] != fm[k]} == {"kernel", "normalize_drift", "temperatures"}
    assert fm["kernel"] == "mmd" and fm["normalize_drift"] is False and fm["temperatures"] == MMD_BANDWIDTHS
    assert f.steps == 300 and f.batch == d["classes_per_step"] * d["n_gen"] and f.generator == d["generator"]
    assert d["minutes"] is None and f.minutes is None  # a step budget: not the cpu preset's 9.5 minutes
    assert peer_configs(steps=300, flow_steps=900)["flow"].steps == 900


def test_run_peers_end_to_end_and_reuse(tmp_path, monkeypatch, standin_path):
    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    kw = dict(preset="cpu-tiny", steps=2, eval_n=20, euler_steps=(1, 2), inception=standin_path,
              progress=False)
    res = run_peers(tmp_path, **kw)
    assert [(r["method"], r["nfe"]) for r in res["rows"]] == [
        ("drifting", 1), ("MMD (C.2)", 1), ("flow matching, Euler 1", 1), ("flow matching, Euler 2", 2)]
    for r in res["rows"]:
        assert np.isfinite(r["fid"]) and r["fid"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert 0 <= r["accuracy"] <= 1 and r["train_seconds"] > 0 and r["images_per_second"] > 0
        z = np.load(r["samples"])
        assert z["images"].shape == (20, 28, 28, 1) and (z["labels"] == np.arange(20) % 10).all()
    assert json.loads((tmp_path / "peers.json").read_text()) == res
    from PIL import Image

    # 4 methods x (10 classes x 2 samples), 28 px + 2 px padding, x2
    grid = Image.open(tmp_path / "peers.png")
    assert grid.size == (2 * (20 * 30 + 2), 2 * (4 * 30 + 2))
    assert "| flow matching, Euler 2 | 2 |" in format_peers(res)

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(peers, "train_images", no_training)
    monkeypatch.setattr(peers, "train_flow", no_training)
    again = run_peers(tmp_path, **kw)
    assert [r["fid"] for r in again["rows"]] == pytest.approx([r["fid"] for r in res["rows"]])
    with pytest.raises(AssertionError, match="trained again"):  # a changed budget retrains
        run_peers(tmp_path, **{**kw, "steps": 3})


def test_cli_rejects_bad_euler_steps(tmp_path, capsys):
    assert main(["peers", "--out", str(tmp_path), "--euler-steps", "0,2"]) == 2
    assert "euler" in capsys.readouterr().err


def test_threads_option_applies_and_is_restored(tmp_path, monkeypatch):
    import torch

    import drifting.cli.cmd_peers as peers_mod  # the command calls run_peers through this module

    seen = []
    monkeypatch.setattr(peers_mod, "run_peers",
                        lambda *a, **k: seen.append(torch.get_num_threads())
                        or {"rows": [], "eval_n": 1, "ref": "x"})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["peers", "--out", str(tmp_path), "--threads", "1", "--euler-steps", "1"]) == 0
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_equal_wall_time_configs():
    c = peer_configs(preset="cpu", minutes=15, flow={"lr": 2e-3, "ema_decays": (0.9995,)})
    d, m, f = c["drifting"], c["mmd"], c["flow"]
    assert d.minutes == m.minutes == f.minutes == 15  # the budget is the time; the steps only cap it
    assert d.steps == m.steps == f.steps == peers.MAX_STEPS
    assert f.lr == 2e-3 and f.ema_decays == (0.9995,) and f.batch == d.classes_per_step * d.n_gen
    assert peer_configs(minutes=15, steps=400)["flow"].steps == 400
    long = peer_configs(preset="cpu-long", minutes=60)  # the preset's learning curve is off: equal time
    assert long["drifting"].eval_every == 0 and long["meanflow"].minutes == 60
    with pytest.raises(TypeError):
        peer_configs(flow={"learning_rate": 1e-3})  # not a FlowTrainConfig field
    with pytest.raises(ValueError, match="FlowTrainConfig.lr"):
        peer_configs(flow={"lr": -1.0})


def test_run_peers_with_a_time_budget_and_a_subset(tmp_path, monkeypatch, standin_path):
    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    res = run_peers(tmp_path, preset="cpu-tiny", minutes=1e-9, methods=("drifting", "flow"), eval_n=20,
                    euler_steps=(1,), inception=standin_path, progress=False)
    assert [r["method"] for r in res["rows"]] == ["drifting", "flow matching, Euler 1"]
    assert [r["train_steps"] for r in res["rows"]] == [1, 1]  # each stopped at the first step past the budget
    assert res["minutes"] == 1e-9 and "min of training each" in format_peers(res)
    with pytest.raises(ValueError, match="methods"):
        run_peers(tmp_path, methods=("gan",))


def test_cli_time_budget_and_flow_options(tmp_path, monkeypatch, capsys):
    seen = {}
    import drifting.cli.cmd_peers as command  # the command calls run_peers through this module

    monkeypatch.setattr(command, "run_peers",
                        lambda out, **k: seen.update(k) or {"rows": [], "eval_n": 1, "ref": "x"})
    assert main(["peers", "--out", str(tmp_path), "--minutes", "15", "--flow", '{"lr": 0.002}',
                 "--methods", "drifting,flow"]) == 0
    assert seen["minutes"] == 15 and seen["flow"] == {"lr": 0.002} and seen["methods"] == ("drifting", "flow")
    assert "neg_queue" not in seen
    assert main(["peers", "--out", str(tmp_path), "--drifting", '{"neg_queue": 16}']) == 0
    assert seen["neg_queue"] == 16  # ImageTrainConfig fields of the drifting (and MMD) runs
    assert main(["peers", "--out", str(tmp_path), "--drifting", "[16]"]) == 2
    assert "--drifting: expected a JSON object of ImageTrainConfig fields" in capsys.readouterr().err
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything runs
        main(["peers", "--out", str(tmp_path), "--minutes", "0"])
    assert exit_.value.code == 2 and "--minutes" in capsys.readouterr().err

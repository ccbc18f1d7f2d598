"""The policy contract: horizon alignment of training windows, the normalizer, both policies' losses
and predict_action shapes, and that one drifting step pulls generated actions toward the demonstration."""

import json

import numpy as np
import pytest
import torch

from drifting.policy.data import Normalizer, WindowDataset, window_indices
from drifting.policy.policies import DiffusionPolicy, DriftingPolicy, PolicyConfig, build_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_windows_align_observations_and_actions_with_edge_padding():
    # two episodes of lengths 5 and 3; steps are numbered by their global row
    ends = np.array([5, 8])
    To, Tp, Ta = 2, 4, 2
    idx = window_indices(ends, To, Tp, Ta)
    # episode 0: starts s = -1 .. T - Tp + Ta - 1 = 2 -> 4 windows; episode 1: s = -1 .. 0 -> 2 windows
    assert idx.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4],
                            [5, 5, 6, 7], [5, 6, 7, 7]]
    obs = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # obs of step t is t
    act = np.arange(8, dtype=np.float32)[:, None] + 100  # action of step t is 100 + t
    ds = WindowDataset(obs, act, ends, n_obs_steps=To, horizon=Tp, n_action_steps=Ta)
    w = ds[1]
    assert w["obs"].shape == (To, 3) and w["action"].shape == (Tp, 1)
    # the current step is the last observation; the executed actions start at the same step
    current = int(w["obs"][-1, 0])
    assert w["action"][To - 1: To - 1 + Ta, 0].tolist() == [100 + current, 101 + current]
    b = ds.batch(torch.tensor([0, 5]))
    assert b["obs"][:, :, 0].tolist() == [[0, 0], [5, 6]]  # padded at the episode start
    with pytest.raises(ValueError, match="n_action_steps"):
        window_indices(ends, 2, 4, 4)


def test_neighbor_positives_come_from_other_episodes_within_the_radius():
    """WindowDataset.neighbors against a brute-force search: self first, then the nearest windows of
    other episodes by normalized observation distance, replaced by self beyond the radius."""
    g = np.random.default_rng(1)
    ends = np.array([6, 11, 15, 22])
    obs = g.normal(size=(22, 3)).astype(np.float32)
    act = g.normal(size=(22, 2)).astype(np.float32)
    ds = WindowDataset(obs, act, ends, n_obs_steps=2, horizon=4, n_action_steps=2)
    norm = Normalizer.fit(obs)
    f = norm.normalize(ds.obs[ds.index[:, :2]]).flatten(1)
    ep = np.searchsorted(ends, ds.index[:, 0].numpy(), side="right")
    for radius in (np.inf, 1.0):
        # chunks smaller than the windows: the chunking is covered
        nb = ds.neighbors(3, norm.normalize, radius, chunk=4)
        assert nb.shape == (len(ds), 3) and torch.equal(nb[:, 0], torch.arange(len(ds)))
        for w in range(len(ds)):
            d = (f - f[w]).norm(dim=1).numpy()
            d[ep == ep[w]] = np.inf
            want = np.argsort(d, kind="stable")[:2]
            want = [int(j) if d[j] <= radius else w for j in want]
            assert nb[w, 1:].tolist() == want
    assert (nb[:, 1:] == torch.arange(len(ds))[:, None]).any()  # the radius bit somewhere
    b = ds.batch(torch.tensor([0, 7]), nb)
    assert b["positives"].shape == (2, 3, 4, 2) and torch.equal(b["positives"][:, 0], b["action"])
    assert ds.neighbors(1, norm.normalize, 0.1).tolist() == [[i] for i in range(len(ds))]
    with pytest.raises(ValueError, match="radius"):
        ds.neighbors(2, norm.normalize, -1.0)


def test_normalizer_round_trip_and_range():
    g = np.random.default_rng(0)
    x = (g.normal(size=(200, 4)) * [1, 10, 0.1, 0] + [0, 5, -3, 7]).astype(np.float32)  # last dim constant
    norm = Normalizer.fit(x)
    y = norm.normalize(torch.from_numpy(x))
    assert torch.allclose(y[:, :3].min(0).values, torch.full((3,), -1.0), atol=1e-5)
    assert torch.allclose(y[:, :3].max(0).values, torch.ones(3), atol=1e-5)
    assert torch.all(y[:, 3] == 0)
    assert torch.allclose(norm.unnormalize(y), torch.from_numpy(x), atol=1e-5)
    loaded = Normalizer(4)
    loaded.load_state_dict(norm.state_dict())
    assert torch.equal(loaded.normalize(torch.from_numpy(x)), y)
    with pytest.raises(ValueError, match="non-finite"):
        Normalizer.fit(np.array([[np.nan]]))


def small(kind, **kw):
    base = dict(obs_dim=5, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32),
                n_gen=4, inference_steps=5)
    return PolicyConfig(kind=kind, **{**base, **kw})


def batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(B, 2, 5, generator=g) * 50 + 200,
            "action": torch.randn(B, 8, 2, generator=g) * 30 + 250}


@pytest.mark.parametrize("kind", ["drifting", "diffusion"])
def test_loss_and_predict_action_shapes(kind):
    torch.manual_seed(0)
    b = batch()
    pol = build_policy(small(kind), Normalizer.fit(b["obs"].reshape(-1, 5)),
                       Normalizer.fit(b["action"].reshape(-1, 2)))
    assert isinstance(pol, DriftingPolicy if kind == "drifting" else DiffusionPolicy)
    loss, stats = pol.compute_loss(b, generator=torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in pol.model.parameters())
    act = pol.predict_action(b["obs"][:3].numpy(), generator=torch.Generator().manual_seed(2))
    assert act.shape == (3, 4, 2) and act.dtype == np.float32
    assert pol.config.nfe == (1 if kind == "drifting" else 5)
    with pytest.raises(ValueError, match="obs must be"):
        pol.predict_action(np.zeros((3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="action must be"):
        pol.compute_loss({"obs": b["obs"], "action": b["action"][:, :5]})


def test_drifting_positives_extend_the_demonstration():
    """``positives`` holding only the demonstration is the one-positive loss exactly; more positives
    change the loss; a wrong shape is named."""
    torch.manual_seed(0)
    b = batch()
    pol = build_policy(small("drifting"), Normalizer.fit(b["obs"].reshape(-1, 5)),
                       Normalizer.fit(b["action"].reshape(-1, 2)))
    one, _ = pol.compute_loss(b, generator=torch.Generator().manual_seed(1))
    same, _ = pol.compute_loss({**b, "positives": b["action"][:, None]},
                               generator=torch.Generator().manual_seed(1))
    assert torch.allclose(one, same, rtol=1e-6)
    more = torch.stack([b["action"], b["action"] + 20 * torch.randn_like(b["action"])], 1)  # [B, 2, Tp, act]
    two, _ = pol.compute_loss({**b, "positives": more}, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(two) and not torch.allclose(one, two)
    with pytest.raises(ValueError, match="positives must be"):
        pol.compute_loss({**b, "positives": more[:, :, :5]})


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="kind"):
        build_policy(small("gan"))
    for kw, field in ((dict(n_action_steps=8), "n_action_steps"), (dict(n_gen=1), "n_gen"),
                      (dict(scheduler="euler"), "scheduler"), (dict(inference_steps=101), "inference_steps"),
                      (dict(n_pos=0), "n_pos"), (dict(pos_radius=-1.0), "pos_radius")):
        with pytest.raises(ValueError, match=field):
            small("drifting", **kw).validate()


def test_drifting_steps_move_samples_toward_the_demonstration():
    """A few optimizer steps on one fixed observation: the one-step samples approach its demonstration
    (the drift attracts them), which a wrong sign in the loss would reverse."""
    torch.manual_seed(0)
    b = batch(B=1)
    pol = build_policy(small("drifting"), Normalizer.fit(b["obs"].reshape(-1, 5)),
                       Normalizer.fit(torch.cat([b["action"].reshape(-1, 2),
                                                 b["action"].reshape(-1, 2) + 60])))
    opt = torch.optim.Adam(pol.parameters(), lr=3e-3)
    target = b["action"][0, 1:5].numpy()

    def err():
        a = pol.predict_action(b["obs"].repeat(16, 1, 1).numpy(), generator=torch.Generator().manual_seed(9))
        return float(np.abs(a - target).mean())

    before = err()
    for step in range(40):
        loss, _ = pol.compute_loss(b, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert err() < 0.5 * before


@pytest.mark.parametrize("env", ["pusht", "lunarlander"])
def test_tiny_train_and_eval_end_to_end(env, tmp_path, capsys, monkeypatch):
    """collect -> train both policies a few steps -> the protocol's evaluation of the last snapshots
    -> the side-by-side table, through the CLI; then `policy eval` of an export (DDIM, 2 steps)."""
    from drifting.cli import main

    out = tmp_path / "cmp"
    args = ["policy", "compare", "--envs", env, "--out", str(out), "--demos", "2", "--steps", "4", "--batch",
            "8", "--ckpt-every", "2", "--snapshots", "2", "--eval-episodes", "2", "--eval-max-steps", "12",
            "--n-gen", "4", "--n-pos", "2", "--pos-radius", "0.5", "--inference-steps", "3", "--horizon", "8",
            "--n-action-steps", "4", "--ema-decay", "0.99", "--no-progress"]
    assert main(args) == 0
    table = (out / "table.md").read_text()
    assert f"| {env} | drifting | 1 |" in table and f"| {env} | diffusion | 3 |" in table
    for kind in ("drifting", "diffusion"):
        m = json.loads((out / env / kind / "metrics.json").read_text())
        assert len(m["per_snapshot"]) == 2 and [p["snapshot"] for p in m["per_snapshot"]] == [
            "step_0000002", "step_0000004"]
        assert 0 <= m["success_rate"] <= 1 and m["ms_per_action"] > 0 and m["demos_kept"] >= 1
        assert all(p["n_episodes"] == 2 for p in m["per_snapshot"])
        assert m["ms_per_chunk_1obs"] > 0
        export = json.loads((out / env / kind / "model" / "config.json").read_text())
        assert export["train"]["ema_decay"] == 0.99
    # re-running compare on the finished runs evaluates nothing again: the per-snapshot evaluations are cached
    import drifting.recipes.policy as recipe

    def no_eval(*a, **k):
        raise AssertionError("a finished snapshot was evaluated again")
    monkeypatch.setattr(recipe, "evaluate_policy", no_eval)
    assert main(args) == 0 and (out / "table.md").read_text() == table
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["policy", "eval", str(out / env / "diffusion" / "model"), "--episodes", "1", "--scheduler",
                 "ddim", "--inference-steps", "2", "--no-progress"]) == 0
    assert "NFE 2" in capsys.readouterr().out



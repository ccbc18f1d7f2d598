"""The queue of generated negatives (drifting.negatives) and its use by the image trainer."""

import pytest
import torch

import drifting.recipes.image_training as image_training
from drifting.negatives import NegativeQueue
from drifting.recipes.image_config import ImageTrainConfig
from drifting.recipes.image_training import train_images
from drifting.recipes.mae_pretrain import MAEConfig
from drifting.training.rng import step_generator


def _feats(step: int, classes, n: int) -> dict:
    """Class-major rows whose value names (step, class, row): {key: [Nc*n, L=2, C=1]}."""
    rows = torch.tensor([[step * 100 + c * 10 + i] for c in classes for i in range(n)], dtype=torch.float32)
    return {"a": rows[:, None, :].expand(-1, 2, 1).clone(), "b": -rows[:, :, None]}


def test_the_ring_keeps_the_last_q_rows_of_each_class():
    q = NegativeQueue(3, num_classes=4)
    classes = torch.tensor([2, 0])
    assert not q.ready(classes)
    q.push(_feats(1, [2, 0], 2), classes)
    assert not q.ready(classes)  # 2 of 3 slots
    with pytest.raises(RuntimeError, match="not full"):
        q.take(classes)
    q.push(_feats(2, [2, 0], 2), classes)  # class 2: 120, 121, 220, 221 -> the last three
    assert q.ready(classes) and not q.ready(torch.tensor([1]))
    got = q.take(torch.tensor([0, 2]))
    assert got["a"].shape == (6, 2, 1) and got["b"].shape == (6, 1, 1)
    as_set = [sorted(got["a"][i * 3:(i + 1) * 3, 0, 0].tolist()) for i in range(2)]
    assert as_set == [[101.0, 200.0, 201.0], [121.0, 220.0, 221.0]]  # the oldest row of each was overwritten
    assert torch.equal(got["b"][:, 0, 0], -got["a"][:, 0, 0])  # groups stay aligned
    # more new rows than slots: the last `size` of them
    q.push(_feats(3, [1], 5), torch.tensor([1]))
    assert sorted(q.take(torch.tensor([1]))["a"][:, 0, 0].tolist()) == [312.0, 313.0, 314.0]
    # the state round-trips
    r = NegativeQueue(3, num_classes=4)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.take(classes)["a"], q.take(classes)["a"])


def test_bad_queue_input():
    with pytest.raises(ValueError, match="size"):
        NegativeQueue(0, 10)
    q = NegativeQueue(2, 3)
    with pytest.raises(ValueError, match=r"feats\['a'\]"):
        q.push({"a": torch.zeros(3, 2)}, torch.tensor([0, 1]))
    q.push({"a": torch.zeros(2, 1, 1)}, torch.tensor([0]))
    with pytest.raises(ValueError, match="groups"):
        q.push({"b": torch.zeros(2, 1, 1)}, torch.tensor([0]))
    with pytest.raises(ValueError, match="holds 2 samples"):
        NegativeQueue(4, 3).load_state_dict(q.state_dict())
    with pytest.raises(ValueError, match="neg_queue"):
        ImageTrainConfig(neg_queue=-1).validate()


def _tiny(**kw):
    base = dict(generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=3, batch=32), steps=4,
                classes_per_step=10, n_gen=2, n_pos=3, n_uncond=2, ckpt_every=2, sample_every=100, warmup=2,
                eval_samples=0, max_locations=None, log_every=1)
    base.update(kw)
    return ImageTrainConfig(**base)


def test_the_trainer_adds_the_previous_steps_samples_as_weight_one_negatives(tmp_path, monkeypatch):
    calls = []
    real = image_training.drifting_loss

    def spy(gen, pos, neg, **kw):
        calls.append(({k: v.detach().clone() for k, v in gen.items()},
                      {k: v.clone() for k, v in neg.items()}, kw["neg_weights"].clone()))
        return real(gen, pos, neg, **kw)

    monkeypatch.setattr(image_training, "drifting_loss", spy)
    train_images(_tiny(neg_queue=2), tmp_path, progress=False)
    U, Q = 2, 2
    assert [c[1]["vanilla"].shape[1] for c in calls] == [U, U + Q, U + Q, U + Q]  # full after one step
    # the classes of step s, in slot order (the trainer's first draw of the step)
    order = [torch.randperm(10, generator=step_generator(0, s)).tolist() for s in range(4)]
    for s in range(1, 4):
        (gen_prev, _, _), (_, neg, w) = calls[s - 1], calls[s]
        assert torch.equal(w[:, U:], torch.ones(10, Q)) and (w[:, :U] != 1).any()  # the CFG weights first
        for k in range(10):  # class k's queue holds the N = 2 samples class k generated one step earlier
            i, j = order[s - 1].index(k), order[s].index(k)
            for key in gen_prev:
                prev = sorted(tuple(r.flatten().tolist()) for r in gen_prev[key][i])
                assert sorted(tuple(r.flatten().tolist()) for r in neg[key][j, U:]) == prev, (s, k, key)


def test_a_run_with_the_queue_resumes_bit_for_bit(tmp_path, crash_and_resume):
    train_images(_tiny(neg_queue=3), tmp_path / "ref", progress=False)  # pre-trains the MAE both runs share
    cfg = _tiny(neg_queue=3, mae_dir=str(tmp_path / "ref" / "mae"))
    ref, res = crash_and_resume(cfg, tmp_path, 4)  # the crash comes after the step-2 checkpoint
    for (k, a), b in zip(ref.generator.state_dict().items(), res.generator.state_dict().values()):
        assert torch.equal(a, b), k
    assert res.history["loss"] == ref.history["loss"]

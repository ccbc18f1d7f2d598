"""Training checkpoints that cannot be read: a clear error naming the file and what to do, never a raw
traceback from torch's zip or pickle reader, and the file left as it was."""

import os

import pytest
import torch

from drifting.cli import main
from drifting.training.checkpoint import CorruptCheckpointError, load_state, save_state


def _good_state() -> dict:
    return {"model": {"w": torch.arange(2000.0)}, "step": 3, "config": {"lr": 1e-3}, "history": "{}"}


def _truncated(path):
    save_state(path, _good_state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as by a full disk or a killed copy


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _empty(path):
    path.write_bytes(b"")


def _text(path):
    path.write_text("hello, I am not a checkpoint\n")


def _zeroed_middle(path):  # the zip directory is intact, a stretch of tensor data is not
    save_state(path, _good_state())
    b = bytearray(path.read_bytes())
    b[len(b) // 3: len(b) // 3 + 2048] = bytes(2048)
    path.write_bytes(bytes(b))


BAD_FILES = {"truncated": _truncated, "random bytes": _random_bytes, "empty": _empty, "text": _text,
             "zeroed middle": _zeroed_middle}


def test_a_good_checkpoint_round_trips(tmp_path):
    save_state(tmp_path / "checkpoint.pt", _good_state())
    state = load_state(tmp_path / "checkpoint.pt")
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.arange(2000.0))


@pytest.mark.parametrize("make", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path, make):
    ckpt = tmp_path / "checkpoint.pt"
    make(ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(CorruptCheckpointError) as info:
        load_state(ckpt)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)  # the command line reports ValueErrors without a traceback
    assert str(ckpt) in msg and "cannot be read" in msg
    assert "another --out" in msg and "older checkpoint" in msg and "left as it is" in msg
    assert "weights_only" not in msg  # torch's advice to unpickle with weights_only=False is not passed on
    assert "\n" not in msg
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("state, what", [
    ([1, 2, 3], "a list"),
    ({"model": {}, "step": 1}, "without ['config', 'history']"),
])
def test_a_readable_file_that_is_no_training_checkpoint_is_refused(tmp_path, state, what):
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CorruptCheckpointError, match="as a drifting training checkpoint") as info:
        load_state(tmp_path / "checkpoint.pt")
    assert what in str(info.value) and "another --out" in str(info.value)


def test_a_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_state(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("make", [_truncated, _random_bytes], ids=["truncated", "random bytes"])
def test_train_resume_on_a_corrupt_checkpoint_prints_the_error_and_exits_2(tmp_path, monkeypatch, capsys,
                                                                           make, drop_thread_note):
    import drifting.recipes.image_training as image_training

    # reported before the dataset is read or the MAE pre-trained
    monkeypatch.setattr(image_training, "train_images",
                        lambda *a, **k: pytest.fail("trained before checking the checkpoint"))
    make(tmp_path / "checkpoint.pt")
    rc = main(["train", "--preset", "cpu-tiny", "--out", str(tmp_path), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    err = drop_thread_note(err)  # on a busy machine --threads auto first says how many threads it took
    assert err.startswith("drifting train: error: checkpoint ") and "checkpoint.pt cannot be read" in err
    assert "another --out" in err and "Traceback" not in err


def test_train_resume_without_a_checkpoint_says_so_first(tmp_path, monkeypatch, capsys):
    import drifting.recipes.image_training as image_training

    monkeypatch.setattr(image_training, "train_images",
                        lambda *a, **k: pytest.fail("trained before checking the checkpoint"))
    rc = main(["train", "--preset", "cpu-tiny", "--out", str(tmp_path / "nothing-here"), "--resume",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "there is no checkpoint at" in err and "without --resume" in err


def test_fit_points_resume_on_a_corrupt_checkpoint_exits_2(tmp_path, capsys):
    _random_bytes(tmp_path / "checkpoint.pt")
    rc = main(["fit-points", "8gaussians", "--out", str(tmp_path), "--resume", "--steps", "2",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint.pt cannot be read" in err and "Traceback" not in err


def test_a_config_saved_under_a_field_s_old_name_reads_under_the_new_one():
    from drifting.training.checkpoint import fill_defaults

    defaults = {"guidance": "ablation", "sample_guidance": 1.0, "lr": 1.0}
    assert fill_defaults({"cfg": "none", "lr": 2.0}, defaults) == {"guidance": "none", "sample_guidance": 1.0,
                                                                   "lr": 2.0}
    assert fill_defaults({"sample_cfg": 3.0}, defaults)["sample_guidance"] == 3.0
    # a config without the new field keeps an unrelated "cfg" key as it is
    assert fill_defaults({"cfg": {"a": 1}}, {"lr": 1.0}) == {"cfg": {"a": 1}, "lr": 1.0}


def test_a_config_saved_before_the_field_options_moved_reads_as_nested(tmp_path):
    """Runs saved with flat temperatures / normalize / attraction ... read as holding them in field_options,
    so they resume; a fit-points run written in the old layout continues instead of starting over."""
    from dataclasses import asdict

    from drifting.recipes.image_config import ImageTrainConfig
    from drifting.training.checkpoint import fill_defaults, jsonable

    defaults = jsonable(asdict(ImageTrainConfig()))
    old = {k: v for k, v in defaults.items() if k != "field_options"}
    old.update(temperatures=[0.05], normalize="y", attraction=1.5, kernel="laplace", normalize_drift=True)
    got = fill_defaults(old, defaults)
    assert "temperatures" not in got and "normalize" not in got
    assert got["field_options"] == {**defaults["field_options"], "temperatures": [0.05], "normalize": "y",
                                    "attraction": 1.5}
    moved = ("temperatures", "normalize", "attraction")
    assert fill_defaults({k: v for k, v in old.items() if k not in moved}, defaults) == defaults
    # a stored key that today's config does not nest stays where it is
    assert fill_defaults({"temperatures": [1.0]}, {"lr": 1.0}) == {"temperatures": [1.0], "lr": 1.0}

    out = tmp_path / "run"
    assert main(["fit-points", "8gaussians", "--out", str(out), "--steps", "4", "--samples", "50",
                 "--no-progress"]) == 0
    state = load_state(out / "checkpoint.pt")
    flat = {k: v for k, v in state["config"].items() if k != "field_options"}
    state["config"] = {**flat, **state["config"]["field_options"]}  # the layout before the move
    save_state(out / "checkpoint.pt", state)
    assert main(["fit-points", "8gaussians", "--out", str(out), "--steps", "4", "--samples", "50",
                 "--no-progress", "--resume"]) == 0


def test_the_old_guidance_flags_still_work_and_name_the_new_ones(capsys):
    from drifting.cli import build_parser

    p = build_parser()
    a = p.parse_args(["train", "--out", "x", "--cfg", "none"])
    assert a.guidance == "none" and "--cfg is deprecated; use --guidance" in capsys.readouterr().err
    a = p.parse_args(["sample", "m", "--out", "s.npz", "--cfg", "1.5"])
    assert a.guidance == 1.5 and "use --guidance" in capsys.readouterr().err
    a = p.parse_args(["train-flow", "--out", "x", "--sample-cfg", "2"])
    assert a.sample_guidance == 2.0 and "use --sample-guidance" in capsys.readouterr().err
    assert p.parse_args(["train", "--out", "x", "--guidance", "B/2"]).guidance == "B/2"
    assert capsys.readouterr().err == ""

"""The image trainer end to end on Fashion-MNIST with tiny models: files, sampling, exact resume."""

import json

import numpy as np
import pytest
import torch

import drifting.recipes.images as images
from drifting.cli import main
from drifting.recipes.images import ImageTrainConfig, MAEConfig, train_images


def tiny(**kw):
    base = dict(
        generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=3, batch=32), steps=6,
        classes_per_step=3, n_gen=4, n_pos=4, n_uncond=2, ckpt_every=3, sample_every=6, warmup=2,
    )
    base.update(kw)
    return ImageTrainConfig(**base)


def test_train_writes_model_and_samples(tmp_path):
    train_images(tiny(), tmp_path, progress=False)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "mae" / "model.safetensors").is_file()  # pre-trained and cached
    assert (tmp_path / "samples_000006.png").stat().st_size > 1000
    h = json.loads((tmp_path / "history.json").read_text())
    assert len(h["step"]) == 1 and np.isfinite(h["V2"]).all()
    out = tmp_path / "s.npz"
    assert main(["sample", str(tmp_path / "model"), "--num", "20", "--cfg", "1.5", "--out", str(out)]) == 0
    z = np.load(out)
    assert z["images"].shape == (20, 28, 28, 1) and z["images"].dtype == np.uint8
    assert z["labels"].tolist() == [i % 10 for i in range(20)]
    assert (tmp_path / "s.png").is_file()


def test_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    ref = train_images(tiny(), tmp_path / "ref", progress=False)
    real = images.drifting_loss
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    # same MAE for both runs: reuse the reference's pre-trained encoder
    monkeypatch.setattr(images, "drifting_loss", crash)
    cfg = tiny(mae_dir=str(tmp_path / "ref" / "mae"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_images(cfg, tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(images, "drifting_loss", real)
    res = train_images(cfg, tmp_path / "run", progress=False, resume=True)
    # reference run with the same encoder, uninterrupted
    ref = train_images(cfg, tmp_path / "ref2", progress=False)
    for (k, a), b in zip(ref.generator.state_dict().items(), res.generator.state_dict().values()):
        assert torch.equal(a, b), k
    for d in ref.ema.models:
        for a, b in zip(ref.ema.models[d].parameters(), res.ema.models[d].parameters()):
            assert torch.equal(a, b)


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="classes_per_step"):
        train_images(tiny(classes_per_step=11), None, progress=False)
    with pytest.raises(ValueError, match="cfg"):
        tiny(cfg="nope").validate()
    with pytest.raises(ValueError, match="n_gen"):
        tiny(n_gen=1).validate()
    with pytest.raises(FileNotFoundError, match="mae_dir"):
        train_images(tiny(mae_dir=str(tmp_path / "missing")), None, progress=False)


def test_eval_classifier_cli(tmp_path, capsys):
    from drifting.data.images import load_fashion_mnist

    test = load_fashion_mnist(split="test")
    f = tmp_path / "real.npz"
    np.savez(f, images=test.images[:300], labels=test.labels[:300])
    rc = main(["eval-classifier", str(f), "--classifier", str(tmp_path / "clf"), "--steps", "60",
               "--json", str(tmp_path / "r.json"), "--no-progress"])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(rep) >= {"accuracy", "classifier_fid", "floor_classifier_fid", "classifier_test_accuracy"}
    assert (tmp_path / "clf" / "model.safetensors").is_file()
    assert "accuracy" in capsys.readouterr().out
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    assert main(["eval-classifier", str(bad), "--classifier", str(tmp_path / "clf")]) == 2

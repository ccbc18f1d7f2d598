"""The image trainer end to end on Fashion-MNIST with tiny models: files, sampling, exact resume."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import drifting.recipes.image_training as image_training
import drifting.recipes.mae_pretrain as mae_pretrain
from drifting.cli import main
from drifting.recipes.image_config import ImageTrainConfig, train_preset
from drifting.recipes.image_training import train_images
from drifting.recipes.mae_pretrain import MAEConfig


def tiny(**kw):
    base = dict(
        generator="cpu-tiny", mae=MAEConfig(encoder="cpu-tiny", steps=3, batch=32), steps=6,
        classes_per_step=3, n_gen=4, n_pos=4, n_uncond=2, ckpt_every=3, sample_every=6, warmup=2,
        eval_samples=0, max_locations=None,
    )
    base.update(kw)
    return ImageTrainConfig(**base)


def test_train_writes_model_and_samples(tmp_path, monkeypatch):
    import drifting.recipes.classify as classify

    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    run = train_images(tiny(eval_samples=40), tmp_path, progress=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m == run.metrics and m["n_samples"] == 40
    assert 0 <= m["accuracy"] <= 1 and m["classifier_fid"] > 0 and m["floor_classifier_fid"] >= 0
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "mae" / "model.safetensors").is_file()  # pre-trained and cached
    assert (tmp_path / "samples_000006.png").stat().st_size > 1000
    h = json.loads((tmp_path / "history.json").read_text())
    assert len(h["step"]) == 1 and np.isfinite(h["V2"]).all()
    out = tmp_path / "s.npz"
    assert main(["sample", str(tmp_path / "model"), "--num", "20", "--guidance", "1.5", "--out",
                 str(out)]) == 0
    z = np.load(out)
    assert z["images"].shape == (20, 28, 28, 1) and z["images"].dtype == np.uint8
    assert z["labels"].tolist() == [i % 10 for i in range(20)]
    assert (tmp_path / "s.png").is_file()
    # --euler-steps is for flow-matching models only
    argv = ["sample", str(tmp_path / "model"), "--num", "4", "--euler-steps", "4", "--out", str(out)]
    assert main(argv) == 2


@pytest.mark.parametrize("n_extra_neg", [0, 2])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch, crash_at, n_extra_neg):
    ref = train_images(tiny(n_extra_neg=n_extra_neg), tmp_path / "ref", progress=False)
    real = image_training.drifting_loss
    crash = crash_at(real, 5)

    # same MAE for both runs: reuse the reference's pre-trained encoder
    monkeypatch.setattr(image_training, "drifting_loss", crash)
    cfg = tiny(mae_dir=str(tmp_path / "ref" / "mae"), log_every=1, n_extra_neg=n_extra_neg)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_images(cfg, tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(image_training, "drifting_loss", real)
    res = train_images(cfg, tmp_path / "run", progress=False, resume=True)
    # reference run with the same encoder, uninterrupted
    ref = train_images(cfg, tmp_path / "ref2", progress=False)
    for (k, a), b in zip(ref.generator.state_dict().items(), res.generator.state_dict().values()):
        assert torch.equal(a, b), k
    for d in ref.ema.models:
        for a, b in zip(ref.ema.models[d].parameters(), res.ema.models[d].parameters()):
            assert torch.equal(a, b)
    # the JSONL log: the lines the crashed run wrote after its checkpoint were replaced, not repeated
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(ln) for ln in (tmp_path / "ref2" / "log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3, 4, 5, 6]
    assert [ln["loss"] for ln in lines] == [ln["loss"] for ln in ref_lines]
    assert set(lines[0]) >= {"step", "loss", "V2", "lr", "grad_norm", "time", "V2_groups"}
    assert any(k.startswith("tap0.loc/V2@") for k in lines[0]["V2_groups"])


def test_detached_extra_negatives_are_the_generators_samples_of_each_class(tmp_path, monkeypatch):
    """n_extra_neg E: the loss gets E more negatives per class after the U unconditional ones, at weight 1,
    without gradient, in the features of the current generator's samples of that class at the step's classes
    and alpha. With a generator made blind to its noise, every sample of a class is the same image, so the
    extra negatives of class c must equal class c's generated features exactly (a wrong class order or label
    would not)."""
    build = image_training.build_generator

    def noise_blind(config):
        G = build(config)
        fwd = G.forward
        G.forward = lambda noise, labels, alpha, style=None: fwd(
            torch.zeros_like(noise), labels, alpha, None if style is None else torch.zeros_like(style))
        return G

    seen = []
    real = image_training.drifting_loss

    def spy(gen, pos, neg=None, *, neg_weights=None, **kw):
        seen.append((gen, neg, neg_weights))
        return real(gen, pos, neg, neg_weights=neg_weights, **kw)

    monkeypatch.setattr(image_training, "build_generator", noise_blind)
    monkeypatch.setattr(image_training, "drifting_loss", spy)
    E, U = 3, 2
    train_images(tiny(steps=2, n_extra_neg=E, n_uncond=U, max_locations=5), tmp_path, progress=False)
    assert len(seen) == 2
    for gen, neg, w in seen:
        assert w.shape == (3, U + E) and torch.equal(w[:, U:], torch.ones(3, E))
        for j, g in gen.items():
            assert neg[j].shape[:2] == (3, U + E) and neg[j].shape[2:] == g.shape[2:]
            assert not neg[j].requires_grad and g.requires_grad
            extra = neg[j][:, U:]  # [Nc, E, L, C]
            torch.testing.assert_close(extra, g.detach()[:, :1].expand_as(extra), rtol=1e-5, atol=1e-6)
    # E = 0 (the default): the unconditional samples alone
    seen.clear()
    train_images(tiny(steps=1, n_uncond=U), tmp_path / "off", progress=False)
    assert seen[0][2].shape == (3, U)


def test_checkpoint_from_before_an_option_existed_still_resumes(tmp_path):
    from drifting.training.checkpoint import load_state, save_state

    train_images(tiny(steps=3, ckpt_every=3), tmp_path, progress=False)
    state = load_state(tmp_path / "checkpoint.pt")
    for key in ("minutes", "lr_decay", "precision"):  # options added later: an older checkpoint lacks them
        state["config"].pop(key)
    state["config"]["mae"].pop("cls_steps")
    save_state(tmp_path / "checkpoint.pt", state)
    assert train_images(tiny(steps=3, ckpt_every=3), tmp_path, progress=False,
                        resume=True).history["step"][-1] == 3
    with pytest.raises(ValueError, match="different configuration"):  # a real difference still refuses
        train_images(tiny(steps=3, ckpt_every=3, lr_decay=0.5), tmp_path, progress=False, resume=True)


def test_mae_is_cached_between_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path / "cache"))  # empty: other tests fill the shared one
    calls = []
    real = mae_pretrain.pretrain_mae
    monkeypatch.setattr(mae_pretrain, "pretrain_mae", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = train_images(tiny(steps=1), tmp_path / "a", progress=False)
    b = train_images(tiny(steps=1), tmp_path / "b", progress=False)
    assert len(calls) == 1  # the second run found the encoder in the cache
    assert ((tmp_path / "b" / "mae" / "model.safetensors").read_bytes()
            == (tmp_path / "a" / "mae" / "model.safetensors").read_bytes())
    for p, q in zip(a.generator.parameters(), b.generator.parameters()):  # same encoder -> same run
        assert torch.equal(p, q)
    train_images(tiny(steps=1, mae=MAEConfig(encoder="cpu-tiny", steps=2, batch=32)), tmp_path / "c",
                 progress=False)
    assert len(calls) == 2  # another MAE config is another cache entry


def test_mae_classification_fine_tuning(tmp_path, monkeypatch):
    """A.3: cls_steps more steps with lambda L_cls + (1 - lambda) L_recon, lambda warmed 0 -> cls_lambda."""
    import drifting.models.resnet_mae as rm
    from drifting.data.images import load_dataset
    from drifting.models.resnet_mae import ResNetMAE

    ds = load_dataset("fashion-mnist", "train")
    weights = []
    real = rm.mae_loss
    monkeypatch.setattr(mae_pretrain, "mae_loss",
                        lambda *a, **k: weights.append(k.get("cls_weight")) or real(*a, **k))
    cfg = MAEConfig(encoder="cpu-tiny", steps=3, batch=32, cls_steps=40, cls_lambda=0.5, cls_warmup=4,
                    lr=5e-3, ema_decay=0.5)
    mae_pretrain.pretrain_mae(ds, cfg, tmp_path / "ft", progress=False)
    assert weights == [None] * 3 + [0.0, 0.125, 0.25, 0.375] + [0.5] * 36  # the MAE phase, then the warm-up
    ft = ResNetMAE.from_pretrained(tmp_path / "ft")
    assert ft.config.num_classes == 10 and ft.head is not None
    x, y = ds.to_tensor(np.arange(50000, 50500)), torch.from_numpy(ds.labels[50000:50500])
    with torch.no_grad():
        acc = (ft(x)[1].argmax(-1) == y).float().mean().item()
    assert acc > 0.2  # the (EMA) head learned the labels: chance is 0.1 (0.13 without the fine-tuning steps)
    mae_pretrain.pretrain_mae(ds, MAEConfig(encoder="cpu-tiny", steps=3, batch=32), tmp_path / "plain",
                              progress=False)
    assert ResNetMAE.from_pretrained(tmp_path / "plain").head is None
    for bad in (dict(cls_steps=-1), dict(cls_lambda=1.5), dict(cls_warmup=-2)):
        with pytest.raises(ValueError, match="mae.cls_"):
            tiny(mae=MAEConfig(**bad)).validate()


def test_train_mae_cli_fine_tunes_with_labels(tmp_path, capsys, monkeypatch):
    import drifting.recipes.mae_pretrain as mae_pretrain
    from drifting.models.resnet_mae import ResNetMAE

    seen, pretrain = [], mae_pretrain.pretrain_mae
    monkeypatch.setattr(mae_pretrain, "pretrain_mae",
                        lambda ds, cfg, *a, **k: seen.append(cfg) or pretrain(ds, cfg, *a, **k))
    assert main(["train-mae", "--out", str(tmp_path / "m"), "--preset", "cpu-tiny", "--steps", "2",
                 "--cls-steps", "2", "--cls-warmup", "1", "--width", "4", "--batch", "16",
                 "--no-progress"]) == 0
    assert "classification head" in capsys.readouterr().out
    config = ResNetMAE.from_pretrained(tmp_path / "m").config
    assert (config.num_classes, config.base_width, seen[0].batch) == (10, 4, 16)
    rc = main(["train-mae", "--out", str(tmp_path / "x"), "--cls-steps", "2", "--cls-lambda", "2",
               "--no-progress"])
    assert rc != 0 and "mae.cls_lambda must be in [0, 1]" in capsys.readouterr().err


def test_bf16_autocast_on_the_cpu(tmp_path):
    from drifting.training.precision import uses_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (not uses_bf16(cpu, "auto") and uses_bf16(cuda, "auto") and uses_bf16(cpu, "bf16")
            and not uses_bf16(cuda, "fp32"))
    run = train_images(tiny(steps=2, precision="bf16", log_every=1), tmp_path, progress=False)
    assert np.isfinite(run.history["loss"]).all() and run.generator.class_embed.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny(precision="fp16").validate()


def test_time_budget_stops_training_and_keeps_a_checkpoint(tmp_path):
    run = train_images(tiny(steps=10_000, minutes=1e-9, ckpt_every=10_000), tmp_path, progress=False)
    assert run.history["step"] == [1]  # the first step boundary past the budget
    assert [json.loads(ln)["step"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]
    from drifting.training.checkpoint import load_state

    assert int(load_state(tmp_path / "checkpoint.pt")["step"]) == 1
    assert (tmp_path / "model" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="minutes"):
        tiny(minutes=0).validate()


def test_location_subsampling_and_tensorboard(tmp_path):
    run = train_images(tiny(steps=2, max_locations=8, log_every=1), tmp_path, progress=False,
                       tensorboard=True)
    assert np.isfinite(run.history["loss"]).all()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_subset_of_feature_groups_trains(tmp_path, capsys):
    """``groups`` keeps only the matching groups in the loss: the logged per-group statistics show them
    alone, and the option reaches the run from the command line."""
    run = train_images(tiny(steps=2, groups="tap1.loc,tap*.mean", vanilla=False, log_every=1), tmp_path / "a",
                       progress=False)
    assert np.isfinite(run.history["loss"]).all()
    line = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1])
    groups = {k.split("/")[0] for k in line["V2_groups"]}
    assert groups == {"tap0.mean", "tap1.loc", "tap1.mean", "tap2.mean", "tap3.mean"}, line.keys()
    with pytest.raises(ValueError, match="groups: the pattern 'tap7.loc' matches none"):
        train_images(tiny(steps=1, groups="tap7.loc"), None, progress=False)
    out = tmp_path / "cli"
    assert main(["train", "--preset", "cpu-tiny", "--steps", "1", "--eval-samples", "0", "--out", str(out),
                 "--groups", "tap2.loc", "--no-vanilla", "--no-progress"]) == 0
    cfg = json.loads((out / "model" / "train_config.json").read_text())
    assert cfg["groups"] == "tap2.loc" and cfg["vanilla"] is False


def test_train_cli_sets_the_field_temperatures(tmp_path, capsys, drop_thread_note):
    """``train --temperatures`` reaches the run's field options (its log has a V2 per given tau) and keeps
    the preset's other options; a bad value is an error naming the flag."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu-tiny", "--steps", "1", "--eval-samples", "0", "--out", str(out),
                 "--temperatures", "0.05,0.2", "--no-progress"]) == 0
    opts = json.loads((out / "model" / "train_config.json").read_text())["field_options"]
    assert opts["temperatures"] == [0.05, 0.2] and opts["normalize"] == "both"
    line = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert {k.split("@")[1] for k in line["V2_groups"]} == {"0.05", "0.2"}
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "bad"), "--temperatures", "0.05,-1"])
    assert "--temperatures must be positive" in drop_thread_note(capsys.readouterr().err)


def test_train_cli_sets_the_extra_negatives(tmp_path, capsys, drop_thread_note):
    """``train --n-extra-neg E`` reaches the run's config, and a negative count (here and in ``distill``) is
    an error naming the flag, before any work."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu-tiny", "--steps", "1", "--eval-samples", "0", "--out", str(out),
                 "--n-extra-neg", "3", "--no-progress"]) == 0
    assert json.loads((out / "model" / "train_config.json").read_text())["n_extra_neg"] == 3
    for cmd in (["train", "--out", str(tmp_path / "bad")],
                ["distill", "--out", str(tmp_path / "bad"), "--teacher", "t"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--n-extra-neg", "-1"])
        err = drop_thread_note(capsys.readouterr().err)
        assert "--n-extra-neg" in err and "expected a whole number >= 0" in err, err
    assert not (tmp_path / "bad").exists()


def test_train_cli_sets_the_mae_width_and_its_label_fine_tuning(tmp_path):
    """``train --mae-width --mae-cls-steps --mae-cls-lambda --mae-cls-warmup`` reach the MAE that the run
    pre-trains: its exported config has the width and a classification head."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu-tiny", "--steps", "1", "--eval-samples", "0", "--out", str(out),
                 "--mae-steps", "2", "--mae-width", "4", "--mae-cls-steps", "2", "--mae-cls-lambda", "1.0",
                 "--mae-cls-warmup", "1", "--seed", "3", "--mae-seed", "2", "--no-progress"]) == 0
    mae = json.loads((out / "mae" / "config.json").read_text())
    assert mae["base_width"] == 4 and mae["num_classes"] == 10
    run_cfg = json.loads((out / "model" / "train_config.json").read_text())
    cfg = run_cfg["mae"]
    assert (cfg["width"], cfg["cls_steps"], cfg["cls_lambda"], cfg["cls_warmup"]) == (4, 2, 1.0, 1)
    assert (run_cfg["seed"], cfg["seed"]) == (3, 2)  # --seed is the generator's; the encoder has its own


def test_train_cli_seed_leaves_the_encoders_seed(tmp_path, monkeypatch):
    """``train --seed S`` seeds the generator only: the encoder keeps the preset's seed, so the shipped MAE
    serves every training seed (a new seed pre-trains nothing)."""
    seen = []

    def record(cfg, *a, **k):
        seen.append(cfg)
        raise SystemExit(0)  # stop before training

    monkeypatch.setattr(image_training, "train_images", record)
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path), "--seed", "5"])
    from drifting.cli.cmd_images import DEFAULT_PRESET

    assert DEFAULT_PRESET == "cpu-wide" and seen[0].mae == train_preset(DEFAULT_PRESET).mae  # the shipped one
    assert (seen[0].seed, seen[0].mae.seed) == (5, train_preset(DEFAULT_PRESET).mae.seed)



def test_train_cli_minutes_zero_lifts_the_presets_time_budget(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu", "--generator", "conv-tiny", "--mae-preset", "cpu-tiny",
                 "--mae-steps", "2", "--mae-cls-steps", "0", "--steps", "1", "--classes-per-step", "2",
                 "--n-gen", "2", "--n-pos", "2", "--n-uncond", "2", "--eval-samples", "0", "--minutes", "0",
                 "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "model" / "train_config.json").read_text())["minutes"] is None
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(out), "--minutes", "-1"])
    assert exit_.value.code == 2 and "--minutes" in capsys.readouterr().err


def test_presets():
    from drifting.recipes.image_config import TRAIN_PRESETS, train_preset

    for name in TRAIN_PRESETS:
        train_preset(name)  # each validates
    b2 = train_preset("B/2")  # Table 8, "B/2, latent" column
    assert (b2.generator, b2.mae.encoder, b2.lr, b2.weight_decay, b2.warmup, b2.steps) == (
        "B/2", "latent-640", 4e-4, 0.0, 10_000, 200_000)
    assert (b2.classes_per_step, b2.n_pos, b2.n_gen, b2.guidance_config.n_uncond, b2.guidance_config.k) == (
        128, 128, 64, 32, 5.0)
    assert b2.ema_decays == (0.999, 0.9995, 0.9998, 0.9999) and b2.grad_clip == 2.0
    l2 = train_preset("L/2")
    assert (l2.n_pos, l2.guidance_config.no_cfg_prob, l2.weight_decay) == (64, 0.5, 0.01)
    ab = train_preset("ablation", steps=7, mae=dict(steps=3))
    assert (ab.steps, ab.mae.steps, ab.lr, ab.classes_per_step, ab.mae.encoder) == (
        7, 3, 2e-4, 64, "latent-256")
    cpu = train_preset("cpu")  # the main job (issue 15's lever study)
    assert (cpu.generator, cpu.mae.cls_steps, cpu.mae.cls_lambda, cpu.mae.cls_warmup, cpu.minutes,
            cpu.job_minutes) == ("conv-small", 400, 0.1, 100, None, 14.5)
    # 0 lifts the preset's budgets (None keeps them): a step budget, as the ablations and peers use
    lifted = train_preset("cpu", minutes=0)
    assert lifted.minutes is None and lifted.job_minutes is None
    assert train_preset("cpu", minutes=None).job_minutes == 14.5
    # a training budget replaces the job budget, unless both are given
    assert (train_preset("cpu", minutes=3).minutes, train_preset("cpu", minutes=3).job_minutes) == (3, None)
    both = train_preset("cpu", minutes=3, job_minutes=10)
    assert (both.minutes, both.job_minutes) == (3, 10)
    assert train_preset("cpu", job_minutes=0).job_minutes is None
    assert train_preset("cpu-long").job_minutes is None and train_preset("cpu-long").minutes == 60
    wide = train_preset("cpu-wide")  # the cpu preset with a width-16 MAE fine-tuned on labels alone
    assert (wide.mae.width, wide.mae.cls_steps, wide.mae.cls_lambda, wide.mae.steps) == (16, 1600, 1.0, 1600)
    assert replace(wide, mae=train_preset("cpu").mae) == train_preset("cpu")
    assert train_preset("cpu-dit").generator == "cpu-p4"
    assert train_preset("cpu-v1") == ImageTrainConfig()  # the earlier main job: the dataclass defaults
    assert train_preset("cpu", mae=dict(cls_steps=0)).mae.cls_steps == 0
    assert train_preset("cpu", mae=dict(cls_steps=None)).mae.cls_steps == 400  # None: the preset's
    # a preset is never changed by a run's config
    train_preset("cpu").mae.steps = -1
    assert train_preset("cpu").mae.steps == 800
    with pytest.raises(ValueError, match="preset"):
        train_preset("nope")
    with pytest.raises(ValueError, match=r"unknown ImageTrainConfig field\(s\) \['neg_queu'\]"):
        train_preset("cpu", neg_queu=3)
    with pytest.raises(ValueError, match=r"overrides\['mae'\]: unknown MAEConfig field\(s\) \['widht'\]"):
        train_preset("cpu", mae=dict(widht=16))
    with pytest.raises(ValueError, match=r"unknown ImageTrainConfig field\(s\) \['mae_width'\]"):
        train_preset("cpu", mae_width=16)  # nested configs, not name prefixes
    assert train_preset("cpu", neg_queue=3).neg_queue == 3


def test_the_job_budget_leaves_the_preparation_and_the_end_out(tmp_path, monkeypatch, capsys):
    """With job_minutes the generator trains for what the job has left after its preparation (the metrics'
    classifier trained first), less the end's share; a budget the preparation used up is an error."""
    import drifting.recipes.classify as classify

    calls = []
    monkeypatch.setattr(classify, "prepare_judge", lambda data: calls.append(data))
    cfg = tiny(job_minutes=2.0, eval_samples=10)
    start = image_training.time.perf_counter() - 30.0  # a job that started 30 s ago
    minutes = image_training.training_minutes(cfg, start, report=True)
    assert calls == [cfg.data]
    left = 2.0 - 0.5 - image_training.JOB_END_MINUTES
    assert left - 0.05 < minutes <= left
    assert "training for 1.0 min (job budget 2 min, preparation 0.5 min)" in capsys.readouterr().out
    assert image_training.training_minutes(replace(cfg, minutes=0.25), start, report=False) == 0.25
    assert image_training.training_minutes(replace(cfg, job_minutes=None, minutes=3.0), start, False) == 3.0
    with pytest.raises(RuntimeError, match="job_minutes=0.8: the preparation took 0.5 min"):
        image_training.training_minutes(replace(cfg, job_minutes=0.8), start, report=False)
    with pytest.raises(ValueError, match="job_minutes must be None or > 0"):
        tiny(job_minutes=-1.0).validate()


def test_a_job_budget_ends_training_on_the_clock(tmp_path, monkeypatch):
    """train_images asks training_minutes for its budget (with the job's start, before the data and encoder
    are loaded) before its training clock starts, so the preparation (here a judge that takes 3 s to train) is
    not training time, and it ends at the first step past the budget, with its metrics as usual."""
    import drifting.recipes.classify as classify

    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    real_judge = classify.prepare_judge
    monkeypatch.setattr(classify, "prepare_judge",
                        lambda data: image_training.time.sleep(3.0) or real_judge(data))
    seen = []
    real = image_training.training_minutes

    def spy(cfg, job_start, report):
        minutes = real(cfg, job_start, report)  # trains the metrics' classifier first: preparation
        seen.append((image_training.time.perf_counter() - job_start, minutes))
        return minutes

    monkeypatch.setattr(image_training, "training_minutes", spy)
    run = train_images(tiny(steps=3, job_minutes=30.0, eval_samples=20, ckpt_every=10_000, log_every=1),
                       tmp_path, progress=False)
    assert run.history["step"] == [1, 2, 3] and run.metrics["n_samples"] == 20
    assert run.history["time"][0] < 2.0  # the 3 s of preparation are not on the training clock
    (prep_seconds, minutes), = seen
    left = 30.0 - prep_seconds / 60 - image_training.JOB_END_MINUTES
    assert prep_seconds > 3.0 and left <= minutes < left + 0.05
    monkeypatch.setattr(image_training, "training_minutes", lambda *a: 1e-9)
    short = train_images(tiny(steps=10_000, job_minutes=30.0, ckpt_every=10_000), tmp_path / "b",
                         progress=False)
    assert short.history["step"] == [1]  # the first step boundary past the budget


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="classes_per_step"):
        train_images(tiny(classes_per_step=11), None, progress=False)
    with pytest.raises(ValueError, match="guidance"):
        tiny(guidance="nope").validate()
    with pytest.raises(ValueError, match="n_gen"):
        tiny(n_gen=1).validate()
    with pytest.raises(ValueError, match="max_locations"):
        tiny(max_locations=0).validate()
    with pytest.raises(ValueError, match="n_extra_neg must be >= 0"):
        tiny(n_extra_neg=-1).validate()
    with pytest.raises(ValueError, match="groups: expected comma-separated"):
        tiny(groups="tap1.loc,").validate()
    with pytest.raises(ValueError, match="encoder_space"):
        tiny(encoder_space="latents").validate()
    with pytest.raises(ValueError, match="spec"):
        train_images(tiny(tokenizer="vqgan:/x"), None, progress=False)
    with pytest.raises(FileNotFoundError, match="path"):
        train_images(tiny(tokenizer=f"sd-vae:{tmp_path / 'no-vae'}"), None, progress=False)
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


@pytest.mark.parametrize("images, labels, why", [
    (np.zeros((4, 28, 28, 1), np.float32), np.arange(4), "uint8"),  # floats in [0, 1]: refused, not rescaled
    (np.zeros((4, 32, 32, 1), np.uint8), np.arange(4), "do not match"),
    (np.zeros((4, 28, 28, 1), np.uint8), np.array([0, 1, 2, 10]), "labels must lie in"),
    (np.zeros((4, 28, 28, 1), np.uint8), None, "needs 'labels'"),
])
def test_eval_classifier_checks_its_input_before_training(tmp_path, monkeypatch, capsys, images, labels, why):
    import drifting.recipes.classify as classify

    monkeypatch.setattr(classify, "train_classifier", lambda *a, **k: pytest.fail("trained before checking"))
    monkeypatch.setattr(classify, "cached_classifier", lambda *a, **k: pytest.fail("trained before checking"))
    f = tmp_path / "s.npz"
    np.savez(f, images=images, **({} if labels is None else {"labels": labels}))
    assert main(["eval-classifier", str(f), "--no-progress"]) == 2
    assert why in capsys.readouterr().err


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    train_images(tiny(steps=3, ckpt_every=3), tmp_path, progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated, as by a full disk
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="cannot be read"):
        train_images(tiny(steps=3, ckpt_every=3), tmp_path, progress=False, resume=True)
    assert ckpt.read_bytes() == before  # left as it was
    rc = main(["train", "--out", str(tmp_path), "--preset", "cpu-tiny", "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint.pt cannot be read" in err and "Traceback" not in err


def test_several_encoders_sum_their_losses(tmp_path):
    """Table 9: MAE + another encoder; each encoder's groups are prefixed and enter the summed loss."""
    import torchvision
    from safetensors.torch import save_file

    w = tmp_path / "r18.safetensors"
    save_file(torchvision.models.resnet18(weights=None).state_dict(), str(w))
    cfg = tiny(steps=1, log_every=1, encoder=f"mae+resnet18:{w}@32", max_locations=4)
    train_images(cfg, tmp_path / "run", progress=False)
    groups = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["V2_groups"]
    assert any(k.startswith("mae/tap0.loc") for k in groups)
    assert any(k.startswith("resnet18/tap0.loc") for k in groups)
    with pytest.raises(ValueError, match="encoder"):
        train_images(tiny(steps=1, encoder="nonsense:x"), None, progress=False)


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_latent_generator_with_autoencoderkl(tmp_path, space):
    """SD-VAE-style latent space with a tiny random AutoencoderKL: the generator works on 4x14x14
    latents; features come from a latent-MAE or from the decoded pixels (gradients through the decoder)."""
    from drifting.models.tokenizer import tiny_autoencoder_kl

    tiny_autoencoder_kl(in_channels=1).save_pretrained(tmp_path / "vae")
    spec = f"autoencoderkl:{tmp_path / 'vae'}"
    # the generator sees 4x14x14 latents: cpu-small's 7x7 patches tile them (cpu-tiny's 4x4 do not)
    cfg = tiny(steps=2, log_every=1, tokenizer=spec, encoder_space=space, max_locations=8,
               generator="cpu-small")
    run = train_images(cfg, tmp_path / "run", progress=False)
    G = run.generator
    assert (G.config.in_channels, G.config.input_size) == (4, 14)
    mae_cfg = json.loads((tmp_path / "run" / "mae" / "config.json").read_text())
    assert mae_cfg["in_channels"] == (4 if space == "latent" else 1)
    assert np.isfinite(run.history["loss"]).all()
    # the generator learned something through the (decoder and) encoder: its weights moved
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    out = tmp_path / "s.npz"
    assert main(["sample", str(tmp_path / "run" / "model"), "--num", "12", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (12, 28, 28, 1)  # decoded back to pixels


def test_non_finite_loss_stops_with_the_checkpoint_intact(tmp_path, monkeypatch):
    real = image_training.drifting_loss
    calls = {"n": 0}

    def nan_at_5(*a, **k):
        calls["n"] += 1
        loss, stats = real(*a, **k)
        return (loss * float("nan") if calls["n"] == 5 else loss), stats

    monkeypatch.setattr(image_training, "drifting_loss", nan_at_5)
    cfg = tiny()
    with pytest.raises(FloatingPointError, match="non-finite loss at step 4.*checkpoint"):
        train_images(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())
    monkeypatch.setattr(image_training, "drifting_loss", real)
    run = train_images(cfg, tmp_path, progress=False, resume=True)  # resumable
    assert np.isfinite(run.history["loss"]).all()


def test_train_cli_prints_the_metrics_table(tmp_path, monkeypatch, capsys):
    import drifting.recipes.classify as classify

    monkeypatch.setattr(classify, "CLASSIFIER_STEPS", 20)
    out = tmp_path / "run"
    assert main(["train", "--preset", "cpu-tiny", "--steps", "4", "--eval-samples", "20", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| accuracy | classifier-feature FID to test | real train-vs-test floor |" in text
    m = json.loads((out / "metrics.json").read_text())
    assert f"| {m['accuracy']:.3f} | {m['classifier_fid']:.2f} | {m['floor_classifier_fid']:.2f} |" in text
    assert (out / "samples.png").is_file() and (out / "model" / "model.safetensors").is_file()
    assert main(["train", "--preset", "nope", "--out", str(out)]) == 2  # a clear error, not a traceback


def test_the_conv_generator_trains_exports_and_samples(tmp_path):
    from drifting.models.convnet import ConvGenerator
    from drifting.recipes.image_sampling import load_generator

    run = train_images(tiny(generator="conv-tiny", steps=3, ckpt_every=3), tmp_path, progress=False)
    assert isinstance(run.generator, ConvGenerator) and np.isfinite(run.history["loss"]).all()
    model, tok = load_generator(tmp_path / "model")
    assert isinstance(model, ConvGenerator) and tok is None
    assert main(["sample", str(tmp_path / "model"), "--num", "20", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (20, 28, 28, 1)


def test_learning_curve_every_k_steps(tmp_path, monkeypatch):
    calls = []

    def fake_eval(model, data, n, **kw):  # the classifier metrics (tested elsewhere); here: when and what
        calls.append(n)
        return {"accuracy": 0.1 * len(calls), "classifier_fid": 10.0 / len(calls)}

    monkeypatch.setattr(image_training, "evaluate_generator", fake_eval)
    run = train_images(tiny(steps=5, eval_every=2, eval_samples=30), tmp_path, progress=False)
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4, 5] and calls == [30, 30, 30]  # every 2 steps and at the end
    assert [p["accuracy"] for p in curve] == pytest.approx([0.1, 0.2, 0.3])
    assert all(b["time"] > a["time"] for a, b in zip(curve, curve[1:]))
    # the last point, not a 4th call
    assert run.metrics["accuracy"] == pytest.approx(0.3) and run.metrics["steps"] == 5
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 5
    with pytest.raises(ValueError, match="eval_every"):
        tiny(eval_every=-1).validate()
    with pytest.raises(ValueError, match="eval_samples"):
        tiny(eval_every=10, eval_samples=0).validate()
    long = train_preset("cpu-long")
    assert (long.generator, long.steps, long.minutes, long.eval_every) == ("conv-small", 12000, 60.0, 500)
    assert long.mae == train_preset("cpu-wide").mae  # the wide encoder


@pytest.mark.parametrize("preset,width", [("cpu", 8), ("cpu-wide", 16), ("cpu-long", 16)])
def test_the_shipped_mae_is_the_presets_encoder(preset, width):
    """The package ships the MAEs of the `cpu` and `cpu-wide` presets on Fashion-MNIST (`cpu-long` uses
    cpu-wide's): a run finds it under the key its config and data give, and pre-trains nothing. (Fails when
    a preset's MAE config or the shipped file changes alone: rebuild it with `drifting train-mae
    --train-preset P --ship`.)"""
    from drifting.cache import shipped_root
    from drifting.data.images import load_dataset
    from drifting.models.resnet_mae import ResNetMAE

    ds = load_dataset("fashion-mnist", "train")
    cfg = train_preset(preset).mae
    d = mae_pretrain.cached_mae_dir(ds, cfg, progress=False)
    assert d == shipped_root() / "mae" / mae_pretrain.mae_key(ds, cfg)
    mae = ResNetMAE.from_pretrained(d)
    # A.3's head: the fine-tuned export
    assert (mae.config.num_classes, mae.config.input_size, mae.config.base_width) == (10, 28, width)


def test_train_mae_for_a_preset_ships_into_the_package(tmp_path, capsys, monkeypatch):
    """`train-mae --train-preset P --ship` trains P's MAE afresh and stores it where every later run finds it
    before the cache; the metrics classifier never ships."""
    import drifting.cache as cache
    from drifting.data.images import load_dataset

    monkeypatch.setattr(cache, "shipped_root", lambda: tmp_path / "pkg")
    monkeypatch.setattr(mae_pretrain, "shipped_root", lambda: tmp_path / "pkg")
    data = tmp_path / "d.npz"
    full = load_dataset("fashion-mnist", "train")
    np.savez(data, images=full.images[:40], labels=full.labels[:40])
    assert main(["train-mae", "--train-preset", "cpu-tiny", "--data", str(data), "--ship", "--no-progress",
                 "--out", str(tmp_path / "copy")]) == 0
    assert "shipped with the package" in capsys.readouterr().out
    ds = load_dataset(str(data), "train")
    cfg = train_preset("cpu-tiny").mae
    shipped = tmp_path / "pkg" / "mae" / mae_pretrain.mae_key(ds, cfg)
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.safetensors"]
    copied = (tmp_path / "copy" / "model.safetensors").read_bytes()
    assert copied == (shipped / "model.safetensors").read_bytes()

    def no_training(*a, **k):
        raise AssertionError("pre-trained again")

    monkeypatch.setattr(mae_pretrain, "pretrain_mae", no_training)
    assert mae_pretrain.cached_mae_dir(ds, cfg, progress=False) == shipped
    with pytest.raises(AssertionError, match="again"):  # another config: not shipped, trained
        mae_pretrain.cached_mae_dir(ds, replace(cfg, steps=cfg.steps + 1), progress=False)
    # a classifier entry placed in the package is not used: the judge is always the user's own
    (tmp_path / "pkg" / "classifier" / "k").mkdir(parents=True)
    (tmp_path / "pkg" / "classifier" / "k" / "config.json").write_text("{}")
    built = []
    cache.cached_dir("classifier", "k", lambda d: built.append(d) or d.mkdir(parents=True))
    assert built
    assert main(["train-mae", "--ship", "--out", str(tmp_path / "z")]) == 2
    assert "--ship: only with --train-preset" in capsys.readouterr().err


def test_temperatures_flag_is_one_parser_for_train_and_distill(capsys):
    """``train`` and ``distill`` read ``--temperatures`` alike (cli.args.temperatures): a tuple of floats, and
    a bad value is an error naming the flag."""
    from drifting.cli import build_parser

    p = build_parser()
    assert p.parse_args(["train", "--out", "x", "--temperatures", "0.05,0.2"]).temperatures == (0.05, 0.2)
    distill = p.parse_args(["distill", "--out", "x", "--teacher", "t", "--temperatures", "0.1"])
    assert distill.temperatures == (0.1,)
    for cmd in (["train", "--out", "x"], ["distill", "--out", "x", "--teacher", "t"]):
        with pytest.raises(SystemExit):
            p.parse_args([*cmd, "--temperatures", "a,b"])
        assert "--temperatures must be comma-separated numbers" in capsys.readouterr().err

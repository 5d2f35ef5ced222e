"""decomp.experiments.train: the loss goes down, resume is exact, a finished checkpoint is reused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from decomp.experiments import train as T
from decomp.experiments.data import Loader, Split
from decomp.experiments.train import TrainConfig, evaluate, lr_factor, make_optimizer, train

CONFIG = TrainConfig(epochs=3, batch_size=16, lr=2.0, warmup_frac=0.1, seed=0)


def _data(n: int = 96) -> Split:
    """Images whose brightness gives the label (0..3): learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 40, (n, 3, 32, 32), generator=g))
    return Split(images.to(torch.uint8), labels)


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 10),
    )


def test_training_lowers_the_loss():
    model, data = _model(), _data()
    before = evaluate(model, data)
    result = train(model, data, CONFIG, progress=False)
    after = evaluate(model, data)
    assert after["loss"] < before["loss"] - 0.3 and after["accuracy"] > before["accuracy"]
    assert result.complete and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert after["count"] == 96 and model.training  # evaluate restores the mode


def test_resume_continues_exactly(tmp_path):
    data = _data()
    whole = _model()
    train(whole, data, CONFIG, checkpoint=tmp_path / "whole.pt", progress=False)

    first = _model()
    part = train(first, data, CONFIG, checkpoint=tmp_path / "split.pt", progress=False, stop_after_epoch=1)
    assert part.epochs_done == 1 and not part.complete
    torch.rand(5)  # the caller's RNG moves on in between; the checkpoint's must be used
    resumed_model = _model(seed=123)  # different init: the weights must come from the checkpoint
    resumed = train(resumed_model, data, CONFIG, checkpoint=tmp_path / "split.pt", progress=False)
    assert resumed.start_epoch == 1 and resumed.complete and len(resumed.history) == 3
    for (name, a), b in zip(whole.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_finished_checkpoint_is_loaded_without_training(tmp_path, monkeypatch):
    data, path = _data(), tmp_path / "done.pt"
    trained = _model()
    first = train(trained, data, CONFIG, checkpoint=path, test_data=data, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(T, "train_epoch", no_training)
    fresh = _model(seed=7)
    again = train(fresh, data, CONFIG, checkpoint=path, test_data=data, progress=False)
    assert again.skipped and again.test == first.test and again.history == first.history
    for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    data, path = _data(32), tmp_path / "c.pt"
    config = dataclasses.replace(CONFIG, epochs=1)
    train(_model(), data, config, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"lr: checkpoint 2\.0 != requested 0\.5"):
        train(_model(), data, dataclasses.replace(config, lr=0.5), checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="model_config.width"):
        train(_model(), data, config, checkpoint=path, model_config={"width": 2.0}, progress=False)


def test_callers_rng_is_left_alone():
    model, data = _model(), _data(32)
    state = torch.get_rng_state()
    train(model, data, dataclasses.replace(CONFIG, epochs=1), progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_schedule_and_weight_decay_groups():
    assert lr_factor(0, 100, 0.1) == pytest.approx(1 / 11)
    assert lr_factor(9, 100, 0.1) == pytest.approx(10 / 11)
    assert lr_factor(10, 100, 0.1) == 1.0
    assert lr_factor(99, 100, 0.1, 0.0) == pytest.approx(1 / 90)
    optimizer = make_optimizer(_model(), TrainConfig(batch_size=256, lr=0.4))
    decayed, plain = optimizer.param_groups
    assert [p.ndim for p in decayed["params"]] == [4, 2] and decayed["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0
    assert decayed["lr"] == pytest.approx(0.4 * 256 / 512) and decayed["nesterov"]


def test_config_validation():
    with pytest.raises(ValueError, match="pad_mode"):
        TrainConfig(pad_mode="edge")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_recalibrate_batchnorm_matches_the_data_and_restores_modes():
    from decomp.experiments.data import Loader, Split
    from decomp.experiments.train import recalibrate_batchnorm

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    split = Split(images, torch.arange(64) % 10)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    model.train()
    momentum = model[1].momentum
    recalibrate_batchnorm(model, split, batches=4, batch_size=16)
    assert model.training and model[1].momentum == momentum
    # the running stats are those of the conv outputs over the 64 normalised images
    from decomp.experiments.data import normalize
    with torch.no_grad():
        out = model[0](normalize(images))
    torch.testing.assert_close(model[1].running_mean, out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, out.var((0, 2, 3)), rtol=0.05, atol=1e-4)


def test_channels_last_training_hands_back_contiguous_weights(tmp_path):
    """Decomposition reshapes conv weights: train(channels_last=True) must not leave them strided,
    also when it returns a finished checkpoint without training."""
    config = dataclasses.replace(CONFIG, epochs=1, channels_last=True)
    for _ in range(2):  # trains, then loads the finished checkpoint
        model = _model()
        train(model, _data(), config, checkpoint=tmp_path / "cl.pt", progress=False)
        conv = model[0].weight
        assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)


def test_distill_needs_a_teacher_and_a_teacher_needs_distill():
    with pytest.raises(ValueError, match="teacher"):
        train(_model(), _data(), dataclasses.replace(CONFIG, distill=0.5), progress=False)
    with pytest.raises(ValueError, match="distill=0.0"):
        train(_model(), _data(), CONFIG, teacher=_model(), progress=False)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="TrainConfig.distill must be in"):
            dataclasses.replace(CONFIG, distill=bad)
    with pytest.raises(ValueError, match="distill_temperature"):
        dataclasses.replace(CONFIG, distill=0.5, distill_temperature=0)


def _predictions(model: nn.Module, data: Split) -> torch.Tensor:
    images, _ = next(iter(Loader(data, len(data), train=False)))
    model.eval()
    with torch.no_grad():
        return model(images).argmax(1)


def test_pure_distillation_follows_the_teacher_not_the_labels():
    """distill=1: the labels carry no weight, so a student trained on wrong labels learns the
    teacher's predictions; without distillation it learns the wrong labels."""
    data = _data()
    teacher = _model(seed=1)
    train(teacher, data, dataclasses.replace(CONFIG, epochs=10), progress=False)
    taught = Split(data.images, _predictions(teacher, data))
    wrong = Split(data.images, (taught.labels + 1) % 4)
    config = dataclasses.replace(CONFIG, epochs=10, distill=1.0, distill_temperature=2.0)
    student = _model(seed=2)
    teacher.train()  # handed back in the mode it came in
    train(student, wrong, config, teacher=teacher, progress=False)
    assert teacher.training
    # Soft targets teach more slowly than hard labels (0.75 here after 10 epochs); chance is 0.25,
    # and a student that followed the labels would score 0.
    assert evaluate(student, taught)["accuracy"] > 0.6
    plain = _model(seed=2)
    train(plain, wrong, dataclasses.replace(config, distill=0.0), progress=False)
    assert evaluate(plain, wrong)["accuracy"] > 0.9 and evaluate(plain, taught)["accuracy"] < 0.1


def test_distill_loss_is_the_mix_of_its_terms():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = nn.functional.cross_entropy(s, y)
    assert torch.allclose(T.DistillLoss(0.0, 4.0)(s, y, t), ce)
    assert T.DistillLoss(1.0, 3.0)(t, y, t).abs() < 1e-6      # matching the teacher costs nothing
    kl = nn.functional.kl_div(torch.log_softmax(s / 3, 1), torch.softmax(t / 3, 1), reduction="batchmean")
    assert torch.allclose(T.DistillLoss(0.25, 3.0)(s, y, t), 0.75 * ce + 0.25 * 9 * kl)


def test_checkpoint_from_before_the_distill_fields_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    config = dataclasses.replace(CONFIG, epochs=1)
    train(_model(), _data(), config, checkpoint=path, progress=False)
    ckpt = torch.load(path, weights_only=False)
    for key in T._ADDED_FIELDS:
        del ckpt["config"][key]
    torch.save(ckpt, path)
    assert train(_model(), _data(), config, checkpoint=path, progress=False).skipped
    with pytest.raises(ValueError, match="distill"):  # but a distilled run is not that checkpoint
        train(_model(), _data(), dataclasses.replace(config, distill=0.5), checkpoint=path,
              teacher=_model(), progress=False)


def test_cpu_has_native_bf16_reads_the_cpu_flags(monkeypatch):
    from pathlib import Path

    from decomp.experiments import train as T

    for flags, native in (("fpu avx2 avx512f", False), ("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 x", True)):
        monkeypatch.setattr(Path, "read_text", lambda self, flags=flags: f"flags\t\t: {flags}\n")
        assert T.cpu_has_native_bf16() is native

    def unreadable(self):
        raise OSError("no /proc")
    monkeypatch.setattr(Path, "read_text", unreadable)
    assert T.cpu_has_native_bf16() is False

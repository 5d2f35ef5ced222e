"""decomp.experiments.layer_sensitivity: one layer at a time, and the refinement against the logits."""

import csv

import pytest
import torch
import torch.nn.functional as F

from decomp.experiments import layer_sensitivity as L
from decomp.experiments.data import CIFAR10Data, Split
from decomp.experiments.zoo import vgg16_bn_cifar
from decomp.report import LayerReport


def _tiny():
    torch.manual_seed(0)
    model = vgg16_bn_cifar(width=1 / 16, fc_width=32).eval()
    with torch.no_grad():  # batch norms with statistics of their own, so the layers are not all alike
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.normal_(0, 0.1)
        model.classifier[6].weight.mul_(50)  # confident logits: a decomposition's error shows in the KL
    return model


def test_decompose_one_touches_only_the_named_layer():
    model = _tiny()
    names = L.decomposable_layers(model)
    assert names[0] == "features.3" and "features.0" not in names and "classifier.6" not in names
    new, row = L.decompose_one(model, "features.7", 1 / 3)
    assert row.decomposed and row.name == "features.7"
    assert isinstance(new.features[7], torch.nn.Sequential)
    assert all(type(new.get_submodule(n)) is type(model.get_submodule(n)) for n in names if n != "features.7")


def test_refine_against_logits_lowers_the_kl_and_trains_that_layer_alone():
    torch.set_num_threads(1)
    model = _tiny()
    images = torch.randn(64, 3, 32, 32)
    new, _ = L.decompose_one(model, "features.10", 1 / 3)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    kl = L.refine_against_logits(new, model, "features.10", images, steps=60, lr=3e-3, batch=32)
    assert kl[0] > 1e-3 and kl[1] < 0.7 * kl[0]
    with torch.no_grad():
        again = F.kl_div(F.log_softmax(new(images), 1), F.log_softmax(model(images), 1), log_target=True,
                         reduction="batchmean")
    assert float(again) == pytest.approx(kl[1], rel=1e-4)
    changed = {k for k, v in new.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("features.10.") for k in changed)
    assert all(p.requires_grad for p in new.parameters())  # put back as they were


def test_main_refines_the_layers_that_lose_most_and_resumes(tmp_path, monkeypatch, capsys):
    model = _tiny()
    split = Split(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64))
    monkeypatch.setattr(L, "_baseline", lambda: model)
    monkeypatch.setattr(L, "load_cifar10", lambda *a, **k: CIFAR10Data(split, split))
    monkeypatch.setattr(L, "_eval_top1", lambda *a: 0.5)
    calls = []

    def fake(model, name, fit, rank, cal_images, test, top1_base, steps):
        calls.append((name, fit))
        drop = 1.0 if (name, fit) == ("features.7", "data-aware") else 0.1
        info = LayerReport(name, "geometry", "tucker2", (1, 1), 1, 1, 1, 1, info={"output_rel_error": 0.25})
        return L._row(name, info, fit, len(cal_images), steps if fit == L.FITS[2] else 0, 0.5, 0.5 - drop / 100, 1.0)
    monkeypatch.setattr(L, "measure", fake)
    argv = ["--data", "x", "--images", "8", "--out", str(tmp_path), "--refine-above", "0.5"]
    assert L.main(argv) == 0
    names = L.decomposable_layers(model)
    assert calls[:2 * len(names)] == [(n, f) for f in L.FITS[:2] for n in names]
    assert calls[2 * len(names):] == [("features.7", L.FITS[2])]
    rows = list(csv.DictReader((tmp_path / "layer_sensitivity.csv").open()))
    assert [(r["layer"], r["fit"]) for r in rows] == [(n, f) for f in L.FITS[:2] for n in names] + \
        [("features.7", L.FITS[2])]
    assert rows[-1]["output_rel_error"] == "" and rows[0]["refine_steps"] == "0"
    md = (tmp_path / "layer_sensitivity.md").read_text()
    assert f"data-aware: {len(names)} layers, sum of the one-layer drops {-(1 + 0.1 * (len(names) - 1)):+.2f}" in md
    assert (tmp_path / "layer_sensitivity.csv.json").is_file()
    calls.clear()
    assert L.main(argv) == 0 and calls == []  # same commit: every row is kept
    assert L.main(argv + ["--refine-above", "0.05"]) == 0  # a lower bar owes the other layers' refinements
    assert sorted(calls) == sorted((n, L.FITS[2]) for n in names if n != "features.7")

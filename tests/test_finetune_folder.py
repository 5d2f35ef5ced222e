"""ImageFolder fine-tuning with the user's weights on a tiny tree made from the embedded CIFAR-10
subset (issue 13, item 3): top-1 and top-5 before and after, outputs with sidecars, resumable."""

import csv
import json

import pytest
import torch
from torch import nn

from decomp.experiments import finetune_folder
from decomp.experiments.data import Split
from decomp.experiments.imagefolder import DatasetLoader, image_folders
from decomp.experiments.train import evaluate


@pytest.fixture
def tree(tiny_imagefolder):  # conftest.py: made once per session
    return tiny_imagefolder


def test_the_tiny_tree_is_an_imagefolder_of_ten_classes(tree):
    train, val = image_folders(tree, size=32)
    assert len(train.classes) == 10 and train.classes == val.classes
    assert (len(train), len(val)) == (40, 20)
    assert train[0][0].shape == (3, 32, 32) and sorted(tree.rglob("*.JPEG"))[0].stat().st_size < 5000


def test_dataset_loader_shards_cover_the_val_set_once(tree):
    _, val = image_folders(tree, size=32)
    seen = [y for part in range(3) for _, labels in DatasetLoader(val, 4, train=False, shard=(part, 3))
            for y in labels.tolist()]
    assert seen == [y for _, y in val.samples]
    train_loader = DatasetLoader(val, 8, train=True, shard=(1, 2))  # 4 images per rank per step
    assert len(train_loader) == 2 and all(len(x) == 4 for x, _ in train_loader)


def test_evaluate_reports_top5():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0, 0, 0]] * 4)  # ranks 0 > 1 > 2 > 3 > 4 > the rest
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8))
    nn.init.zeros_(model[1].weight)
    model[1].bias.data = logits[0]
    data = Split(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 4, 5, 1]))
    out = evaluate(model, data, topk=(1, 5))
    assert out["accuracy"] == 0.25 and out["top5"] == 0.75
    assert "top5" not in evaluate(model, data)  # the default is as it always was


def test_finetune_with_weights_reports_top1_and_top5_and_resumes(tree, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "mine.pt"
    torch.save(finetune_folder.build_model("resnet18", 10).state_dict(), weights)
    argv = ["--data", str(tree), "--model", "resnet18", "--weights", str(weights), "--size", "32",
            "--batch-size", "8", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--no-progress"]
    summary = finetune_folder.main(argv)
    for stage in ("base", "decomposed", "finetuned"):
        assert 0 <= summary[f"top1_{stage}"] <= summary[f"top5_{stage}"] <= 1
    assert summary["params_after"] < summary["params_before"] and summary["finetune_epochs"] == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "imagefolder.csv")))
    assert float(rows[0]["top5_finetuned"]) == summary["top5_finetuned"]
    sidecar = json.loads((tmp_path / "out" / "imagefolder.csv.json").read_text())
    assert sidecar["summary"]["weights"] == str(weights) and sidecar["git_sha"] is not None
    again = finetune_folder.main(argv)  # the checkpoint is complete: nothing is trained again
    assert again["resumed_from_epoch"] == 1 and again["top1_finetuned"] == summary["top1_finetuned"]


def test_weights_for_another_head_need_new_head(tree, tmp_path, capsys):
    weights = tmp_path / "imagenet_head.pt"
    torch.save(finetune_folder.build_model("resnet18", 1000).state_dict(), weights)
    argv = ["--data", str(tree), "--model", "resnet18", "--weights", str(weights), "--size", "32",
            "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        finetune_folder.main(argv + ["--cache", str(tmp_path / "c1")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --weights" in err and "other shape: fc.bias, fc.weight" in err and "--new-head" in err
    model = finetune_folder.build_model("resnet18", 10)
    info = finetune_folder.load_weights(model, str(weights), new_head=True)
    assert info["new_head"] == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.conv1.weight, torch.load(weights)["conv1.weight"])


@pytest.mark.parametrize("argv, says", [
    (["--data", "/nonexistent"], "argument --data: /nonexistent has no train/ and val/"),
    (["--model", "resnet_18"], "argument --model: resnet_18 is not a torchvision classification model"),
    (["--weights", "nofile"], "argument --weights: nofile is neither a file nor a torchvision weights name"),
    (["--batch-size", "0"], "argument --batch-size: 0; allowed: an int >= 1"),
])
def test_bad_arguments_are_refused_before_any_work(tree, argv, says, capsys):
    base = {"--data": str(tree)}
    full = [x for k, v in base.items() if k not in argv for x in (k, v)] + argv
    with pytest.raises(SystemExit) as exit_:
        finetune_folder.parse(full)
    assert exit_.value.code == 2 and says in capsys.readouterr().err

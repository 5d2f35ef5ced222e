"""``--ranks-from RUN:VARIANT``: a committed run's per-layer ranks as a variant of another run."""

import csv
import json
from pathlib import Path

import pytest
import torch

import decomp.experiments.cifar10 as C
import decomp.experiments.reproduce as R
from decomp.experiments.data import Split
from decomp.experiments.fixed_ranks import parse_ranks_from
from decomp.experiments.train import TrainConfig
from decomp.experiments.zoo import alexnet_cifar

SMOKE = Path(__file__).resolve().parents[1] / "results" / "cifar10" / "smoke"
SOURCE = "tucker2+svd-all@macs-x3"


def source_layers(model: str) -> dict:
    with (SMOKE / "layers.csv").open(newline="") as fh:
        return {r["name"]: (r["method"], r["ranks"]) for r in csv.DictReader(fh)
                if r["variant"] == SOURCE and r["model"] == model}


def test_ranks_are_read_per_model_and_named_after_their_run():
    fixed = parse_ranks_from(f"{SMOKE}:{SOURCE}")
    assert fixed.family == "tucker2+svd-all" and fixed.label == "ranks-smoke-macs-x3"
    over = fixed.overrides("alexnet_w0.0625")
    layers = source_layers("alexnet_w0.0625")
    assert set(over) == set(layers)
    for name, (method, ranks) in layers.items():
        want = None if not method or not ranks else json.loads(ranks)
        assert over[name] == (tuple(want) if isinstance(want, list) else want)
    assert any(isinstance(v, tuple) for v in over.values()) and any(v is None for v in over.values())
    variant = R.Variant(fixed.family, None, 0.04, aware=True, fixed=fixed)
    assert variant.name == "tucker2+svd-all@ranks-smoke-macs-x3" and variant.fit == "data-aware"


@pytest.mark.parametrize("text, match", [
    ("no-colon", "give RUN:VARIANT"),
    ("results/nope:tucker2+svd-all@1-3", "no layers.csv in results/nope"),
    (f"{SMOKE}:tucker2+svd-all@nope", r"has no variant 'tucker2\+svd-all@nope'"),
])
def test_bad_sources_are_refused(text, match):
    with pytest.raises(C.UsageError, match=match):
        parse_ranks_from(text)


def test_a_model_the_run_does_not_have_is_refused():
    with pytest.raises(C.UsageError, match=r"has no tucker2\+svd-all@macs-x3 of vgg16_bn_w0.5"):
        parse_ranks_from(f"{SMOKE}:{SOURCE}").overrides("vgg16_bn_w0.5")


def test_script_refuses_a_bad_source_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "load_cifar10", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as e:  # the cpu profile's model is not in the smoke run
        C.main(["--profile", "cpu", "--ranks-from", f"{SMOKE}:{SOURCE}", "--out", str(tmp_path)])
    assert e.value.code == 2 and "argument --ranks-from" in capsys.readouterr().err


def test_run_variant_fits_the_committed_architecture_again(tmp_path):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (64,), generator=g))
    fixed = parse_ranks_from(f"{SMOKE}:{SOURCE}")
    variant = R.Variant(fixed.family, None, 0.01, aware=True, fixed=fixed)
    _, st = R.run_variant(alexnet_cifar(width=1 / 16).eval(), variant, train_data=data, test_data=data,
                          cache=tmp_path, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01),
                          timing={"cpu_batches": (1,), "min_run_time": 0.01, "rounds": 1, "gpu": False},
                          base_info={"model": "alexnet_w0.0625", "top1": 0.1}, progress=False,
                          calibration_images=64)
    got = {r["name"]: (r["method"] or "", "" if r["ranks"] is None else json.dumps(list(r["ranks"]) if isinstance(
        r["ranks"], (list, tuple)) else r["ranks"])) for r in st["records"]}
    want = {n: (m, r if m and r else "") for n, (m, r) in source_layers("alexnet_w0.0625").items()}
    assert {n: v for n, v in got.items() if v[0]} == {n: v for n, v in want.items() if v[0]}
    fits = {(r.get("info") or {}).get("fit") for r in st["records"] if r["method"]}
    assert fits == {"data-aware"}

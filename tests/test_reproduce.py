"""decomp.experiments.reproduce: the variant grid, the cached stages, the claim text and the outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import decomp.experiments.cifar10 as C
import decomp.experiments.cifar10_outputs as O
import decomp.experiments.profiles as P
import decomp.experiments.reproduce as R
from decomp.experiments.data import Split
from decomp.experiments.train import TrainConfig
from decomp.experiments.zoo import alexnet_cifar

REPO = Path(__file__).resolve().parents[1]


def test_variant_table_order_names_and_lr():
    table = R.variant_table((1 / 3, 1 / 6))
    names = [v.name for v in table]
    # origin heuristic first, then VBMF (no CP), then the aggressive fraction
    assert names[:4] == ["svd-fc@1-3", "cp-conv@1-3", "tucker2-conv@1-3", "tucker2+svd-all@1-3"]
    assert names[4:7] == ["svd-fc@vbmf", "tucker2-conv@vbmf", "tucker2+svd-all@vbmf"]
    # aggressive fractions: the whole-network family first, FC-only SVD last
    assert names[7:] == ["tucker2+svd-all@1-6", "tucker2-conv@1-6", "cp-conv@1-6", "svd-fc@1-6"]
    assert [v.name for v in R.variant_table((1 / 3, 1 / 6), vbmf=False, families=["svd-fc", "cp-conv"])] == [
        "svd-fc@1-3", "cp-conv@1-3", "cp-conv@1-6", "svd-fc@1-6"]
    assert {v.family: v.lr for v in table} == R.FINETUNE_LR
    assert table[2].method == {"conv": "tucker2"} and table[0].rank_label == "1/3"
    assert "cp-conv@vbmf" in [v.name for v in R.variant_table((1 / 3,), cp_vbmf=True)]
    assert [v.lr for v in R.variant_table((0.5,), vbmf=False, families=["svd-fc"], lr={"svd-fc": 0.1})] == [0.1]


def test_variant_table_rejects_unknown_family():
    with pytest.raises(ValueError, match="families must be among"):
        R.variant_table(families=["tucker3"])


def test_leave_out_first_conv_and_last_linear():
    assert R.leave_out(alexnet_cifar(width=1 / 16)) == {"features.0": None, "classifier.6": None}


def test_subset_is_seeded_and_sized():
    split = Split(torch.zeros(50, 3, 32, 32, dtype=torch.uint8), torch.arange(50) % 10)
    a, b = R.subset(split, 20, seed=1), R.subset(split, 20, seed=1)
    assert len(a) == 20 and torch.equal(a.labels, b.labels)
    assert R.subset(split, 0) is split


def _tiny_data(n=64):
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def test_run_variant_caches_every_stage(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    base = alexnet_cifar(width=1 / 16).eval()
    data = _tiny_data()
    kw = dict(train_data=data, test_data=data, cache=tmp_path, progress=False,
              finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01),
              timing={"cpu_batches": (1, 2), "min_run_time": 0.01, "rounds": 1, "gpu": False},
              base_info={"model": "tiny", "top1": 0.1})
    variant = R.Variant("tucker2+svd-all", 0.5, 0.01)
    row, st = R.run_variant(base, variant, **kw)
    folder = tmp_path / variant.name
    ft = folder / "ft-e1-n64-bs32-lr0.01"
    assert {p.name for p in folder.iterdir()} == {"decomposed.pt", "decomposed.json", ft.name}
    assert {p.name for p in ft.iterdir()} == {"finetune.pt", "result.json"}
    assert not st["cached"] and not st["decompose_cached"]
    assert row["model"] == "tiny" and row["ranks"] == "1/2" and row["macs_x"] > 1
    assert row["cpu_b1_speedup"] > 0 and row["delta_points"] == pytest.approx(100 * (row["top1_after"] - 0.1))

    def fail(*a, **k):
        raise AssertionError("decompose must not run again")

    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]  # noqa: E731
    first = shapes(st["model"])
    monkeypatch.setattr(R, "decompose", fail)
    again, st = R.run_variant(base, variant, **kw)           # everything cached
    assert st["cached"] and again == json.loads((ft / "result.json").read_text())
    assert shapes(st["model"]) == first != shapes(base)      # the architecture, for the joint timing
    joint = R.joint_cpu_b1(base, {"a": st["model"], "b": st["model"]}, rounds=2, min_run_time=0.02)
    assert set(joint) == {"a", "b"} and all(t["speedup"] > 0 and t["rel_iqr"] >= 0 for t in joint.values())
    base.to(memory_format=torch.channels_last)  # left so by training: still timed as asked, and copied
    joint_cl = R.joint_cpu_b1(base, {"a": st["model"]}, rounds=1, min_run_time=0.01, channels_last=True)
    assert joint_cl["a"]["speedup"] > 0 and joint_cl["a"]["baseline_ms"] > 0
    assert base.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    base.to(memory_format=torch.contiguous_format)
    (ft / "result.json").unlink()                              # only the timing reruns
    again, st = R.run_variant(base, variant, **kw)
    assert st["decompose_cached"] and st["finetune_cached"]
    assert again["top1_after"] == row["top1_after"] and again["top1_before"] == row["top1_before"]
    other = dict(kw, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.02))  # another FT setting:
    again, st = R.run_variant(base, variant, **other)          # decomposition reused, FT rerun
    assert st["decompose_cached"] and not st["finetune_cached"]
    assert (folder / "ft-e1-n64-bs32-lr0.02" / "result.json").is_file()


def _fake_summary():
    rows = [("baseline", "baseline", "", 0.0, 1.0, 1.0)]
    rows += [("cp-conv@1-3", "cp-conv", "1/3", -0.2, 2.4, 3.0),
             ("tucker2-conv@vbmf", "tucker2-conv", "vbmf", -0.8, 3.1, 4.0),
             ("tucker2+svd-all@1-6", "tucker2+svd-all", "1/6", -2.5, 4.5, 6.0),
             ("svd-fc@1-3", "svd-fc", "1/3", -5.0, 1.1, 1.1)]
    return pd.DataFrame([{
        "model": "m", "variant": v, "family": f, "ranks": k, "top1_base": 0.9,
        "top1_after": 0.9 + d / 100, "delta_points": d, "cpu_b1_speedup": s, "macs_x": x,
        "finetune_lr": None if f == "baseline" else R.FINETUNE_LR[f]} for v, f, k, d, s, x in rows])


def test_best_speedups_respects_the_drop():
    df = _fake_summary()
    assert R.best_speedups(df, 1.0).iloc[0]["variant"] == "tucker2-conv@vbmf"
    assert R.best_speedups(df, 3.0).iloc[0]["variant"] == "tucker2+svd-all@1-6"
    assert R.best_speedups(df, 0.1).empty


def test_claims_markdown_is_computed_from_the_table():
    text = R.claims_markdown(_fake_summary())
    assert "≤ 1 point(s) lost, CPU batch 1: best tucker2-conv@vbmf (x3.10 measured" in text
    assert "Verdict (CPU batch 1, ≤ 3 points lost): **reproduced**: x4.50." in text
    assert "best CP speedup without a drop x2.40" in text               # claim 2 reproduced
    assert "no CP variant is both as fast and as accurate as tucker2-conv@vbmf" in text
    assert "MACs x3.00, Δ -0.20 points" in text and "**not reproduced**" in text  # claim 4: 3 < 4.93
    assert f"cp-conv {R.FINETUNE_LR['cp-conv']:g}" in text
    df = _fake_summary()
    df["cpu_b1_cl_speedup"] = df["cpu_b1_speedup"] / 2  # the same batch in the other layout gets its own label
    text = R.claims_markdown(df)
    assert "Verdict (CPU batch 1, channels_last, ≤ 3 points lost): **reproduced**: x2.25." in text
    assert "Verdict (CPU batch 1, ≤ 3 points lost): **reproduced**: x4.50." in text


def test_plot_is_written(tmp_path):
    path = R.plot_accuracy_vs_speedup(_fake_summary(), tmp_path / "a.png")
    assert path.stat().st_size > 1000 and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_script_profiles_and_outputs_with_sidecars(tmp_path):
    prof, args = C.parse(["--profile", "cpu", "--epochs", "3", "--out", str(tmp_path)])
    assert prof.epochs == 3 and prof.name == "cpu" and args.cache == Path(".cache/decomp/cifar10/cpu")
    assert set(P.PROFILES) == {"smoke", "cpu", "cpu_e40", "cpu_w1", "gpu"} and P.PROFILES["gpu"].device == "cuda"
    df = _fake_summary()
    df["model"] = "m"
    layers = [{"model": "m", "variant": "cp-conv@1-3", "name": "features.3", "layer": "Conv2d",
               "method": "cp", "ranks": 4, "params_before": 10, "params_after": 5, "macs_before": 10,
               "macs_after": 5, "rel_error": 0.1, "skipped": None}]
    O.write_outputs(df.to_dict("records"), layers, [], replace_models(prof), args,
                    {"dataset": "fake", "sha256": "0" * 64}, {"total": 1.0},
                    [{"model": "m", "variant": "baseline+ft", "top1_base": 0.9, "top1_after": 0.91,
                      "delta_points": 1.0, "finetune_epochs": 2}])
    names = {p.name for p in tmp_path.iterdir()}
    assert "m: 90.00% -> 91.00% (+1.00 points) after 2 epoch(s)" in (tmp_path / "README.md").read_text()
    for f in ("summary.csv", "summary.md", "layers.csv", "layers.md", "README.md", "accuracy_vs_speedup.png",
              "control.csv"):
        assert f in names and f + ".json" in names
    side = json.loads((tmp_path / "summary.csv.json").read_text())
    assert side["data"]["sha256"] == "0" * 64 and side["profile"]["epochs"] == 3
    assert "**reproduced**" in (tmp_path / "README.md").read_text()


def replace_models(prof):
    from dataclasses import replace
    return replace(prof, models=(("m", 1.0),))


def test_run_variant_with_min_speedup_times_layers_and_keys_its_cache(tmp_path):
    torch.set_num_threads(1)
    base = alexnet_cifar(width=1 / 16).eval()
    data = _tiny_data()
    variant = R.Variant("tucker2-conv", 0.5, 0.01)
    row, st = R.run_variant(base, variant, train_data=data, test_data=data, cache=tmp_path,
                            progress=False, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01),
                            timing={"cpu_batches": (1,), "min_run_time": 0.02, "rounds": 1},
                            min_speedup=1e6)
    assert (tmp_path / variant.name / "speed1e+06" / "decomposed.json").is_file()
    assert row["speed_guard"] == 1e6 and row["macs_x"] == pytest.approx(1.0)  # nothing was fast enough
    timed = [r for r in st["records"] if r["info"].get("measured_speedup")]
    assert len(timed) == 4 and all("below min_speedup" in r["skipped"] for r in timed)


def test_layer_speedup_plot_is_written_only_with_timed_layers(tmp_path):
    layers = pd.DataFrame({"model": ["m"] * 3, "variant": ["a", "a", "b"], "name": ["c1", "c2", "c1"],
                           "measured_speedup": [1.5, 0.8, 2.0], "skipped": [None, "too slow", None]})
    path = R.plot_layer_speedups(layers, tmp_path / "l.png", min_speedup=1.1)
    assert path.stat().st_size > 1000 and [p.name for p in tmp_path.iterdir()] == ["l.png"]
    assert R.plot_layer_speedups(layers.assign(measured_speedup=None), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_run_variant_with_nothing_decomposed_skips_recalibration_and_fine_tuning(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    base = alexnet_cifar(width=1 / 16).eval()
    data = _tiny_data()
    for name in ("train", "recalibrate_batchnorm"):
        monkeypatch.setattr(R, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} must not run"))
    row, st = R.run_variant(base, R.Variant("tucker2-conv", 0.5, 0.01), train_data=data, test_data=data,
                            cache=tmp_path, progress=False, bn_batches=2, min_speedup=1e6,
                            finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01),
                            timing={"cpu_batches": (1,), "min_run_time": 0.02, "rounds": 1},
                            base_info={"top1": R._eval_top1(base, data, "cpu")})
    assert row["finetune_epochs"] == 0 and row["bn_recal_batches"] == 0
    assert row["top1_after"] == row["top1_before"] == row["top1_before_raw"] == row["top1_base"]
    assert row["delta_points"] == 0 and row["params_x"] == 1


def test_script_overrides_variants_fine_tuning_epochs_and_speed_guard(tmp_path):
    prof, _ = C.parse(["--profile", "cpu", "--variants", "tucker2+svd-all@vbmf,svd-fc@1-3",
                       "--ft-epochs", "8", "--min-speedup", "1.5"])
    assert prof.variants == ("tucker2+svd-all@vbmf", "svd-fc@1-3")
    assert prof.ft_epochs == 8 and prof.min_speedup == 1.5
    default, _ = C.parse(["--profile", "cpu"])
    assert default.variants == () and default.ft_epochs == P.PROFILES["cpu"].ft_epochs
    assert default.ft_distill == 0 and P.finetune_config(default, 0.04).distill == 0
    distilled, _ = C.parse(["--profile", "cpu", "--ft-distill", "0.9"])
    assert P.finetune_config(distilled, 0.04).distill == 0.9
    assert "distils from the baseline: 0.1 x" in O.distill_text(distilled) and not O.distill_text(default)
    assert P.PROFILES["cpu_e40"].amp_cpu and C.parse(["--profile", "cpu_e40"])[0].amp_cpu
    assert C.parse(["--profile", "cpu_e40", "--no-amp-cpu"])[0].amp_cpu is False
    assert C.parse(["--profile", "cpu", "--amp-cpu"])[0].amp_cpu is True


def test_calibration_images_override_keeps_the_profile_results_apart(capsys):
    prof, args = C.parse(["--profile", "cpu_w1", "--calibration-images", "8192"])
    assert prof.calibration_images == 8192 and prof.name == "cpu_w1"  # the committed baseline is the profile's
    assert args.out == Path("results/cifar10/cpu_w1-cal8192")
    same, args = C.parse(["--profile", "cpu_w1", "--calibration-images", str(P.PROFILES["cpu_w1"].calibration_images)])
    assert args.out == Path("results/cifar10/cpu_w1")
    assert C.parse(["--profile", "cpu_w1", "--calibration-images", "64", "--out", "x"])[1].out == Path("x")
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            C.parse(["--profile", "cpu_w1", "--calibration-images", bad])
        assert "--calibration-images" in capsys.readouterr().err


def test_run_variant_distils_from_the_baseline_into_its_own_cache(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    base = alexnet_cifar(width=1 / 16).eval()
    data = _tiny_data()
    teachers = []
    real_train = R.train

    def spy(*args, teacher=None, **kw):
        teachers.append(teacher)
        return real_train(*args, teacher=teacher, **kw)

    monkeypatch.setattr(R, "train", spy)
    kw = dict(train_data=data, test_data=data, cache=tmp_path, progress=False,
              timing={"cpu_batches": (1,), "min_run_time": 0.01, "rounds": 1, "gpu": False},
              base_info={"model": "tiny", "top1": 0.1})
    variant = R.Variant("tucker2-conv", 0.5, 0.01)
    plain, _ = R.run_variant(base, variant, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01), **kw)
    kd, st = R.run_variant(base, variant, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01, distill=0.9), **kw)
    assert teachers == [None, base] and base.training is False  # the baseline, left in eval mode
    assert st["decompose_cached"] and not st["finetune_cached"]
    assert plain["finetune_distill"] == 0 and kd["finetune_distill"] == 0.9
    assert (tmp_path / variant.name / "ft-e1-n64-bs32-lr0.01-kd0.9-T4" / "result.json").is_file()


def test_control_fine_tunes_the_undecomposed_baseline_alike(tmp_path):
    torch.set_num_threads(1)
    base = alexnet_cifar(width=1 / 16).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    data = _tiny_data()
    prof = replace_models(C.parse(["--profile", "cpu", "--ft-epochs", "1", "--ft-distill", "0.5",
                                   "--ft-control"])[0])
    assert prof.ft_control
    info = {"model": "m", "top1": 0.5, "model_config": {"name": "alexnet"}}
    from dataclasses import replace
    prof = replace(prof, ft_batch_size=32)
    row = C.finetune_control(base, info, prof, data, data, tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # a copy was trained
    assert row["variant"] == "baseline+ft" and row["finetune_epochs"] == 1 and row["finetune_lr"] == P.CONTROL_LR
    assert row["delta_points"] == pytest.approx(100 * (row["top1_after"] - 0.5)) and not row["cached"]
    key = "ft-e1-n64-bs32-lr0.04-kd0.5-T4"  # the variants' distillation, from the frozen baseline
    assert (tmp_path / "baseline+ft" / key / "finetune.pt").is_file() and row["finetune_distill"] == 0.5
    assert C.finetune_control(base, info, prof, data, data, tmp_path, progress=False)["cached"]
    text = O.control_text([row])
    assert "m: 50.00% ->" in text and "after 1 epoch(s)" in text and O.control_text([]) == ""
    assert "distilling from the frozen baseline at alpha 0.5" in text
    plain = C.finetune_control(base, info, replace(prof, ft_distill=0.0), data, data, tmp_path, progress=False)
    assert (tmp_path / "baseline+ft" / "ft-e1-n64-bs32-lr0.04" / "finetune.pt").is_file()
    assert plain["finetune_distill"] == 0 and "no distillation" in O.control_text([plain])


def test_script_models_override_is_checked():
    prof, _ = C.parse(["--profile", "gpu", "--models", "vgg16_bn:1"])
    assert prof.models == (("vgg16_bn", 1.0),)
    assert C.parse(["--profile", "cpu", "--models", "vgg16_bn:0.5,alexnet"])[0].models == (
        ("vgg16_bn", 0.5), ("alexnet", 1.0))
    for bad in ("resnet:1", "vgg16_bn:wide", "vgg16_bn:0", ","):
        with pytest.raises(SystemExit):
            C.parse(["--profile", "cpu", "--models", bad])


def test_committed_baseline_is_written_once_and_read_on_a_machine_without_the_cache(tmp_path, monkeypatch):
    from dataclasses import replace

    from decomp.experiments.data import load_cifar10
    from decomp.experiments.zoo import ModelConfig

    monkeypatch.setattr(C, "RESULTS", tmp_path / "results")
    prof = replace(P.PROFILES["smoke"], name="tiny", epochs=1, commit_baseline=True)
    data = load_cifar10(None)
    data = type(data)(R.subset(data.train, 512), R.subset(data.test, 200), data.description)
    mcfg = ModelConfig(name="vgg16_bn", width=1 / 16)
    model, res, _ = C.train_baseline(mcfg, prof, data, tmp_path / "cache", progress=False)
    committed = C.committed_baseline(prof, mcfg)
    assert committed.is_file() and committed.with_name(committed.name + ".json").is_file()
    state = torch.load(committed, weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in state.values() if v.is_floating_point())
    # a new machine: no cache, the committed weights (rounded to bf16) instead of training
    again, res2, _ = C.train_baseline(mcfg, prof, data, tmp_path / "other-cache", progress=False)
    assert res2.skipped and res2.history == [] and not (tmp_path / "other-cache").exists()
    assert abs(res2.test["accuracy"] - res.test["accuracy"]) <= 0.02


def test_decompose_variant_is_the_stage_run_variant_fine_tunes(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    base = alexnet_cifar(width=1 / 16).eval()
    data = _tiny_data()
    variant = R.Variant("tucker2+svd-all", 0.5, 0.01)
    model, dec, cached = R.decompose_variant(base, variant, tmp_path, train_data=data, test_data=data,
                                             bn_batches=1, progress=False)
    assert not cached and dec["bn_batches"] == 1 and 0 <= dec["top1_before_raw"] <= 1
    assert (tmp_path / variant.name / "bn1" / "decomposed.json").is_file()
    info = {"top1": 0.5, "params": R.count_params(base), "macs": R.count_macs(base, (1, 3, 32, 32))}
    row = R.before_row("tiny", info, variant, dec)
    assert row["delta_raw_points"] == pytest.approx(100 * (dec["top1_before_raw"] - 0.5))
    assert row["delta_recal_points"] == pytest.approx(100 * (dec["top1_before"] - 0.5))
    assert row["macs_x"] > 1 and row["fit"] == "data-free" and row["ranks"] == "1/2"

    def fail(*a, **k):
        raise AssertionError("decompose must not run again")

    monkeypatch.setattr(R, "decompose", fail)  # the later full run fine-tunes this very decomposition
    again, dec2, cached = R.decompose_variant(base, variant, tmp_path, train_data=data, test_data=data,
                                              bn_batches=1, progress=False)
    assert cached and dec2 == dec
    row, st = R.run_variant(base, variant, train_data=data, test_data=data, cache=tmp_path, bn_batches=1,
                            finetune=TrainConfig(epochs=1, batch_size=32, lr=0.01), progress=False,
                            timing={"cpu_batches": (1,), "min_run_time": 0.01, "rounds": 1, "gpu": False},
                            base_info={"model": "tiny", "top1": 0.5})
    assert st["decompose_cached"] and row["top1_before_raw"] == dec["top1_before_raw"]


def test_decompose_only_writes_the_before_table_and_stops_before_fine_tuning(tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    fast_joint = R.joint_cpu_b1
    monkeypatch.setattr(C, "joint_cpu_b1", lambda *a, **k: fast_joint(*a, **{**k, "rounds": 1, "min_run_time": 0.01}))

    def no_fine_tuning(*a, **k):
        raise AssertionError("--decompose-only trains the baseline only")

    monkeypatch.setattr(R, "train", no_fine_tuning)
    argv = ["--profile", "smoke", "--models", "alexnet:0.0625", "--epochs", "1", "--no-progress",
            "--variants", "tucker2+svd-all@1-3", "--decompose-only", "--out", str(out), "--cache", str(cache)]
    C.main(argv)
    df = pd.read_csv(out / "before.csv")
    assert list(df["variant"]) == ["tucker2+svd-all@1-3"] and df["cpu_b1_speedup"].iloc[0] > 0
    assert df["delta_raw_points"].iloc[0] == pytest.approx(100 * (df["top1_before_raw"] - df["top1_base"]).iloc[0])
    assert {p.name for p in out.iterdir()} == {"before.csv", "before.csv.json", "before.md", "before.md.json"}
    side = json.loads((out / "before.csv.json").read_text())
    assert "no fine-tuning" in side["what"] and side["profile"]["name"] == "smoke"
    assert "| tucker2+svd-all@1-3 |" in (out / "before.md").read_text()
    assert not list(cache.rglob("finetune.pt")) and list(cache.rglob("decomposed.pt"))
    with pytest.raises(SystemExit):
        C.parse(["--decompose-only", "--baseline-only"])


def test_a_committed_baseline_of_another_recipe_is_refused(tmp_path):
    from decomp.experiments.runinfo import write_sidecar
    from decomp.experiments.usage import UsageError
    from decomp.experiments.zoo import ModelConfig

    mcfg = ModelConfig(name="vgg16_bn", width=0.5)
    path = tmp_path / "baseline.pt"
    path.write_bytes(b"")
    tcfg = TrainConfig(epochs=40, batch_size=512, lr=0.4, amp_cpu=True, channels_last=True)
    write_sidecar(path, extra={"train_config": {**vars(tcfg)}, "model_config": mcfg.to_dict()})
    C.check_committed_baseline(path, TrainConfig(epochs=40, batch_size=512, lr=0.4), mcfg)  # float32 alike: fine
    with pytest.raises(UsageError, match=r"epochs: committed 40 != this run's 10"):
        C.check_committed_baseline(path, TrainConfig(epochs=10, batch_size=512, lr=0.4), mcfg)
    with pytest.raises(UsageError, match=r"model width: committed 0.5 != this run's 1.0"):
        C.check_committed_baseline(path, tcfg, ModelConfig(name="vgg16_bn", width=1.0))
    path.with_name(path.name + ".json").unlink()
    with pytest.raises(UsageError, match="cannot be checked"):
        C.check_committed_baseline(path, tcfg, mcfg)
    # the committed cpu_e40 baseline passes its own profile's recipe
    committed = C.committed_baseline(P.PROFILES["cpu_e40"], mcfg)
    prof = P.PROFILES["cpu_e40"]
    C.check_committed_baseline(committed, TrainConfig(epochs=prof.epochs, batch_size=prof.batch_size, lr=prof.lr,
                                                      seed=prof.seed), mcfg)

"""The scripts and the harness commands refuse a bad argument before any work (issue 11, item 7):
one line naming the flag, exit code 2, and no model built, no data read, nothing written."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _refused(capsys, main, argv, says: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument" in last and says in last


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("")
    return path


def test_demo_checks_rank_input_size_and_out_before_building_the_model(capsys, tmp_path, a_file, monkeypatch):
    demo = _script("demo")
    monkeypatch.setitem(demo.MODELS, "vgg16", lambda: pytest.fail("a model was built"))
    _refused(capsys, demo.main, ["--rank", "0"], "argument --rank: Fraction value must be a number in (0, 1]")
    _refused(capsys, demo.main, ["--input-size", "0"], "argument --input-size: 0; allowed: an int >= 1")
    _refused(capsys, demo.main, ["--out", str(tmp_path)], f"argument --out: {tmp_path} is a folder")
    _refused(capsys, demo.main, ["--out", str(a_file / "x.md")], "which is a file")


def test_budget_check_checks_factors_and_out_first(capsys, a_file, monkeypatch):
    from decomp.experiments import budget_check

    monkeypatch.setattr(budget_check, "check_macs", lambda *a: pytest.fail("work started"))
    _refused(capsys, budget_check.main, ["--macs", "0.5"], "argument --macs: 0.5: MACs factor must be a number > 1")
    _refused(capsys, budget_check.main, ["--latency", "1"], "argument --latency: 1: Latency factor must be")
    _refused(capsys, budget_check.main, ["--seconds", "0"], "argument --seconds: 0; allowed: seconds > 0")
    _refused(capsys, budget_check.main, ["--out", str(a_file)], f"argument --out: {a_file} is a file")


def test_make_cifar10_subset_checks_counts_and_out_before_reading_the_archive(capsys, tmp_path, a_file, monkeypatch):
    subset = _script("make_cifar10_subset")
    monkeypatch.setattr(subset, "read_members", lambda *a: pytest.fail("the archive was read"))
    _refused(capsys, subset.main, ["--source", str(tmp_path / "none.tar.gz")], "argument --source:")
    _refused(capsys, subset.main, ["--source", str(a_file), "--test-per-class", "0"],
             "argument --test-per-class: 0; allowed: an int >= 1")
    _refused(capsys, subset.main, ["--source", str(a_file), "--out", str(tmp_path)], "argument --out:")


def test_train_baseline_checks_out_and_device_before_reading_data(capsys, a_file, monkeypatch):
    train = _script("train_baseline")
    monkeypatch.setattr(train, "load_cifar10", lambda *a: pytest.fail("the data was read"))
    _refused(capsys, train.main, ["--out", str(a_file), "--device", "cpu"], f"argument --out: {a_file} is a file")
    _refused(capsys, train.main, ["--threads", "-1", "--device", "cpu"], "argument --threads / --time-steps")
    if not train.torch.cuda.is_available():
        _refused(capsys, train.main, ["--device", "cuda"], "argument --device: cuda: CUDA is not available")


def test_the_sweep_checks_out_first(capsys, a_file):
    from decomp.experiments.sweep import parse_args

    _refused(capsys, parse_args, ["--out", str(a_file)], f"argument --out: {a_file} is a file")


def test_the_compat_table_checks_every_argument_first(capsys, a_file):
    from decomp.experiments.compat import parse_args

    _refused(capsys, parse_args, ["--models", "resnet_18"], "argument --models / --defer: ['resnet_18'] are not torchvision")
    _refused(capsys, parse_args, ["--methods", "svd2"], "argument --methods: ['svd2']; allowed")
    _refused(capsys, parse_args, ["--rank", "2"], "argument --rank: 2.0; allowed: a fraction in (0, 1]")
    _refused(capsys, parse_args, ["--families", "detection"], "argument --families: ['detection']")
    _refused(capsys, parse_args, ["--out", str(a_file)], f"argument --out: {a_file} is a file")


def test_make_tiny_imagefolder_checks_size_and_out_first(capsys, a_file, monkeypatch):
    tiny = _script("make_tiny_imagefolder")
    monkeypatch.setattr(tiny, "make_tiny_imagefolder", lambda *a, **k: pytest.fail("work started"))
    _refused(capsys, tiny.main, ["--out", str(a_file.parent / "t"), "--size", "0"], "argument --size: 0; allowed: an int >= 1")
    _refused(capsys, tiny.main, ["--out", str(a_file)], f"argument --out: {a_file} is a file")


def test_measure_scaling_checks_the_batch_and_out_before_any_run(capsys, a_file, monkeypatch):
    from decomp.experiments import scaling

    monkeypatch.setattr(scaling, "measure", lambda *a, **k: pytest.fail("a run started"))
    _refused(capsys, scaling.main, ["--batch-size", "3"], "argument --batch-size: 3; allowed: an even number")
    _refused(capsys, scaling.main, ["--epochs", "0"], "argument --epochs: 0; allowed: an int >= 1")
    _refused(capsys, scaling.main, ["--out", str(a_file)], f"argument --out: {a_file} is a file")


def test_time_calibration_checks_images_and_threads_before_reading_data(capsys, monkeypatch):
    timing = _script("time_calibration")
    from decomp.experiments import calibration_time
    monkeypatch.setattr(calibration_time, "load_cifar10", lambda *a, **k: pytest.fail("data was read"))
    _refused(capsys, timing.main, ["--data", "x", "--images", "0,1024"],
             "argument --images: '0,1024'; allowed: comma-separated integers >= 1")
    _refused(capsys, timing.main, ["--data", "x", "--images", "many"], "argument --images: 'many'")
    _refused(capsys, timing.main, ["--data", "x", "--threads", "0"], "argument --threads: '0'; allowed: an int >= 1")


def test_layer_sensitivity_checks_its_arguments_before_reading_data(capsys, monkeypatch):
    script = _script("layer_sensitivity")
    from decomp.experiments import layer_sensitivity
    monkeypatch.setattr(layer_sensitivity, "load_cifar10", lambda *a, **k: pytest.fail("data was read"))
    _refused(capsys, script.main, ["--data", "x", "--rank", "3"], "argument --rank: '3'; allowed: a fraction")
    _refused(capsys, script.main, ["--data", "x", "--rank", "1/0"], "argument --rank: '1/0'")
    _refused(capsys, script.main, ["--data", "x", "--images", "0"], "argument --images: '0'; allowed: an int >= 1")
    _refused(capsys, script.main, ["--data", "x", "--refine-steps", "-1"], "argument --refine-steps: '-1'")
    _refused(capsys, script.main, ["--data", "x", "--refine-above", "nan"], "argument --refine-above: 'nan'")

"""``decomp bench``: the per-layer sweep of decomp.experiments.sweep, with its arguments checked first."""

import pandas as pd
import pytest
from _cli_helpers import run_cli

QUICK = ["--models", "alexnet", "--layers", "alexnet.classifier.6", "--min-run-time", "0.01", "--rounds", "1",
         "--min-runs", "1", "--breakdown", "none", "--no-channels-last"]


def test_one_layer_sweep_writes_its_tables_and_sidecars(capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "bench", *QUICK, "--out", tmp_path)
    assert code == 0, err
    stem = tmp_path / "alexnet_cpu_b1_t1"
    for suffix in (".csv", ".md", ".png"):
        assert stem.with_suffix(suffix).is_file() and (tmp_path / f"{stem.name}{suffix}.json").is_file()
        assert str(stem.with_suffix(suffix)) in stdout
    df = pd.read_csv(stem.with_suffix(".csv"))
    assert list(df.method) == ["original", "svd", "svd", "svd", "svd"]  # the original and 4 fractions
    assert (df.layer == "classifier.6").all() and (df.speedup > 0).all()


@pytest.mark.parametrize("argument, value", [("--models", "resnet50"), ("--layers", "alexnet.features.99"),
                                             ("--clock", "sundial"), ("--breakdown", "some"), ("--batch", "0"),
                                             ("--min-run-time", "0")])
def test_bad_argument_is_one_line_exit_2(capsys, tmp_path, argument, value):
    argv = ["bench", *QUICK, "--out", tmp_path / "never", argument, value]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"decomp bench: error: argument {argument}: ") and value in lines[0]
    assert not (tmp_path / "never").exists()


def test_help_names_the_subcommand(capsys):
    code, stdout, _ = run_cli(capsys, "bench", "--help")
    assert code == 0 and stdout.startswith("usage: decomp bench") and "--min-run-time" in stdout

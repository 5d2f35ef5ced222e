"""``decomp reproduce``: the arguments go to decomp.experiments.cifar10.main as they are."""

import pytest

import decomp.experiments.cifar10 as cifar10
from _cli_helpers import run_cli


def test_arguments_are_forwarded_with_the_command_name(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(cifar10, "main", lambda argv, prog: calls.append((argv, prog)))
    code, _, _ = run_cli(capsys, "reproduce", "--profile", "smoke", "--no-progress")
    assert code == 0 and calls == [(["--profile", "smoke", "--no-progress"], "decomp reproduce")]


def test_help_and_bad_arguments_come_from_the_reproduction_parser(capsys):
    code, stdout, _ = run_cli(capsys, "reproduce", "--help")
    assert code == 0 and stdout.startswith("usage: decomp reproduce") and "--profile" in stdout
    code, _, err = run_cli(capsys, "reproduce", "--profile", "nope")
    assert code == 2 and err.strip().splitlines()[-1].startswith("decomp reproduce: error: argument --profile")
    assert "'nope'" in err


def one_line_error(err: str, argument: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"decomp reproduce: error: argument {argument}: "), lines[0]
    return lines[0]


def test_bad_argument_is_one_line_without_the_usage_block(capsys):
    code, _, err = run_cli(capsys, "reproduce", "--profile", "smoke", "--epochs", "many")
    assert code == 2 and "'many'" in one_line_error(err, "--epochs")


def test_unknown_variant_is_an_argument_error_before_any_work(capsys, monkeypatch):
    monkeypatch.setattr(cifar10, "load_cifar10", lambda *a, **k: pytest.fail("the data was loaded"))
    code, _, err = run_cli(capsys, "reproduce", "--profile", "smoke", "--variants", "no-such-variant", "--no-progress")
    line = one_line_error(err, "--variants")
    assert code == 2 and "no-such-variant" in line and "not in the grid of profile 'smoke'" in line
    assert "choose from" in line


def test_missing_full_data_is_an_argument_error_naming_data(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cifar10, "SHARED_JPEG", tmp_path / "absent.tar.gz")
    monkeypatch.setattr(cifar10, "load_cifar10", lambda *a, **k: pytest.fail("the data was loaded"))
    code, _, err = run_cli(capsys, "reproduce", "--profile", "cpu", "--no-progress")
    line = one_line_error(err, "--data")
    assert code == 2 and "--profile cpu needs full CIFAR-10" in line and "absent.tar.gz" in line


def test_helpers_raise_a_usage_error(tmp_path, monkeypatch):
    prof, _ = cifar10.parse(["--profile", "smoke", "--variants", "nope"])
    with pytest.raises(cifar10.UsageError, match="^argument --variants: nope"):
        cifar10.select_variants(prof)
    monkeypatch.setattr(cifar10, "SHARED_JPEG", tmp_path / "absent.tar.gz")
    prof, _ = cifar10.parse(["--profile", "cpu"])
    with pytest.raises(cifar10.UsageError, match="^argument --data: "):
        cifar10.data_path(prof, None)
    assert cifar10.data_path(prof, "embedded") is None and cifar10.data_path(prof, "x/y") == "x/y"

"""``decomp reproduce``: the arguments go to decomp.experiments.cifar10.main as they are."""

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

import argparse
from dataclasses import dataclass

import pytest

from decomp.cli._config import ArgumentParser, add_config_arguments, config_values


@dataclass(frozen=True)
class Config:
    sizes: tuple = (64, 128)   # channels
    models: tuple = ()         # names
    lr: float = 0.1            # learning rate
    fast: bool = False
    out: str = "results"


def parse(argv):
    parser = add_config_arguments(argparse.ArgumentParser(), Config)
    return Config(**config_values(parser.parse_args(argv), Config))


def test_defaults_come_from_the_dataclass():
    assert parse([]) == Config()


def test_flags_are_typed_and_tuples_stay_tuples():
    cfg = parse(["--sizes", "8", "16", "32", "--models", "vgg16", "--lr", "0.5", "--fast", "--out", "x"])
    assert cfg == Config(sizes=(8, 16, 32), models=("vgg16",), lr=0.5, fast=True, out="x")
    assert parse(["--no-fast"]).fast is False


def test_argument_parser_errors_are_one_line_with_exit_2(capsys):
    parser = ArgumentParser(prog="decomp x")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--n", "two"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "decomp x: error: argument --n: invalid int value: 'two'\n"

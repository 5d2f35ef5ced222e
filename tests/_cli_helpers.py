"""Helpers of the CLI tests: small models, importable as ``--model _cli_helpers:NAME`` (pytest puts
tests/ on sys.path; subprocesses get it through PYTHONPATH), and an in-process runner.

``tiny_net`` has every kind of layer ``decompose`` meets: a kxk conv, a 1x1 conv, a Linear, a
grouped conv (always skipped, with a reason) and a BatchNorm (never touched), at a 16x16 input.
"""

import torch
from torch import nn

from decomp.cli import main

INPUT_SHAPE = "1,3,16,16"
TINY = "_cli_helpers:tiny_net"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``decomp ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: bad arguments (2), --help (0)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def tiny_net() -> nn.Module:
    with torch.random.fork_rng():  # the same weights every call, the caller's RNG untouched
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
            nn.Conv2d(32, 32, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10),
        ).eval()


def nan_net() -> nn.Module:
    """A model whose second conv holds a NaN: decompose refuses it mid-work."""
    model = tiny_net()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    return model


def not_a_module():
    return 42


def broken():
    raise RuntimeError("the factory failed\non two lines")

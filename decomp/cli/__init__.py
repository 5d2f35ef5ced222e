"""The ``decomp`` command: one subcommand per module of this package.

    decomp decompose --model torchvision:alexnet --weights w.pt --method tucker2 --rank 1/3 --out out/
    decomp report out/
    decomp bench --models alexnet            # the per-layer latency sweep (decomp.experiments.sweep)
    decomp reproduce --profile smoke         # the CIFAR-10 reproduction (decomp.experiments.cifar10)

Every argument is checked before any work starts; a bad one is a single line naming it, its
value and what is allowed, with exit code 2 (argparse's convention). The CLI may import the
experiment harness; the library (the modules directly under ``decomp/``) never imports the CLI.
"""

from __future__ import annotations

import sys

from decomp import __version__

from . import bench, decompose, report, reproduce
from ._config import ArgumentParser

__all__ = ["main", "build_parser"]

# bench and reproduce hand their arguments on untouched: the harness's own parsers (shared with
# scripts/sweep_layers.py and scripts/reproduce_cifar10.py) define their options and --help once.
FORWARDED = {"bench": bench, "reproduce": reproduce}
OWN = {"decompose": decompose, "report": report}
DESCRIPTION = ("Low-rank decompositions of CNNs: decompose a model (decomp decompose), print a saved "
               "report (decomp report), time layers (decomp bench), reproduce the CIFAR-10 runs (decomp reproduce).")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="decomp", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"decomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in OWN.items():
        module.add_parser(sub, name)
    for name, module in FORWARDED.items():
        # Listed for `decomp --help`; their arguments never reach this parser (see main).
        sub.add_parser(name, help=module.HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``decomp`` with ``argv`` (default: the process's arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return FORWARDED[argv[0]].main(argv[1:], prog=f"decomp {argv[0]}")
    args = build_parser().parse_args(argv)
    args.command_line = ["decomp", *argv]  # recorded in what the command writes
    return args.run(args)

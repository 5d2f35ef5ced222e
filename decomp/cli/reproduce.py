"""``decomp reproduce``: the CIFAR-10 reproduction, :func:`decomp.experiments.cifar10.main`."""

from __future__ import annotations

HELP = "reproduce the CIFAR-10 speedup / accuracy runs (decomp reproduce --help)"


def main(argv: list[str], prog: str) -> int:
    from decomp.experiments.cifar10 import main as reproduce  # the harness: loaded only when asked for

    reproduce(argv, prog=prog)
    return 0

"""``decomp bench``: the per-layer latency sweep, :func:`decomp.experiments.sweep.main`."""

from __future__ import annotations

HELP = "time every layer of VGG16 / AlexNet, original vs decomposed (decomp bench --help)"


def main(argv: list[str], prog: str) -> int:
    from decomp.experiments.sweep import main as sweep  # pandas and the harness: only when asked for

    sweep(argv, prog=prog)
    return 0

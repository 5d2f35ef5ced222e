"""Reproduce the x2-x4 speedup / accuracy claims on CIFAR-10 (the same as ``decomp reproduce``).

    .venv/bin/python scripts/reproduce_cifar10.py --profile smoke   # ~1-2 min, no data needed
    .venv/bin/python scripts/reproduce_cifar10.py --profile cpu_e40 # full CIFAR-10 on 2 cores

The pipeline is :mod:`decomp.experiments.cifar10`; this file only keeps the command that the
committed results' sidecars name.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.cifar10 import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/reproduce_cifar10.py")

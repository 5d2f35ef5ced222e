"""Throughput of data-parallel fine-tuning with 1 and 2 processes on the CPU (writes results/scaling/).

    .venv/bin/python scripts/measure_scaling.py    # ~2 minutes on 2 cores

The measurement is :mod:`decomp.experiments.scaling`; each setting is a fresh torchrun.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.scaling import main  # noqa: E402

if __name__ == "__main__":
    main()

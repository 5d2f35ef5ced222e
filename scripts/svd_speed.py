"""Truncated SVD of an fc6-sized layer, randomized (defaults) against exact and torch.svd_lowrank.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/svd_speed.py           # results/svd/
    .venv/bin/python scripts/svd_speed.py --quick                            # smoke test

The measurement is :mod:`decomp.experiments.svd_speed`; this file keeps the command that the
committed results' sidecars name.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see scripts/cp_speed.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.svd_speed import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/svd_speed.py")

"""CP-ALS exact-rank recovery over random kernels of known CP rank (results/cp_als/recovery.*).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/cp_recovery.py          # results/cp_als/
    .venv/bin/python scripts/cp_recovery.py --quick                           # smoke test

The experiment is :mod:`decomp.experiments.cp_recovery`; this file keeps the command that the
committed results' sidecars name.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see scripts/cp_speed.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.cp_recovery import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/cp_recovery.py")

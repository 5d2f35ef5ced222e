"""CP layers' spatial forms, separable vs merged, on every VGG16 3x3 conv (results/layers/vgg16_cp_spatial_*).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/cp_spatial.py           # results/layers/
    .venv/bin/python scripts/cp_spatial.py --quick                            # smoke test

The measurement is :mod:`decomp.experiments.cp_spatial`; this file keeps the command that the
committed results' sidecars name.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see scripts/cp_speed.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.cp_spatial import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/cp_spatial.py")

"""Wall time and raw top-1 of data-aware decomposition on the committed CIFAR VGG16-BN baseline
(writes results/calibration/).

    .venv/bin/python scripts/time_calibration.py --data ../shared/data/cifar10-jpeg.tar.gz   # ~10 min on 2 cores

The measurement is :mod:`decomp.experiments.calibration_time`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.calibration_time import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Re-time a committed CIFAR-10 run's decomposed architectures on this machine (NCHW and
channels_last, CPU batch 1), without data or training; writes RUN/retime/<cpu>.{csv,md}.

    .venv/bin/python scripts/retime_cifar10.py results/cifar10/cpu_e40   # ~1 min on 2 cores

The measurement is :mod:`decomp.experiments.retime`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.retime import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

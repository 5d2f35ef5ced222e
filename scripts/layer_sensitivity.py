"""What each layer of the committed CIFAR VGG16-BN baseline costs alone at one rank: data-free,
data-aware, and data-aware then trained against the logits (writes results/calibration/).

    .venv/bin/python scripts/layer_sensitivity.py --data ../shared/data/cifar10-jpeg.tar.gz   # ~30 min on 2 cores

The measurement is :mod:`decomp.experiments.layer_sensitivity`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.layer_sensitivity import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

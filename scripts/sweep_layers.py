"""Per-layer sweep: measured speedup of each decomposition next to its MAC reduction (``decomp bench``).

    .venv/bin/python scripts/sweep_layers.py                # VGG16 + AlexNet, batch 1, CPU
    .venv/bin/python scripts/sweep_layers.py --models vgg16 --layers vgg16.features.28 --min-run-time 0.05

The sweep is :mod:`decomp.experiments.sweep`; this file only keeps the command that the
committed results' sidecars name.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.sweep import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/sweep_layers.py")

"""Compatibility table: every torchvision classification and segmentation model through every
method of decomp.decompose, and whether what comes back runs (results/compat/).

    .venv/bin/python scripts/compat_table.py                         # all models, resumes a partial table
    .venv/bin/python scripts/compat_table.py --models resnet18 --out /tmp/compat

The generator is :mod:`decomp.experiments.compat`; this file only keeps the command that the
committed table's sidecars name.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.compat import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(prog="python scripts/compat_table.py"))

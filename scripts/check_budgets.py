"""Check decomp.MACs / decomp.Latency against what they promise (results/budget/).

    .venv/bin/python scripts/check_budgets.py --out results/budget

The logic is :mod:`decomp.experiments.budget_check`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.budget_check import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/check_budgets.py")

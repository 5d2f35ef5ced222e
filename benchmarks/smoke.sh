#!/usr/bin/env bash
# CI smoke for the benchmark suites (< 2 min on 2 cores): the asv suites import and their
# parameter grids are valid, and the pytest-benchmark suite runs once per case on two layers
# without timing. Uses the interpreter on PATH (or $PYTHON), which must have decomp installed
# (`pip install -e .[bench]`, the tox envs, or PYTHONPATH for pytest).
#   bash benchmarks/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DECOMP_BENCH_THREADS="${DECOMP_BENCH_THREADS:-1}"

# asv check imports every suite and validates params/setup signatures. --python=same uses this
# interpreter (no virtualenv build); asv needs a machine file, written non-interactively.
"$PYTHON" -m asv machine --yes >/dev/null
"$PYTHON" -m asv check --python=same

# pytest-benchmark suite, benchmarks disabled: each case of two small layers runs once.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pytest benchmarks/pytest -q \
    -p no:cacheprovider --benchmark-disable \
    -k "alexnet.features.0 or alexnet.classifier.6"

#!/usr/bin/env bash
# The asv timing history committed in results/asv/ (benchmarks/README.md, "asv timing history").
# Run from the repository root with the project's interpreter (asv, torch) first on PATH.
#
#   bash benchmarks/asv_history/run.sh            # this project's machine, the committed settings
#   ASV_HISTORY_MACHINE=mybox bash benchmarks/asv_history/run.sh   # yours: `asv machine` first
#
# The machine's name and description come from benchmarks/asv_history/machine.json (written
# into ~/.asv-machine.json by `asv machine`, so nothing depends on this machine's hostname or
# paths); with ASV_HISTORY_MACHINE set, the entry you made with `asv machine --machine NAME` is
# used as it is. Extra arguments go to `asv run` (e.g. --quick, or a commit range instead).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benchmarks/asv_history

if [ -z "${ASV_HISTORY_MACHINE:-}" ]; then
    # One `asv machine` call from the committed description.
    eval "$(python - <<'PY'
import json, shlex
m = json.load(open("benchmarks/asv_history/machine.json"))
args = ["asv", "machine", "--yes"] + [a for k in ("machine", "os", "arch", "cpu", "num_cpu", "ram")
                                      for a in (f"--{k}", str(m[k]))]
print(" ".join(shlex.quote(a) for a in args))
PY
)"
    machine=$(python -c 'import json; print(json.load(open("benchmarks/asv_history/machine.json"))["machine"])')
else
    machine=$ASV_HISTORY_MACHINE
fi

# What is timed (about 3-4 minutes of CPU per commit on the 2-core EPYC; see the README):
#  - ForwardCPU: batch 1, NCHW, each representative layer's original and its decompositions
#    at rank 1/4 (16 cases);
#  - Decompose: the rank-1/4 decompositions (Tucker-2, CP at the library's defaults, SVD);
#  - CPALS.time_cp: 64-256 channels, both rank divisors, ours and tensorly's (12 cases).
# -a processes=1: one process per benchmark instead of asv's 2 (halves the time; asv's
# repeat still takes several samples inside it).
filter=(
    -b "ForwardCPU\.time_forward\('[^']*:(original|[a-z0-9]+:1/4)', 1, 'nchw'\)"
    -b "Decompose\.time_decompose\('[^']*:1/4'\)"
    -b "CPALS\.time_cp\((64|128|256), "
)
start=$SECONDS
OMP_NUM_THREADS=1 asv run "HASHFILE:$here/commits.txt" --machine "$machine" "${filter[@]}" \
    -a processes=1 --skip-existing-successful --show-stderr "$@"
asv publish
# results/asv/results.json: command, git sha, versions, hardware, the commits, this run's wall time
python "$here/sidecar.py" --wall-s $((SECONDS - start)) -- "$@"

"""Write results/asv/results.json, the sidecar of the asv history (benchmarks/asv_history/run.sh).

    python benchmarks/asv_history/sidecar.py --wall-s SECONDS [asv run arguments ...]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from decomp.experiments.runinfo import write_sidecar  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--wall-s", type=float, required=True)
    p.add_argument("asv_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    extra_args = args.asv_args[1:] if args.asv_args[:1] == ["--"] else args.asv_args
    here = ROOT / "benchmarks" / "asv_history"
    machine = json.loads((here / "machine.json").read_text())
    commits = (here / "commits.txt").read_text().split()
    runs = sorted(p.name.split("-")[0] for p in (ROOT / "results" / "asv" / "results").glob("*/*.json")
                  if p.name != "machine.json")
    asv_version = subprocess.run(["asv", "--version"], capture_output=True, text=True).stdout.strip()
    write_sidecar(ROOT / "results" / "asv" / "results",
                  command="bash benchmarks/asv_history/run.sh",
                  extra={"asv": asv_version, "asv_run_extra_args": extra_args, "machine": machine,
                         "commits": commits, "result_files_per_commit": runs,
                         "wall_s_last_run": args.wall_s})
    return 0


if __name__ == "__main__":
    sys.exit(main())

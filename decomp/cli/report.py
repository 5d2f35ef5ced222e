"""``decomp report DIR``: print the per-layer report that ``decomp decompose --out DIR`` saved."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

REPORT_FILE = "report.md"


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help="print the report saved by decomp decompose",
                            description="Print the per-layer report that decomp decompose --out DIR saved.")
    parser.add_argument("dir", metavar="DIR", type=Path, help="an --out folder of decomp decompose")
    parser.set_defaults(run=functools.partial(run, parser=parser))
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    path = args.dir / REPORT_FILE
    if not path.is_file():
        what = "does not exist" if not args.dir.exists() else f"has no {REPORT_FILE}"
        parser.error(f"argument DIR: {args.dir} {what}; allowed: a folder written by "
                     "decomp decompose --out DIR")
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0

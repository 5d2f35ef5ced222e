"""``decomp decompose``: decompose a model, save its weights, the plan that rebuilds it, and the report.

    decomp decompose --model torchvision:alexnet --weights w.pt --method tucker2 --rank 1/3 \\
        --input-shape 1,3,224,224 --out out/
    decomp decompose ... --calibration inputs.pt --budget macs:4 --out out/   # data-aware, one target

writes ``out/state_dict.pt`` (the decomposed model's ``state_dict``), ``out/plan.json`` (the
report's records under ``"layers"``, which :func:`decomp.build_decomposed` turns back into the
decomposed architecture, and the settings) and ``out/report.md`` (the per-layer table). Every
argument is checked before any factor is computed; the files are written into a temporary
folder beside ``--out`` that is renamed into place at the end, so a failure leaves no ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from decomp import __version__
from decomp import decompose as decompose_model
from decomp.budget import Latency
from decomp.calibration import Calibration
from decomp.experiments.runinfo import atomic_torch_save, atomic_write_text
from decomp.model import _method_table
from decomp.report import Report

from ._models import (CALIBRATION_ALLOWED, MODEL_ALLOWED, check_calibration, check_input_shape, check_overrides,
                      load_model, load_weights_, read_calibration, read_state_dict)
from ._values import (BUDGET_ALLOWED, RANK_ALLOWED, Given, parse_budget, parse_input_shape, parse_method,
                      parse_override, parse_rank, positive_float, positive_int)

STATE_DICT, PLAN, REPORT = "state_dict.pt", "plan.json", "report.md"
DEFAULT_INPUT_SHAPE = "1,3,224,224"  # without --calibration; with it, one sample of the calibration data


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help="decompose a model's layers; save weights, plan and report",
                            description=__doc__.split("\n")[0].replace("``", ""),
                            epilog=f"Writes {STATE_DICT}, {PLAN} and {REPORT} into --out.")
    parser.add_argument("--model", required=True, metavar="SPEC", help=MODEL_ALLOWED)
    parser.add_argument("--weights", type=Path, metavar="FILE",
                        help="state_dict to load first (torch.load weights_only=True; a dict with it under "
                             "'model' or 'state_dict' works too); default: the model's own initialisation")
    parser.add_argument("--method", required=True, type=parse_method, metavar="METHOD",
                        help="tucker2 (kxk convs by Tucker-2, 1x1 by SVD), cp, svd (Linear and 1x1 convs), "
                             "or KIND=METHOD,... e.g. conv=tucker2,linear=svd")
    parser.add_argument("--rank", type=parse_rank, metavar="RANK", help=f"{RANK_ALLOWED}; required unless --budget")
    parser.add_argument("--budget", type=parse_budget, metavar="macs:X|latency:X|latency-cl:X",
                        help=f"one target for the whole model instead of --rank, the ranks of all layers chosen "
                             f"together: {BUDGET_ALLOWED}")
    parser.add_argument("--budget-threads", type=positive_int, metavar="N",
                        help="CPU threads at which --budget latency:X is timed (default: 1)")
    parser.add_argument("--calibration", type=Path, metavar="FILE",
                        help=f"model inputs to fit the SVD and Tucker-2 factors to the layers' responses on: "
                             f"{CALIBRATION_ALLOWED}")
    parser.add_argument("--override", action="append", type=parse_override, default=[], metavar="NAME=RANK",
                        help="per layer (name or fnmatch pattern): a rank as for --rank, or none to leave "
                             "the layer as it is; repeatable")
    parser.add_argument("--input-shape", type=parse_input_shape, metavar="N,C,H,W",
                        help=f"one input batch, for MAC counts, the never-worse guard and --budget (default: "
                             f"{DEFAULT_INPUT_SHAPE}, or one sample of --calibration)")
    parser.add_argument("--min-speedup", type=positive_float, metavar="X",
                        help="keep a layer unless its decomposition is timed at least X times faster")
    parser.add_argument("--rank-multiple", type=positive_int, default=1, metavar="N",
                        help="round ranks up to a multiple of N (16: CPU kernels work in 16-channel blocks)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new or empty folder")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=functools.partial(run, parser=parser))
    return parser


# --- checks, before any work ---------------------------------------------------------------------

def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; allowed: a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} exists and is not empty; allowed: a new or empty folder, or --force to replace it")
    ancestor = out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{out} cannot be created: {ancestor} is not a writable folder")


def _checked(parser: argparse.ArgumentParser, argument: str, check: Callable, *args) -> Any:
    try:
        return check(*args)
    except ValueError as e:
        parser.error(f"argument {argument}: {e}")


def check_rank_and_budget(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exactly one of --rank and --budget; --budget-threads only for a latency budget; Latency gets
    its threads. A budget chooses SVD and Tucker-2 ranks, so no layer kind may use CP."""
    if args.rank is None and args.budget is None:
        parser.error("one of the arguments --rank --budget is required")
    if args.rank is not None and args.budget is not None:
        parser.error(f"argument --budget: {args.budget.text} is not allowed with --rank {args.rank.text} (the "
                     "budget chooses every layer's rank); allowed: --rank or --budget, not both (--override "
                     "fixes single layers)")
    latency = args.budget is not None and isinstance(args.budget.value, Latency)
    if args.budget_threads is not None and not latency:
        given = "without --budget" if args.budget is None else f"with --budget {args.budget.text}"
        parser.error(f"argument --budget-threads: {args.budget_threads} is not allowed {given}; "
                     "allowed: with --budget latency:X only")
    if latency:
        args.budget = Given(args.budget.text, dataclasses.replace(args.budget.value,
                                                                   threads=args.budget_threads or 1))
    if args.budget is not None and "cp" in _method_table(args.method.value).values():
        parser.error(f"argument --budget: {args.budget.text} is not allowed with --method {args.method.text} "
                     "(a budget chooses SVD and Tucker-2 ranks, not CP ranks); allowed: --method tucker2, svd "
                     "or KIND=METHOD,... without cp")


def prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[nn.Module, Calibration | None]:
    """Check every argument (cheapest first); return the model with its weights loaded and the
    calibration data (``None`` without --calibration). Sets ``args.input_shape`` to the shape used."""
    check_rank_and_budget(args, parser)
    _checked(parser, "--out", check_out, args.out, args.force)
    names = [name for name, _ in args.override]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        parser.error(f"argument --override: {', '.join(twice)} given more than once; allowed: one --override per name")
    state_dict = _checked(parser, "--weights", read_state_dict, args.weights) if args.weights else None
    model = _checked(parser, "--model", load_model, args.model)
    if state_dict is not None:
        _checked(parser, "--weights", load_weights_, model, state_dict, args.weights)
    calibration = None
    if args.calibration is not None:
        inputs = _checked(parser, "--calibration", read_calibration, args.calibration)
        given = None if args.input_shape is None else args.input_shape.value
        calibration = _checked(parser, "--calibration", check_calibration, model, inputs, given, args.calibration)
    if args.input_shape is None and calibration is not None:
        shape = (1, *calibration.sample_shape)
        args.input_shape = Given(",".join(map(str, shape)), shape)
        _checked(parser, "--calibration", _check_sample_shape, model, shape, args.calibration)
    else:
        args.input_shape = args.input_shape or parse_input_shape(DEFAULT_INPUT_SHAPE)
        _checked(parser, "--input-shape", check_input_shape, model, args.input_shape.value)
    _checked(parser, "--override", check_overrides, model, names)
    return model.eval(), calibration


def _check_sample_shape(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    try:
        check_input_shape(model, shape)
    except ValueError as e:
        raise ValueError(f"{path} holds inputs of shape {shape[1:]} per sample, which the model cannot take "
                         f"({e})") from None


# --- outputs ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out``, on any error
    it is removed, so ``out`` is either as it was or complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folders are 0o700; give what mkdir would
        if out.exists():  # empty, or --force: rename(2) cannot replace a non-empty folder
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def totals(report: Report) -> dict[str, Any]:
    ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    return {"layers": len(report), "decomposed": len(report.decomposed),
            "params_before": report.params_before, "params_after": report.params_after,
            "param_reduction": ratio(report.params_before, report.params_after),
            "macs_before": report.macs_before, "macs_after": report.macs_after,
            "mac_reduction": ratio(report.macs_before, report.macs_after)}


def plan(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    """What ``plan.json`` holds: the settings, the totals and the per-layer records."""
    content = {"model": args.model, "weights": None if args.weights is None else str(args.weights),
               "method": args.method.text, "rank": None if args.rank is None else args.rank.text,
               "overrides": {name: given.text for name, given in args.override},
               "input_shape": list(args.input_shape.value), "rank_multiple": args.rank_multiple,
               "min_speedup": args.min_speedup, "command": shlex.join(args.command_line),
               "decomp_version": __version__}
    if args.calibration is not None and report.calibration:
        content["calibration"] = {"file": str(args.calibration), **report.calibration}
    if args.budget is not None and report.budget:
        content["budget"] = report.budget
    return {**content, "totals": totals(report), "layers": report.to_records()}


def report_markdown(args: argparse.Namespace, report: Report) -> str:
    weights = args.weights or "the model's own initialisation"
    ranks = f"rank {args.rank.text}" if args.rank is not None else f"budget {args.budget.text}"
    calibration = f"; calibration {args.calibration}" if args.calibration is not None else ""
    return (f"# {args.model}: method {args.method.text}, {ranks}\n\n"
            f"Weights: {weights}{calibration}; input {'x'.join(map(str, args.input_shape.value))}; "
            f"command: `{shlex.join(args.command_line)}`\n\n" + report.to_markdown())


def write(out: Path, model: nn.Module, content: dict[str, Any], markdown: str) -> None:
    with atomic_directory(out) as tmp:
        atomic_torch_save(model.state_dict(), tmp / STATE_DICT)
        atomic_write_text(tmp / PLAN, json.dumps(content, indent=2) + "\n")
        atomic_write_text(tmp / REPORT, markdown)


# --- the command -----------------------------------------------------------------------------------

def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    model, calibration = prepare(args, parser)
    stage = "decomposition"
    try:
        new_model, report = decompose_model(
            model, method=args.method.value, rank=None if args.rank is None else args.rank.value,
            overrides={name: given.value for name, given in args.override},
            input_shape=args.input_shape.value, rank_multiple=args.rank_multiple,
            min_speedup=args.min_speedup, progress=not args.no_progress,
            calibration=None if calibration is None else calibration.source,
            budget=None if args.budget is None else args.budget.value)
        stage = f"writing {args.out}"
        write(args.out, new_model, plan(args, report), report_markdown(args, report))
    except Exception as e:  # one line, as for a bad argument; nothing of --out is left behind
        print(f"{parser.prog}: error: {stage} failed: {type(e).__name__}: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 1
    print(f"{report.summary()}\nwrote {args.out}: {STATE_DICT}, {PLAN}, {REPORT}")
    return 0

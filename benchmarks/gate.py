"""Benchmark regression gate: ``python benchmarks/gate.py --save NAME`` / ``--compare NAME``.

Times a fixed subset of the per-layer cases of ``decomp.experiments.catalog`` (the grid the asv
and pytest-benchmark suites use) in interleaved rounds on the thread CPU clock, one thread,
batch 1, and keeps per-round ratios of every case (original layers and decompositions) to
several yardsticks timed next to it in the same round:

* three fixed reference kernels bound in different ways: a dense 3x3 conv (compute), a
  depthwise conv (memory traffic and per-op overhead, like CP's depthwise stages) and a gemv
  over 16 MB (memory bandwidth, like a batch-1 Linear);
* for a decomposition, also its original layer.

A ratio cancels what slows the whole machine (another job, a frequency change); the thread
CPU clock leaves out the time the thread waits for a core. Other jobs slow compute- and
memory-bound kernels by different factors, so one yardstick is not enough when the load changes
kind between --save and --compare; code that got slower is slower against all of them. A
decomposition is flagged when it is slower against all its four yardsticks but one, an original
against all three references (``benchmarks/gate_stats.py`` says why).
``--compare`` tests each case's ratios against the saved baseline (``benchmarks/gate_stats.py``:
Mann-Whitney U and a minimum effect, against a quorum of yardsticks), re-measures the flagged cases
once, and exits 1 if any is confirmed: the re-measurement alone significantly slower, and both
measurements pooled a regression.

The references are called as torch functions (``torch.nn.functional.conv2d``, ``torch.mv``), not
through ``nn.Module`` layers: they stand for the machine, not for the code under test, so a
change to the library's layers (or a patch of ``nn.Conv2d.forward``) never moves them. A change
of torch itself does; comparing across torch versions warns (the environment check below).

Exit status: 0 nothing regressed (or ``--save`` done), 1 at least one regression, 2 a usage
error (bad option, unknown case, missing or unreadable baseline). Baselines are
``<--dir>/<NAME>.json`` (default ``.gate/``, git-ignored) and carry the environment; comparing
across environments warns on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: time this checkout's decomp, not an installed one
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import gate_stats
from decomp.experiments.catalog import case_by_id
from decomp.experiments.runinfo import atomic_write_text, environment_info

FORMAT = "decomp-gate/2"  # /2: per-yardstick samples (/1 had one reference per case)
# The default subset (< 5 min per run on 2 shared cores, most of it re-measurement headroom):
# k x k convs of AlexNet and VGG16 at 13x13 / 14x14 with Tucker-2 and CP at several ranks, and
# two Linears with SVD. Each layer's original is timed too (it normalises its decompositions).
DEFAULT_CASES = (
    "alexnet.features.8:tucker2:1/2", "alexnet.features.8:tucker2:1/4",
    "alexnet.features.8:tucker2:1/8", "alexnet.features.8:cp:1/4", "alexnet.features.8:cp:1/8",
    "alexnet.features.10:tucker2:1/2", "alexnet.features.10:tucker2:1/8",
    "alexnet.features.10:cp:1/4", "alexnet.features.10:cp:1/8",
    "vgg16.features.28:tucker2:1/4", "vgg16.features.28:tucker2:1/8",
    "vgg16.features.28:cp:1/4", "vgg16.features.28:cp:1/8",
    "alexnet.classifier.4:svd:1/4", "alexnet.classifier.6:svd:1/4",
)
ROUNDS = 20          # interleaved rounds; one sample per case per round
# s of thread CPU time per timed block (calls per block fixed at start). Each layer's group also
# times the three references every round, so blocks are shorter than /1's 0.03 s to keep a run
# with re-measurement inside 5 minutes on the loaded 2-core machine.
BLOCK_TIME = 0.025
DEFAULT_DIR = ".gate"
REFERENCES = ("reference:conv3x3", "reference:depthwise", "reference:gemv")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class UsageError(ValueError):
    """A bad option value; reported like an argparse error (exit 2)."""


# --- what is timed -------------------------------------------------------------------------------

def reference_kernels() -> dict[str, object]:
    """The fixed yardsticks (see the module docstring), each a zero-argument callable."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    xd, wd = torch.randn(1, 128, 14, 14, generator=gen), torch.randn(128, 128, 3, 3, generator=gen)
    xw, ww = torch.randn(1, 256, 14, 14, generator=gen), torch.randn(256, 1, 3, 3, generator=gen)
    # 1024 x 4096 float32: 16 MB, the size of AlexNet's last Linear; larger than the L2 caches,
    # so each call streams it like a batch-1 Linear does.
    a, v = torch.randn(1024, 4096, generator=gen), torch.randn(4096, generator=gen)
    return {"reference:conv3x3": lambda: F.conv2d(xd, wd, padding=1),
            "reference:depthwise": lambda: F.conv2d(xw, ww, padding=1, groups=256),
            "reference:gemv": lambda: torch.mv(a, v)}


def parse_cases(text: str | None) -> tuple[str, ...]:
    ids = DEFAULT_CASES if text is None else tuple(s.strip() for s in text.split(",") if s.strip())
    if not ids:
        raise UsageError(f"--cases needs at least one case id; got {text!r}")
    for cid in ids:
        try:
            case_by_id(cid)
        except (KeyError, ValueError):
            raise UsageError(f"--cases: unknown case id {cid!r}; ids look like "
                             f"'alexnet.features.8:tucker2:1/4' (see decomp.experiments.catalog)") from None
    return ids


def build_groups(case_ids) -> dict[str, dict[str, object]]:
    """layer id -> {item name -> zero-argument callable}: the references, the original, its cases.

    The references are timed again in every group, next to the cases they normalise."""
    refs = reference_kernels()
    groups: dict[str, dict[str, object]] = {}
    for cid in case_ids:
        case = case_by_id(cid)
        lid = case.layer.id
        if lid not in groups:
            orig = case_by_id(f"{lid}:original")
            groups[lid] = {**refs, orig.id: _forward(orig)}
        if case.method != "original":
            groups[lid][cid] = _forward(case)
    return groups


def _forward(case):
    # fit=False: the library's own layers with random weights; the forward cost depends on the
    # shapes only, and no factorisation is paid for at every run.
    module = case.build(fit=False).eval()
    x = torch.randn(case.layer.batched_shape(1), generator=torch.Generator().manual_seed(0))
    return lambda: module(x)


def _block(fn, number: int) -> float:
    t0 = time.thread_time()
    for _ in range(number):
        fn()
    return (time.thread_time() - t0) / number


def calibrate(fn, block_time: float) -> int:
    """Calls per block so that one block takes about ``block_time`` s of thread CPU time."""
    fn(), fn()  # warm-up: oneDNN picks its kernels on the first call
    number = 1
    while True:
        t = _block(fn, number) * number
        if t >= block_time / 4 or number >= 1 << 16:
            return max(1, round(number * block_time / max(t, 1e-9)))
        number *= 4


def measure(groups, *, rounds: int, block_time: float) -> dict[str, list[float]]:
    """Per-call thread CPU seconds of every item, one sample per round, in interleaved rounds.

    The order of groups and of items within a group rotates each round, so no item always runs
    right after the same neighbour."""
    numbers = {(g, k): calibrate(fn, block_time) for g, items in groups.items() for k, fn in items.items()}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in numbers}
    names = list(groups)
    for r in range(rounds):
        for g in names[r % len(names):] + names[:r % len(names)]:
            keys = list(groups[g])
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                times[(g, k)].append(_block(groups[g][k], numbers[(g, k)]))
    return times


def yardsticks(case_id: str, layer_id: str) -> tuple[str, ...]:
    """What a case is measured against: the references, and for a decomposition its original."""
    orig = f"{layer_id}:original"
    return REFERENCES if case_id == orig else (*REFERENCES, orig)


def ratios(times, groups) -> dict[str, dict]:
    """Case id -> its per-round ratios to each of its yardsticks, and its median seconds."""
    out = {}
    for g, items in groups.items():
        for k in items:
            if k in REFERENCES:
                continue
            num = times[(g, k)]
            out[k] = {"yardsticks": {y: [a / b for a, b in zip(num, times[(g, y)])]
                                     for y in yardsticks(k, g)},
                      "median_s": gate_stats.median(num)}
    return out


def _describe(cid: str) -> dict:
    case = case_by_id(cid)
    return {"layer": case.layer.id, "method": case.method, "ranks": list(case.ranks)}


def run_cases(case_ids, *, rounds: int, block_time: float) -> dict[str, dict]:
    torch.set_num_threads(1)  # the thread CPU clock is honest only for one intra-op thread
    groups = build_groups(case_ids)
    with torch.inference_mode():
        times = measure(groups, rounds=rounds, block_time=block_time)
    cases = ratios(times, groups)
    return {cid: {**_describe(cid), **v} for cid, v in cases.items()}


# --- environment and baselines -------------------------------------------------------------------

ENV_KEYS = ("torch", "threads", "cpu", "cpu_count", "python", "clock")


def environment() -> dict:
    info = environment_info()
    return {"torch": torch.__version__, "threads": 1, "cpu": info["cpu"],
            "cpu_count": info["cpu_count"], "python": info["python"], "clock": "thread_cpu",
            "platform": info["platform"], "git_sha": info["git_sha"], "git_dirty": info["git_dirty"]}


def env_mismatches(old: dict, new: dict) -> list[str]:
    return [f"{k}: baseline {old.get(k)!r}, now {new.get(k)!r}"
            for k in ENV_KEYS if old.get(k) != new.get(k)]


def baseline_path(directory: str, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise UsageError(f"baseline NAME must be letters, digits, '.', '_' or '-' and not start "
                         f"with '.' or '-'; got {name!r}")
    return Path(directory) / f"{name}.json"


def load_baseline(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--compare: no baseline {str(path)!r}; save one first with --save") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--compare: cannot read baseline {str(path)!r}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"--compare: {str(path)!r} is not a gate baseline (format {FORMAT!r})")
    return data


# --- compare -------------------------------------------------------------------------------------

def compare(baseline: dict, record: dict, *, min_effect: float, alpha: float, remeasure) -> dict:
    """Verdicts for the cases both runs timed; flagged ones re-measured once by ``remeasure``
    (a function of the case ids returning fresh case records)."""
    common = [cid for cid in record["cases"] if cid in baseline["cases"]]

    def decide(cid, new):
        return gate_stats.decide_all(baseline["cases"][cid]["yardsticks"], new[cid]["yardsticks"],
                                     min_effect=min_effect, alpha=alpha)

    first = {cid: decide(cid, record["cases"]) for cid in common}
    flagged = [cid for cid, v in first.items() if v.regressed]
    again, pooled, fresh = {}, {}, {}
    if flagged:
        fresh = remeasure(flagged)
        again = {cid: decide(cid, fresh) for cid in flagged}
        pooled = {cid: decide(cid, {cid: {"yardsticks": gate_stats.pool(
            record["cases"][cid]["yardsticks"], fresh[cid]["yardsticks"])}}) for cid in flagged}
    verdicts = {}
    for cid, v in first.items():
        a, b = again.get(cid), pooled.get(cid)
        verdicts[cid] = {**_verdict(v), "flagged_first": v.regressed,
                         "remeasured": None if a is None else {
                             **_verdict(a), "flagged": a.regressed, "slower": a.slower,
                             "samples": fresh[cid]["yardsticks"]},
                         "pooled": None if b is None else {**_verdict(b), "flagged": b.regressed},
                         "regressed": gate_stats.confirm(v, a, b)}
    return verdicts


def _verdict(v) -> dict:
    return {"yardstick": v.yardstick, "old": v.old, "new": v.new, "effect": v.effect, "p": v.p,
            "quorum": v.quorum,
            "per_yardstick": {k: {"old": x.old, "new": x.new, "effect": x.effect, "p": x.p,
                                  "regressed": x.regressed} for k, x in v.per.items()}}


def regression_line(cid: str, case: dict, v: dict) -> str:
    # The first and second measurements pooled decided the size, so their figures are shown:
    # those of the weakest of the yardsticks that carry the verdict, and the largest p among them.
    r = v.get("pooled") or v
    ranks = ",".join(map(str, case["ranks"])) or "-"
    return (f"REGRESSION {cid} (method {case['method']}, layer {case['layer']}, rank {ranks}): "
            f"old {r['old']:.4f} new {r['new']:.4f} x{r['effect']:.2f} (ratio to {r['yardstick']}, "
            f"the weakest of the {r['quorum']} of {len(r['per_yardstick'])} yardsticks that agree), "
            f"p={r['p']:.2g}")


# --- command line --------------------------------------------------------------------------------

def _positive(kind, name):
    noun = "an integer" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {noun} > 0; got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be {noun} > 0; got {text!r}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/gate.py",
        description="Benchmark regression gate: save a baseline, or compare this checkout with one. "
                    "Exit 0: no regression; 1: regression; 2: usage error.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", metavar="NAME", help="time the cases and save the baseline <dir>/NAME.json")
    mode.add_argument("--compare", metavar="NAME", help="time the cases and compare with <dir>/NAME.json")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"baseline folder (default {DEFAULT_DIR}/, git-ignored)")
    p.add_argument("--cases", help="comma-separated case ids (default: the built-in subset of "
                                   f"{len(DEFAULT_CASES)}; each layer's original is added)")
    p.add_argument("--rounds", type=_positive(int, "--rounds"), default=ROUNDS,
                   help=f"interleaved rounds, one sample per case each (default {ROUNDS}, at least 3)")
    p.add_argument("--block-time", type=_positive(float, "--block-time"), default=BLOCK_TIME,
                   help=f"seconds of thread CPU time per timed block (default {BLOCK_TIME})")
    p.add_argument("--min-effect", type=float, default=gate_stats.MIN_EFFECT,
                   help=f"smallest slowdown factor flagged (default {gate_stats.MIN_EFFECT})")
    p.add_argument("--alpha", type=float, default=gate_stats.ALPHA,
                   help=f"Mann-Whitney U significance level, one-sided (default {gate_stats.ALPHA})")
    p.add_argument("--json", metavar="PATH", help="also write this run's record (samples, verdicts) to PATH")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        if args.rounds < gate_stats.MIN_SAMPLES:
            raise UsageError(f"--rounds must be >= {gate_stats.MIN_SAMPLES}; got {args.rounds}")
        try:
            gate_stats.check_settings(args.min_effect, args.alpha)
        except ValueError as e:
            raise UsageError(f"--{str(e).replace('_', '-')}") from None
        path = baseline_path(args.dir, args.save or args.compare)
        case_ids = parse_cases(args.cases)
        baseline = load_baseline(path) if args.compare else None
    except UsageError as e:
        p.error(str(e))
    return _run(args, path, case_ids, baseline)


def _run(args, path, case_ids, baseline) -> int:
    start, load_start = time.monotonic(), os.getloadavg()
    settings = {"rounds": args.rounds, "block_time_s": args.block_time,
                "min_effect": args.min_effect, "alpha": args.alpha}
    record = {"format": FORMAT, "env": environment(), "settings": settings,
              "cases": run_cases(case_ids, rounds=args.rounds, block_time=args.block_time)}
    code = 0
    if baseline is not None:
        for problem in env_mismatches(baseline["env"], record["env"]):
            print(f"warning: environment differs from the baseline ({problem}); "
                  "timings may not be comparable", file=sys.stderr)
        missing = [c for c in record["cases"] if c not in baseline["cases"]]
        if missing:
            print(f"warning: not in the baseline, not compared: {', '.join(missing)}", file=sys.stderr)
        verdicts = compare(baseline, record, min_effect=args.min_effect, alpha=args.alpha,
                           remeasure=lambda ids: run_cases(ids, rounds=args.rounds,
                                                           block_time=args.block_time))
        record["compare"] = {"baseline": str(path), "verdicts": verdicts}
        regressed = [cid for cid, v in verdicts.items() if v["regressed"]]
        for cid in regressed:
            print(regression_line(cid, record["cases"][cid], verdicts[cid]))
        print(f"gate: {len(regressed)} of {len(verdicts)} cases regressed "
              f"(min effect x{args.min_effect}, alpha {args.alpha}; "
              f"{sum(v['flagged_first'] for v in verdicts.values())} flagged before re-measuring)")
        code = 1 if regressed else 0
    record["load_avg"] = {"start": list(load_start), "end": list(os.getloadavg())}
    record["wall_s"] = time.monotonic() - start
    if args.save:
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        print(f"gate: saved {len(record['cases'])} cases to {path} in {record['wall_s']:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())

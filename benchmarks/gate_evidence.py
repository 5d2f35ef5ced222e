"""The gate's evidence in results/bench_gate/ (see its README.md): runs, shares, the table.

    python benchmarks/gate_evidence.py save                      # the baseline, once
    python benchmarks/gate_evidence.py run LABEL [--slowdown F]  # one --compare run, recorded
    python benchmarks/gate_evidence.py shares                    # share of time in 1x1/depthwise
    python benchmarks/gate_evidence.py table                     # summary.md / summary.json
    python benchmarks/gate_evidence.py all [--fresh]             # all of it, in order (resumes)

``run`` calls ``benchmarks/gate.py --compare`` in a subprocess (with ``--slowdown``, the
``inject/sitecustomize.py`` on PYTHONPATH and DECOMP_GATE_SLOWDOWN=F) and keeps the gate's own
record (samples, verdicts, load average) plus its exit code and output. ``table`` reads only
those files: no figure is typed by hand.

A case is *affected* by a slowdown F of the 1x1 and depthwise convs when its expected
whole-case factor, 1 + (F - 1) * share (share: the fraction of its forward time spent in those
convs, from ``shares``), reaches the gate's minimum effect; cases below it are slowed too, but
by less than the gate is meant to see, and are listed apart. Originals are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "results" / "bench_gate"
INJECT = OUT / "inject"
BASELINE = "baseline"


def _gate(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gate.py"), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc, time.monotonic() - t0


def cmd_save(_args):
    from decomp.experiments.runinfo import write_sidecar

    proc, wall = _gate(["--save", BASELINE, "--dir", str(OUT.relative_to(ROOT))])
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode == 0:
        write_sidecar(OUT / f"{BASELINE}.json", extra={"gate_wall_s": wall})
    return proc.returncode


# Background loads for runs "under load", started before the gate and killed after it: another
# job keeping both cores busy with compute (a 2-thread matmul loop, like a training job), or one
# core streaming 2 x 512 MB through memory (the shared L3 and memory bandwidth, what hurts the
# memory-bound cases most). The gate itself runs one thread.
LOADS = {
    "compute": "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\n"
               "while True:\n    a @ a\n",
    "memory": "import numpy as np\na = np.ones(1 << 26)\nb = np.empty_like(a)\n"
              "while True:\n    np.copyto(b, a)\n",
}


def _start_load(kind):
    if kind is None:
        return None
    return subprocess.Popen([sys.executable, "-c", LOADS[kind]], stdout=subprocess.DEVNULL)


def cmd_run(args):
    from decomp.experiments.runinfo import atomic_write_text, write_sidecar

    out = OUT / "runs" / f"{args.label}.json"
    env = {}
    if args.slowdown is not None:
        env = {"PYTHONPATH": os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")]),
               "DECOMP_GATE_SLOWDOWN": str(args.slowdown)}
    tmp = out.with_suffix(".gate.tmp")
    load = _start_load(getattr(args, "load", None))
    try:
        if load is not None:
            time.sleep(5)  # let it reach its steady state before the gate starts
        proc, wall = _gate(["--compare", BASELINE, "--dir", str(OUT.relative_to(ROOT)),
                            "--json", str(tmp)], env)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode not in (0, 1):
        return proc.returncode
    record = json.loads(tmp.read_text())
    tmp.unlink()
    record["evidence"] = {"label": args.label, "slowdown": args.slowdown,
                          "load": getattr(args, "load", None), "exit_code": proc.returncode,
                          "stdout": proc.stdout, "stderr": proc.stderr, "process_wall_s": wall}
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    write_sidecar(out, extra={"slowdown": args.slowdown, "load": getattr(args, "load", None),
                              "load_avg": record["load_avg"]})
    return 0


def cmd_shares(args):
    import torch

    from benchmarks import gate, gate_stats
    from decomp.experiments.catalog import case_by_id
    from decomp.experiments.runinfo import atomic_write_text, write_sidecar

    torch.set_num_threads(1)
    shares = {}
    with torch.inference_mode():
        for cid in gate.DEFAULT_CASES:
            case = case_by_id(cid)
            module = case.build(fit=False).eval()
            x = torch.randn(case.layer.batched_shape(1), generator=torch.Generator().manual_seed(0))
            steps, h = [], x
            for child in module:  # each child on the input it sees inside the whole forward
                steps.append((child, h))
                h = child(h)
            touched = [i for i, (c, _) in enumerate(steps) if _is_touched(c)]
            fns = [(lambda c=c, i=i: c(i)) for c, i in steps] + [lambda: module(x)]
            numbers = [gate.calibrate(f, args.block_time) for f in fns]
            samples = [[] for _ in fns]
            for _ in range(args.rounds):  # interleaved, like the gate
                for k, f in enumerate(fns):
                    samples[k].append(gate._block(f, numbers[k]))
            med = [gate_stats.median(s) for s in samples]
            shares[cid] = {"share": sum(med[i] for i in touched) / med[-1],
                           "touched_layers": [str(steps[i][0]) for i in touched],
                           "whole_s": med[-1]}
            print(f"{cid:36s} share {shares[cid]['share']:.3f}")
    path = OUT / "shares.json"
    atomic_write_text(path, json.dumps(shares, indent=1) + "\n")
    write_sidecar(path, extra={"rounds": args.rounds, "block_time_s": args.block_time})
    return 0


def _is_touched(module) -> bool:
    # The same rule as inject/sitecustomize.py.
    import torch.nn as nn

    return isinstance(module, nn.Conv2d) and (
        module.kernel_size == (1, 1) or (module.groups > 1 and module.groups == module.in_channels))


def _load_runs():
    runs = []
    for p in sorted((OUT / "runs").glob("*.json")):
        if p.name.endswith(".json.json"):
            continue  # sidecars
        runs.append(json.loads(p.read_text()))
    return runs


def summarise(runs, shares) -> dict:
    rows = []
    for r in runs:
        ev, verdicts = r["evidence"], r["compare"]["verdicts"]
        f, min_effect = ev["slowdown"], r["settings"]["min_effect"]
        row = {"label": ev["label"], "slowdown": f, "exit_code": ev["exit_code"],
               "rounds": r["settings"]["rounds"], "block_time_s": r["settings"]["block_time_s"],
               "load": ev.get("load"),
               # at the end: the 1-minute average then covers the run's last minute
               "load_avg_1min": r["load_avg"]["end"][0], "wall_s": r["wall_s"],
               # the whole command, start-up (torch import, catalogue capture) included
               "process_wall_s": ev["process_wall_s"],
               "cases": len(verdicts),
               "flagged_first": sum(v["flagged_first"] for v in verdicts.values()),
               "regressed": sorted(c for c, v in verdicts.items() if v["regressed"]),
               # first measurement: slower against at least one yardstick but fewer than the
               # quorum, i.e. what a single-reference gate could have flagged and this one did not
               "some_not_all": sorted(c for c, v in verdicts.items() if not v["flagged_first"]
                                      and any(y["regressed"] for y in v["per_yardstick"].values())),
               "max_effect_unaffected": None}
        originals = [c for c in verdicts if c.endswith(":original")]
        row["originals_flagged"] = sorted(c for c in originals if verdicts[c]["regressed"])
        if f is None:
            row["false_alarms"] = row["regressed"]
            row["max_effect_unaffected"] = max(v["effect"] for v in verdicts.values())
        else:
            expected = {c: 1 + (f - 1) * shares[c]["share"] for c in verdicts if c in shares}
            affected = sorted(c for c, e in expected.items() if e >= min_effect)
            below = sorted(c for c, e in expected.items() if 1 < e < min_effect)  # touched, slowed less
            row["affected"] = affected
            row["caught"] = sorted(c for c in affected if verdicts[c]["regressed"])
            row["below_min_effect"] = below
            row["below_flagged"] = sorted(c for c in below if verdicts[c]["regressed"])
            row["false_alarms"] = row["originals_flagged"]
            untouched = [c for c in verdicts if c not in expected or expected[c] == 1]
            row["max_effect_unaffected"] = max((verdicts[c]["effect"] for c in untouched), default=None)
        rows.append(row)
    return {"runs": rows}


def _pct(a, b):
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"


def markdown(summary, shares, runs) -> str:
    lines = ["| run | slowdown | background load | rounds x block s | load avg (1 min, at end) | wall s (timing / whole command) | exit | flagged before re-measure | regressed | "
             "affected caught | touched, below min effect: flagged | originals flagged | largest effect, untouched cases | "
             "slower against some yardsticks, below the quorum |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["runs"]:
        caught = _pct(len(r["caught"]), len(r["affected"])) if r["slowdown"] else "-"
        below = f"{len(r['below_flagged'])}/{len(r['below_min_effect'])}" if r["slowdown"] else "-"
        mx = "-" if r["max_effect_unaffected"] is None else f"x{r['max_effect_unaffected']:.3f}"
        lines.append(f"| {r['label']} | {r['slowdown'] or 'none'} | {r.get('load') or 'none'} | "
                     f"{r['rounds']} x {r['block_time_s']} | "
                     f"{r['load_avg_1min']:.2f} | {r['wall_s']:.0f} / {r['process_wall_s']:.0f} | "
                     f"{r['exit_code']} | {r['flagged_first']}/{r['cases']} | {len(r['regressed'])} | {caught} | "
                     f"{below} | {len(r['originals_flagged'])} | {mx} | {len(r['some_not_all'])} |")
    lines += ["", "Measured whole-case effect per case and run: median ratio new / old against the "
              "weakest of the yardsticks that carry the verdict (3 of a decomposition's 4, all 3 of an "
              "original's; first measurement), **R** where the gate reported a regression, * where it was slower "
              "than the minimum effect against some yardsticks but fewer than that quorum; expected "
              "factor 1 + (F - 1) * share in brackets for the injected runs:", ""]
    ids = list(runs[0]["compare"]["verdicts"]) if runs else []
    lines.append("| case | share | " + " | ".join(r["evidence"]["label"] for r in runs) + " |")
    lines.append("| --- | --- |" + " --- |" * len(runs))
    for c in ids:
        share = shares.get(c, {}).get("share")
        cells = []
        for r in runs:
            v = r["compare"]["verdicts"].get(c)
            f = r["evidence"]["slowdown"]
            if v is None:
                cells.append("-")
                continue
            some = not v["flagged_first"] and any(y["regressed"] for y in v["per_yardstick"].values())
            cell = f"x{v['effect']:.2f}" + (" **R**" if v["regressed"] else "") + (" *" if some else "")
            if f and share is not None:
                cell += f" ({1 + (f - 1) * share:.2f})"
            cells.append(cell)
        lines.append(f"| {c} | {'-' if share is None else f'{share:.2f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cmd_table(_args):
    from decomp.experiments.runinfo import atomic_write_text, write_sidecar

    runs = _load_runs()
    shares = json.loads((OUT / "shares.json").read_text())
    summary = summarise(runs, shares)
    atomic_write_text(OUT / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(OUT / "summary.md", markdown(summary, shares, runs))
    write_sidecar(OUT / "summary.md", extra={"inputs": ["runs/*.json", "shares.json"]})
    sys.stdout.write(markdown(summary, shares, runs))
    return 0


# The evidence, in the order it is made, as (label, injected slowdown, background load): the
# baseline is saved on a quiet machine, then unchanged and injected runs alternate, so each kind
# of load, and any drift of the machine over the run, falls on both.
SEQUENCE = (("unchanged-1", None, None), ("slow1.3-1", 1.3, None),
            ("unchanged-2", None, "compute"), ("slow2-1", 2.0, "compute"),
            ("unchanged-3", None, "memory"), ("slow1.3-2", 1.3, "memory"),
            ("unchanged-4", None, None), ("slow1.3-3", 1.3, "compute"),
            ("unchanged-5", None, "compute"), ("slow2-2", 2.0, "memory"),
            ("unchanged-6", None, "memory"), ("slow1.3-4", 1.3, None))


def cmd_all(args):
    """The whole evidence: baseline, SEQUENCE, shares, table. Resumes: a baseline or run already
    recorded is kept (``--fresh`` deletes the old records first)."""
    if args.fresh:
        for p in [*OUT.glob(f"{BASELINE}.json*"), *(OUT / "runs").glob("*.json")]:
            p.unlink()
    steps = [("baseline", None, None)] + list(SEQUENCE)
    for i, (label, f, load) in enumerate(steps, 1):
        done = (OUT / f"{BASELINE}.json").exists() if label == "baseline" else \
            (OUT / "runs" / f"{label}.json").exists()
        print(f"[{i}/{len(steps)}] {label}" + (f", load {load}" if load else "")
              + (" (recorded, kept)" if done else ""), flush=True)
        if done:
            continue
        code = cmd_save(args) if label == "baseline" else \
            cmd_run(argparse.Namespace(label=label, slowdown=f, load=load))
        if code:
            return code
    cmd_shares(args)
    return cmd_table(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gate_evidence.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("save").set_defaults(fn=cmd_save)
    r = sub.add_parser("run")
    r.add_argument("label")
    r.add_argument("--slowdown", type=float)
    r.add_argument("--load", choices=sorted(LOADS), help="run a background load during the run")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("shares")
    s.add_argument("--rounds", type=int, default=15)
    s.add_argument("--block-time", type=float, default=0.04)
    s.set_defaults(fn=cmd_shares)
    sub.add_parser("table").set_defaults(fn=cmd_table)
    a = sub.add_parser("all", help="baseline, every run of SEQUENCE, shares, table (resumes)")
    a.add_argument("--fresh", action="store_true", help="delete the recorded baseline and runs first")
    a.add_argument("--rounds", type=int, default=15)
    a.add_argument("--block-time", type=float, default=0.04)
    a.set_defaults(fn=cmd_all)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

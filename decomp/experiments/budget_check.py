"""Check the whole-model budgets against what they promise, and write the figures to results/.

- ``MACs(x)`` on torchvision's VGG16 at 224 x 224 (data-free: MAC counts do not depend on the
  weights): the MAC reduction reached for each x.
- ``Latency(x)`` on the CIFAR-10 VGG16-BN (width 0.5, batch 1, CPU at 1 thread): the model
  the search returns is saved (``state_dict`` + plan), then rebuilt and timed against the
  original in a *fresh process*, interleaved, so the figure does not come from the search's
  own timings.

    python scripts/check_budgets.py --out results/budget
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import decomp
from decomp.cli._config import check_output
from decomp.experiments.reproduce import leave_out
from decomp.experiments.runinfo import atomic_write_text, write_sidecar
from decomp.experiments.zoo import ModelConfig

__all__ = ["main", "retime"]

METHOD = {"conv": "tucker2", "linear": "svd"}


def _cifar_vgg(weights: str | None):
    torch.manual_seed(0)
    model = ModelConfig(name="vgg16_bn", width=0.5).build()
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state))
        model.float()
    return model.eval()


def retime(weights: str | None, folder: str, seconds: float) -> dict:
    """In this (fresh) process: rebuild the saved model and time it against the original."""
    from decomp.measure import paired_speedups

    base = _cifar_vgg(weights)
    plan = json.loads((Path(folder) / "plan.json").read_text())
    new = decomp.build_decomposed(base, plan)
    new.load_state_dict(torch.load(Path(folder) / "state_dict.pt", weights_only=True))
    x = torch.randn(1, 3, 32, 32)
    t = paired_speedups({"original": base, "decomposed": new.eval()}, x, "original", rounds=20,
                        block_s=seconds / 20, threads=1, clock="thread_cpu")["decomposed"]
    return {"original_ms": t.reference_seconds * 1e3, "decomposed_ms": t.seconds * 1e3,
            "speedup": t.median, "rel_iqr": t.rel_iqr, "rounds": t.rounds}


def check_macs(factors) -> list[dict]:
    import torchvision

    rows = []
    for factor in factors:
        torch.manual_seed(0)
        model = torchvision.models.vgg16().eval()
        start = time.perf_counter()
        _, report = decomp.decompose(model, METHOD, budget=decomp.MACs(factor), input_shape=(1, 3, 224, 224))
        reached = report.macs_before / report.macs_after
        rows.append({"model": "torchvision vgg16 @224", "target": f"MACs(x{factor:g})", "factor": factor,
                     "reached": reached, "within_band": 0.95 * factor <= reached <= 1.15 * factor,
                     "layers_decomposed": len(report.decomposed), "search_s": report.budget["search_s"],
                     "seconds": time.perf_counter() - start})
    return rows


def check_latency(factors, weights: str | None, seconds: float) -> list[dict]:
    rows = []
    for factor in factors:
        model = _cifar_vgg(weights)
        start = time.perf_counter()
        new, report = decomp.decompose(model, METHOD, overrides=leave_out(model), input_shape=(1, 3, 32, 32),
                                       budget=decomp.Latency(factor))
        with tempfile.TemporaryDirectory() as folder:
            torch.save(new.state_dict(), Path(folder) / "state_dict.pt")
            (Path(folder) / "plan.json").write_text(json.dumps({"layers": report.to_records()}, default=str))
            out = subprocess.run([sys.executable, "-m", "decomp.experiments.budget_check", "--retime", folder,
                                  "--seconds", str(seconds)] + (["--weights", weights] if weights else []),
                                 check=True, capture_output=True, text=True)
        fresh = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"model": "vgg16_bn w0.5 (CIFAR-10) b1, CPU 1 thread", "target": f"Latency(x{factor:g})",
                     "factor": factor, "search_measured": report.budget["measured"],
                     "fresh_process_speedup": fresh["speedup"], "fresh_rel_iqr": fresh["rel_iqr"],
                     "within_15pct": abs(fresh["speedup"] / factor - 1) <= 0.15,
                     "macs_x": report.macs_before / report.macs_after, "tries": len(report.budget["tries"]),
                     "search_s": report.budget["search_s"], "seconds": time.perf_counter() - start})
    return rows


def _table(rows) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]) + "\n"


def main(argv=None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/budget"))
    p.add_argument("--macs", type=float, nargs="*", default=[2.0, 4.0], help="MACs(x) factors on torchvision VGG16")
    p.add_argument("--latency", type=float, nargs="*", default=[2.0, 3.0], help="Latency(x) factors on the CIFAR VGG16-BN")
    p.add_argument("--weights", help="state_dict (or decomp.experiments.train checkpoint) of the CIFAR VGG16-BN w0.5; "
                                     "default: random weights (latency does not depend on the values)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing seconds per model in the fresh process")
    p.add_argument("--retime", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.weights and not Path(a.weights).is_file():
        p.error(f"argument --weights: {a.weights} is not a file")
    for flag, kind, factors in (("--macs", decomp.MACs, a.macs), ("--latency", decomp.Latency, a.latency)):
        for factor in factors:  # the checks take minutes: a bad factor is refused before them
            try:
                kind(factor)
            except (TypeError, ValueError) as e:
                p.error(f"argument {flag}: {factor:g}: {e}")
    if not a.seconds > 0:
        p.error(f"argument --seconds: {a.seconds:g}; allowed: seconds > 0")
    check_output(p, "--out", a.out, folder=True)
    if a.retime:
        torch.set_num_threads(1)
        print(json.dumps(retime(a.weights, a.retime, a.seconds)))
        return
    command = " ".join([prog or "python -m decomp.experiments.budget_check", *(sys.argv[1:] if argv is None else argv)])
    cpu = {"weights": a.weights or "random init", "timing": "batch 1, 1 thread, thread CPU clock, interleaved"}
    for name, rows in (("macs", check_macs(a.macs) if a.macs else []),
                       ("latency", check_latency(a.latency, a.weights, a.seconds) if a.latency else [])):
        if not rows:
            continue
        import pandas as pd

        atomic_write_text(a.out / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_text(a.out / f"{name}.md", f"# decomp budget check: {name}\n\n" + _table(rows))
        for suffix in ("csv", "md"):
            write_sidecar(a.out / f"{name}.{suffix}", command=command, extra=cpu)
        print(_table(rows))


if __name__ == "__main__":
    main()

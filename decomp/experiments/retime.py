"""Re-time a committed CIFAR-10 run's architectures on this machine: no data, no training.

    python scripts/retime_cifar10.py results/cifar10/cpu_e40     # ~1 min per model on 2 cores

A run's accuracy figures hold wherever it ran; its speed-ups hold on its CPU only (a 2-core
AVX2 and an AVX-512 EPYC gave the same CIFAR VGG16 decomposition x3.0 and x3.9 at batch 1).
This rebuilds every variant of ``RUN/summary.csv`` from the ranks in ``RUN/layers.csv``
(:func:`decomp.build_decomposed`) and times all of them and their baseline together at CPU
batch 1, 1 thread, thread CPU clock, in paired rounds
(:func:`decomp.experiments.reproduce.joint_cpu_b1`): once all NCHW, once all channels_last.
Weights are random (scaled normal): dense kernels take the same time whatever the values
(the committed baseline and a randomised copy timed x1.003 apart). Writes
``RUN/retime/<cpu>.{csv,md}`` with sidecars naming this CPU; the run's own tables are left
as they were.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from pathlib import Path

import torch
from torch import nn

from decomp import build_decomposed
from decomp.experiments.reproduce import joint_cpu_b1
from decomp.experiments.runinfo import atomic_write_text, environment_info, write_sidecar
from decomp.experiments.zoo import ModelConfig
from decomp.layers import CP_SPATIAL, cp_layers
from decomp.measure import count_macs, count_params

__all__ = ["retime", "cpu_tag", "main"]

COLUMNS = ("model", "variant", "macs_x", "top1_after", "delta_control_points", "cpu_b1_speedup_as_run",
           "cpu_b1_speedup", "cpu_b1_cl_speedup", "cpu_b1_ms", "cpu_b1_cl_ms", "baseline_ms", "baseline_cl_ms",
           "rel_iqr")


def cpu_tag(info: dict | None = None) -> str:
    """A file name for this CPU: its model and vector ISA, e.g. ``amd-epyc-avx2``; where the model
    name has no number in it (a virtual machine's "AMD EPYC"), its family and model too,
    ``amd-epyc-f23m1-avx2``, so that two generations behind one name keep apart files."""
    info = info or environment_info()
    name = info.get("cpu") or "cpu"
    ident = info.get("cpu_identity") or {}
    if not re.search(r"\d", name) and ident.get("family") is not None and ident.get("model") is not None:
        name += f" f{ident['family']}m{ident['model']}"
    text = f"{name}-{info.get('cpu_capability') or ''}".lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"run folder needs {path.name}; {path} does not exist.")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _models(run: Path) -> dict[str, ModelConfig]:
    """The run's models by table tag (``vgg16_bn_w0.5``), from its summary sidecar."""
    meta = json.loads((run / "summary.csv.json").read_text())
    models = (meta.get("profile") or {}).get("models")
    if not models:
        raise ValueError(f"{run / 'summary.csv.json'} names no profile models; is {run} a reproduce_cifar10 run?")
    return {f"{name}_w{float(width):g}": ModelConfig(name=name, width=float(width)) for name, width in models}


def _records(model: nn.Module, rows: list[dict]) -> list[dict]:
    """``layers.csv`` rows as report records. The table does not say which form a CP layer's
    spatial convs took (``decomp.layers.CP_SPATIAL``): the one whose parameter count is the row's."""
    out = []
    for r in rows:
        ranks = json.loads(r["ranks"]) if r.get("ranks") else None
        rec = {"name": r["name"], "layer": r["layer"] or None, "method": r["method"] or None,
               "ranks": ranks, "skipped": r["skipped"] or None}
        if rec["method"] == "cp" and rec["skipped"] is None:
            layer = model.get_submodule(r["name"])
            forms = [f for f in CP_SPATIAL if count_params(cp_layers(layer, ranks, device="meta", spatial=f))
                     == int(r["params_after"])]
            if not forms:
                raise ValueError(f"layers.csv row {r['name']!r} of {r['variant']!r}: no CP form of rank {ranks} "
                                 f"has its {r['params_after']} params (forms: {CP_SPATIAL}).")
            rec["info"] = {"spatial": forms[0]}
        out.append(rec)
    return out


@torch.no_grad()
def _random_weights_(model: nn.Module) -> nn.Module:
    """Scaled normal conv / linear weights, zero biases (``build_decomposed`` leaves new layers
    uninitialised, and stray denormals or NaNs would time differently)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.normal_(0, m.weight[0].numel() ** -0.5)
            if m.bias is not None:
                m.bias.zero_()
    return model.eval()


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def retime(run: Path, *, rounds: int = 20, min_run_time: float = 2.0, input_hw: int = 32) -> list[dict]:
    """One row per variant of ``run``: its speed-ups on this machine (see the module docstring)."""
    run = Path(run)
    summary, layers, models = _read_csv(run / "summary.csv"), _read_csv(run / "layers.csv"), _models(run)
    rows = []
    for tag, mcfg in models.items():
        variants = [r for r in summary if r["model"] == tag and r["variant"] != "baseline"]
        if not variants:
            continue
        base = _random_weights_(mcfg.build())
        shape = (1, 3, input_hw, input_hw)
        built = {}
        for v in variants:
            records = _records(base, [r for r in layers if r["model"] == tag and r["variant"] == v["variant"]])
            if not records:
                raise ValueError(f"{run / 'layers.csv'} has no layers of {tag} {v['variant']}.")
            built[v["variant"]] = _random_weights_(build_decomposed(base, records))
        nchw = joint_cpu_b1(base, built, rounds=rounds, min_run_time=min_run_time, input_hw=input_hw)
        cl = joint_cpu_b1(base, built, rounds=rounds, min_run_time=min_run_time, input_hw=input_hw,
                          channels_last=True)
        macs0 = count_macs(base, shape)
        for v in variants:
            name = v["variant"]
            rows.append({"model": tag, "variant": name, "macs_x": macs0 / count_macs(built[name], shape),
                         "top1_after": _number(v.get("top1_after")),
                         "delta_control_points": _number(v.get("delta_control_points")),
                         "cpu_b1_speedup_as_run": _number(v.get("cpu_b1_speedup")),
                         "cpu_b1_speedup": nchw[name]["speedup"], "cpu_b1_cl_speedup": cl[name]["speedup"],
                         "cpu_b1_ms": nchw[name]["ms"], "cpu_b1_cl_ms": cl[name]["ms"],
                         "baseline_ms": nchw[name]["baseline_ms"], "baseline_cl_ms": cl[name]["baseline_ms"],
                         "rel_iqr": max(nchw[name]["rel_iqr"], cl[name]["rel_iqr"])})
    return rows


def _cell(v, fmt: str) -> str:
    return "" if v is None else fmt.format(v)


def markdown(rows: list[dict], run: Path, tag: str) -> str:
    lines = [f"# `{run.name}` re-timed on `{tag}`", "",
             "CPU batch 1, 1 thread, thread CPU clock, baseline and every variant timed together in paired rounds; "
             "architectures from `layers.csv`, random weights. Accuracy columns are the run's own.", "",
             "| model | variant | MACs × | top-1 after FT (%) | Δ vs control | CPU b1 speedup as run | "
             "CPU b1 speedup (NCHW) | CPU b1 speedup (channels_last) | baseline ms (NCHW / channels_last) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | x{r['macs_x']:.2f} | "
                     f"{_cell(r['top1_after'] and 100 * r['top1_after'], '{:.2f}')} | "
                     f"{_cell(r['delta_control_points'], '{:+.2f}')} | {_cell(r['cpu_b1_speedup_as_run'], 'x{:.2f}')} | "
                     f"x{r['cpu_b1_speedup']:.2f} | x{r['cpu_b1_cl_speedup']:.2f} | "
                     f"{r['baseline_ms']:.2f} / {r['baseline_cl_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], run: Path, out: Path, tag: str, rounds: int, min_run_time: float) -> list[Path]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    extra = {"run": str(run), "rounds": rounds, "min_run_s": min_run_time,
             "timing": "joint_cpu_b1: CPU batch 1, 1 thread, thread CPU clock, paired rounds; NCHW, then channels_last",
             "weights": "random (scaled normal): the speed of dense kernels does not depend on the values"}
    paths = []
    for name, text in ((f"{tag}.csv", buf.getvalue()), (f"{tag}.md", markdown(rows, run, tag))):
        paths.append(atomic_write_text(out / name, text))
        write_sidecar(out / name, extra=extra)
    return paths


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r}; allowed: a number > 0" if kind is float
                                             else f"{text!r}; allowed: an int >= 1")
        return value
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/retime_cifar10.py", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a reproduce_cifar10 output folder (summary.csv, layers.csv and sidecar)")
    p.add_argument("--rounds", type=_positive(int), default=20, help="paired timing rounds (default 20)")
    p.add_argument("--min-run-s", type=_positive(float), default=2.0,
                   help="seconds of timing per model and layout (default 2)")
    p.add_argument("--out", type=Path, help="output folder (default RUN/retime)")
    args = p.parse_args(argv)
    for name in ("summary.csv", "summary.csv.json", "layers.csv"):
        if not (args.run / name).is_file():
            p.error(f"argument run: {args.run} has no {name}; allowed: a folder written by "
                    "scripts/reproduce_cifar10.py")
    tag = cpu_tag()
    rows = retime(args.run, rounds=args.rounds, min_run_time=args.min_run_s)
    paths = write(rows, args.run, args.out or args.run / "retime", tag, args.rounds, args.min_run_s)
    print(markdown(rows, args.run, tag), end="")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0

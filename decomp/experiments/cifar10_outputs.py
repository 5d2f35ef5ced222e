"""Outputs of a CIFAR-10 reproduction run: summary and layer tables, plots, control, README.

Every file is written atomically with a JSON sidecar (:func:`decomp.experiments.runinfo.write_sidecar`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

from decomp.experiments import distributed
from decomp.experiments.profiles import CONTROL_LR, PROFILES, Profile
from decomp.experiments.reproduce import Variant, best_speedups, claims_markdown, plot_accuracy_vs_speedup, plot_layer_speedups
from decomp.experiments.runinfo import atomic_write_text, write_sidecar
from decomp.experiments.train import TrainConfig

__all__ = ["write_outputs", "write_before", "BEFORE_COLUMNS", "readme", "summary_columns", "compute_seconds", "control_text"]


def _markdown_table(df, columns: dict) -> str:
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, r in df.iterrows():
        cells = []
        for c in columns:
            v = r.get(c)
            if v is None or (isinstance(v, float) and v != v):
                cells.append("")
            elif c in ("top1_base", "top1_before_raw", "top1_before", "top1_after"):
                cells.append(f"{100 * v:.2f}")
            elif c in ("delta_points", "delta_control_points"):
                cells.append(f"{v:+.2f}")
            elif c.endswith("_x") or c.endswith("_speedup"):
                cells.append(f"x{v:.2f}")
            elif c == "finetune_lr":
                cells.append(f"{v:g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_columns(df) -> dict:
    cols = {"model": "model", "variant": "variant", "ranks": "ranks",
            "top1_before_raw": "top-1 decomposed (%)", "top1_before": "top-1 after BN recal. (%)",
            "top1_after": "top-1 after FT (%)", "delta_points": "Δ (points)", "params_x": "params ×",
            "macs_x": "MACs ×"}
    if "delta_control_points" in df.columns:
        cols["delta_points"] = "Δ vs baseline"
        cols["delta_control_points"] = "Δ vs control"
    if "fit" in df.columns:
        cols = {"fit": "fit", **cols}
    for c in df.columns:
        if c.endswith("_speedup"):
            dev, b = c.split("_")[0], c.split("_b")[1].split("_")[0]
            cols[c] = f"{dev.upper()} b{b} speedup" + (" (channels_last)" if "_cl_" in c else "")
    cols["finetune_lr"] = "FT lr"
    return cols


def write_outputs(rows, layer_rows, skipped, prof, args, data_desc, stage_s, controls=(), argv=None) -> None:
    import pandas as pd

    out: Path = args.out
    df = pd.DataFrame(rows)
    if controls:  # the cost of the decomposition itself: against the baseline fine-tuned alike
        control_of = {c["model"]: c["top1_after"] for c in controls}
        df["delta_control_points"] = [100 * (r["top1_after"] - control_of[r["model"]])
                                      if r["model"] in control_of else None for r in rows]
    extra = {"profile": asdict(prof), "seed": prof.seed, "torch_threads_train": torch.get_num_threads(),
             "timing": {"cpu": "1 thread, thread CPU clock, interleaved with the baseline; cpu_b1_speedup: "
                               "all variants and the baseline timed together (joint_cpu_b1), all NCHW; "
                               "cpu_b1_cl_speedup: the same, all channels_last",
                        "gpu": "wall clock, synchronised" if torch.cuda.is_available() else None},
             "data": {k: data_desc.get(k) for k in ("dataset", "source_kind", "path", "sha256",
                                                    "train_count", "test_count")},
             "stage_seconds": stage_s, "skipped_for_budget": skipped}
    if distributed.active():  # torchrun: fine-tuning was data-parallel over these processes
        extra["distributed"] = {"processes": distributed.world_size(), "backend": torch.distributed.get_backend(),
                                "global_batch": "the profile's batch sizes, split evenly over the processes"}
    command = command_line(args.prog, argv)

    def save_text(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        write_sidecar(out / name, command=command, extra=extra)

    save_text("summary.csv", df.to_csv(index=False))
    cols = summary_columns(df)
    ldf = pd.DataFrame(layer_rows)
    save_text("layers.csv", ldf.to_csv(index=False))
    save_text("summary.md", f"# CIFAR-10 reproduction, profile `{prof.name}`\n\n"
              + _markdown_table(df, cols))
    lcols = {c: c for c in ("model", "variant", "name", "layer", "method", "ranks", "params_before",
                            "params_after", "macs_before", "macs_after", "rel_error",
                            "measured_speedup", "skipped")}
    ldf_md = ldf.copy()
    if not ldf_md.empty:
        ldf_md["rel_error"] = ldf_md["rel_error"].map(lambda x: "" if x != x or x is None else f"{x:.3f}")
    if "measured_speedup" not in ldf_md or ldf_md["measured_speedup"].isna().all():
        del lcols["measured_speedup"]  # no speed guard in this profile: nothing was timed
    save_text("layers.md", "# Per-layer decompositions\n\n" + _markdown_table(ldf_md, lcols))
    if len(df) > len(prof.models):
        plot_accuracy_vs_speedup(df, out / "accuracy_vs_speedup.png", controls)
        write_sidecar(out / "accuracy_vs_speedup.png", command=command, extra=extra)
    if plot_layer_speedups(ldf, out / "layer_speedups.png", prof.min_speedup) is not None:
        write_sidecar(out / "layer_speedups.png", command=command, extra=extra)
    if controls:
        save_text("control.csv", pd.DataFrame(controls).to_csv(index=False))
    save_text("README.md", readme(df, prof, command, data_desc, stage_s, skipped, controls))


BEFORE_COLUMNS = {"model": "model", "fit": "fit", "variant": "variant", "ranks": "ranks",
                  "top1_before_raw": "top-1 raw (%)", "delta_raw_points": "Δ raw",
                  "top1_before": "top-1 after BN recal. (%)", "delta_recal_points": "Δ recal.",
                  "params_x": "params ×", "macs_x": "MACs ×", "cpu_b1_speedup": "CPU b1 speedup",
                  "decompose_s": "decompose s"}


def write_before(rows, prof: Profile, args, data_desc: dict, stage_s: dict, argv=None) -> None:
    """``--decompose-only``: ``before.{csv,md}`` (and sidecars), every variant before fine-tuning."""
    import pandas as pd

    out: Path = args.out
    df = pd.DataFrame(rows)
    command = command_line(args.prog, argv)
    extra = {"what": "every variant right after decomposing: top-1 raw and after batch-norm recalibration "
                     f"({prof.bn_batches} batches of {prof.ft_batch_size} training images); no fine-tuning",
             "profile": asdict(prof), "torch_threads": torch.get_num_threads(),
             "timing": {"cpu": "cpu_b1_speedup: all variants and the baseline timed together at batch 1 "
                               "(joint_cpu_b1), 1 thread, thread CPU clock, NCHW"},
             "data": {k: data_desc.get(k) for k in ("dataset", "source_kind", "path", "sha256",
                                                    "train_count", "test_count")},
             "stage_seconds": stage_s}
    fmt = df.copy()
    for c in ("delta_raw_points", "delta_recal_points"):
        fmt[c] = fmt[c].map(lambda v: f"{v:+.2f}")
    fmt["decompose_s"] = fmt["decompose_s"].map(lambda v: f"{v:.0f}")
    bases = ", ".join(f"`{m}` {100 * b:.2f}%" for m, b in df.groupby("model", sort=False)["top1_base"].first().items())
    text = (f"# CIFAR-10, profile `{prof.name}`: before fine-tuning\n\n"
            f"Baseline top-1: {bases}. Each variant right after `decompose`: raw, then after re-estimating "
            f"the batch-norm statistics on {prof.bn_batches} batches of training images; Δ in points "
            "against the baseline. No fine-tuning, so no control.\n\n" + _markdown_table(fmt, BEFORE_COLUMNS))
    for name, body in (("before.csv", df.to_csv(index=False)), ("before.md", text)):
        atomic_write_text(out / name, body)
        write_sidecar(out / name, command=command, extra=extra)

def guided_doc(prof: Profile) -> str:
    """What the data-aware and budgeted variants do, when the profile has them."""
    if not prof.aware:
        return ""
    text = (f"- Data-aware variants (`@aware-...`): `decompose(..., calibration=...)` on {prof.calibration_images}\n"
            "  unaugmented training images (a seeded subset): SVD and Tucker-2 factors fitted to each layer's\n"
            "  responses against the original network's outputs, in forward order (`decomp.calibration`);\n"
            "  VBMF reads the data-aware spectra. The same fine-tuning as every other variant follows.\n")
    if prof.budgets:
        text += (f"- Budgeted variants ({', '.join(f'`@{Variant(prof.aware[0], None, 0.0, budget=b).rank_label}`' for b in prof.budgets)}): "
                 "`decompose(..., budget=decomp.Latency(x))`\n"
                 "  or `decomp.MACs(x)` with the same calibration data: the ranks of all layers chosen together under\n"
                 "  one measured batch-1 CPU latency (1 thread) or MAC target (`decomp.budget`); `budget_reached`\n"
                 "  in `summary.csv` is what the search measured, the speedup columns are re-timed after fine-tuning.\n")
    return text


def distill_text(prof: Profile) -> str:
    if not prof.ft_distill:
        return ""
    return (f"; the loss distils from the baseline: {1 - prof.ft_distill:g} x label-smoothed "
            f"cross-entropy + {prof.ft_distill:g} x T^2 x KL(baseline || variant) at T = {TrainConfig().distill_temperature:g} "
            "(`decomp.experiments.train.DistillLoss`)")


def control_text(controls) -> str:
    """The control's paragraph: what the same fine-tuning does to the undecomposed baseline."""
    if not controls:
        return ""
    lines = ["- Control (`control.csv`): each undecomposed baseline fine-tuned exactly like the variants "
             f"(lr {CONTROL_LR:g}{control_distill_text(controls)}). Part of a variant's recovery is this extra "
             "training; its Δ against the control is the cost of the decomposition itself:"]
    for c in controls:
        lines.append(f"  - {c['model']}: {100 * c['top1_base']:.2f}% -> {100 * c['top1_after']:.2f}% "
                     f"({c['delta_points']:+.2f} points) after {c['finetune_epochs']} epoch(s)"
                     + (f"; reused from `{c['source']}` (git {str(c.get('source_git_sha'))[:7]}), whose baseline, "
                        "fine-tuning settings, data and training code `--control-from` checked to be this run's"
                        if c.get("source") else ""))
    return "\n".join(lines) + "\n"


def control_distill_text(controls) -> str:
    # one profile per run, so one alpha for every control; rows from before the column: none
    alpha = controls[0].get("finetune_distill", 0.0)
    return f", distilling from the frozen baseline at alpha {alpha:g}" if alpha else ", no distillation"


def compute_seconds(stage_s: dict) -> float:
    """Seconds the stages took when they were computed (baseline training + every variant's stages)."""
    total = stage_s.get("data", 0.0)
    for v in stage_s.values():
        if isinstance(v, dict):
            total += v.get("train_s", 0.0) + sum(v.get(k, 0.0) for k in ("decompose_s", "finetune_s", "timing_s"))
    return total


def _as_typed(cmd: str) -> str:
    """The command with the venv's interpreter (scripts) or the venv's ``decomp`` (console command)."""
    if cmd.startswith("python "):
        return "PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE .venv/bin/python " + cmd.removeprefix("python ")
    return "OMP_WAIT_POLICY=PASSIVE .venv/bin/" + cmd


def command_line(prog: str | None, argv) -> str | None:
    """The command as a user would type it again, or None when called from Python with no ``prog``."""
    if prog is None:
        return None
    args = sys.argv[1:] if argv is None else list(argv)
    if distributed.active() and prog.startswith("python "):  # started by torchrun: say so
        nodes = os.environ.get("GROUP_WORLD_SIZE", "1")
        prog = (f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', distributed.world_size())} "
                + (f"--nnodes {nodes} " if nodes not in ("", "1") else "") + prog.removeprefix("python "))
    return " ".join([prog, *args])


def readme(df, prof: Profile, command: str | None, data_desc: dict, stage_s: dict, skipped: list,
           controls=()) -> str:
    cmd = command or f"python scripts/reproduce_cifar10.py --profile {prof.name}"
    layer_plot_row = guard_doc = overrides_doc = ""
    defined = PROFILES.get(prof.name)
    if defined is not None and defined != prof:
        changed = ", ".join(f"`{f.name}={getattr(prof, f.name)!r}`" for f in fields(prof)
                            if getattr(prof, f.name) != getattr(defined, f.name))
        overrides_doc = (f"This run overrides the `{prof.name}` profile: {changed}. The profile's own "
                         "note follows.\n")
    if prof.min_speedup is not None:
        layer_plot_row = ("| `layer_speedups.png` | measured batch-1 speedup of each layer's "
                          "decomposition, per variant |\n")
        guard_doc = (
            f"- Speed guard (`decompose(..., min_speedup={prof.min_speedup:g})`): each planned layer is\n"
            "  timed against the original at its batch-1 input (CPU, 1 thread, thread CPU clock, random\n"
            f"  weights) before any factor is computed, and kept as it was unless it runs at least\n"
            f"  x{prof.min_speedup:g} faster (`measured_speedup` in `layers.md`, `layer_speedups.png`).\n")
    best = []
    against = [("delta_points", "the baseline", (1.0, 3.0))]
    if "delta_control_points" in df.columns:
        against.append(("delta_control_points", "the control", (0.5, 1.0, 3.0)))
    for delta, whom, drops in against:
        for drop in drops:
            for col in [c for c in df.columns if c.endswith("_speedup")]:
                b = best_speedups(df, drop, col, delta)
                for _, r in b.iterrows():
                    best.append(f"- {r['model']}, ≤ {drop:g} point(s) top-1 lost against {whom}, {col}: "
                                f"**x{r[col]:.2f}** ({r['variant']}, Δ {r[delta]:+.2f})")
    fields_doc = "\n".join(f"| `{f.name}` | {getattr(prof, f.name)!r} |" for f in fields(prof))
    return f"""# CIFAR-10 reproduction of the speedup/accuracy claims (profile `{prof.name}`)

Written by `scripts/reproduce_cifar10.py`. The command:

```sh
{_as_typed(cmd)}
```

Data: {data_desc.get('dataset')} (`{data_desc.get('source_kind')}`, sha256 `{data_desc.get('sha256')}`),
{data_desc.get('train_count')} training / {data_desc.get('test_count')} test images
(top-1 on {prof.test_images or data_desc.get('test_count')} test images).
Wall time of this run: {stage_s.get('total', 0):.0f} s; compute time of all stages, including those
read from the cache of an earlier run: {compute_seconds(stage_s):.0f} s (per stage in the sidecars).
{overrides_doc}{prof.note}

| file | what |
| --- | --- |
| `summary.csv`, `summary.md` | one row per model and variant: ranks, top-1 before/after fine-tuning, Δ, params ×, MACs ×, measured speedups, fine-tuning lr |
| `layers.csv`, `layers.md` | every Conv2d/Linear of every variant: method, ranks, params, MACs, relative error, why skipped |
| `accuracy_vs_speedup.png` | top-1 after fine-tuning against measured speedup, the claim's x2-x4 band shaded |
{layer_plot_row}| `*.json` | sidecar of each file: command, git sha, versions, hardware, threads, seed, data sha256, seconds per stage |

## How it was made

Profile settings:

| field | value |
| --- | --- |
{fields_doc}

- Baseline: `decomp.experiments.train` (SGD + Nesterov, label smoothing 0.1, linear warmup/decay, random crop + flip),
  {prof.epochs} epochs, batch {prof.batch_size}, peak lr {prof.lr:g} per 512 images.
- Variants: each family at the origin's heuristic rank (first fraction, R = S/3, T/3 for
  Tucker-2; R = T/3 for CP; min(m, n)/3 for SVD), VBMF ranks where listed, and more aggressive
  fractions. The first conv (3 input channels) and the last Linear (10 outputs) are never
  decomposed. A layer whose decomposition would not cut both its MACs and its params is left
  as it is (`layers.md` says why).
{guard_doc}{guided_doc(prof)}- Batch-norm recalibration: right after decomposing, the batch-norm statistics are
  re-estimated on {prof.bn_batches} shuffled, unaugmented batches of {prof.ft_batch_size} training images
  (`decomp.experiments.train.recalibrate_batchnorm`); "top-1 decomposed" is before it, "after BN recal." after it.
- Fine-tuning: {prof.ft_epochs} epoch(s) on {prof.ft_images or 'all'} training images (seeded subset),
  batch {prof.ft_batch_size}, 10% warmup then linear decay, lr per family in the table (BN nets
  take far larger steps than the origin's ~1e-6 for CP on a plain VGG16){distill_text(prof)}.
- Speed: the baseline and each variant timed interleaved in the same run
  (`decomp.measure.time_interleaved`, eval, `inference_mode`, fp32, NCHW); CPU at 1 thread with the
  thread CPU clock (the machine is shared), batches {prof.cpu_batches}; GPU (when present) wall clock
  with synchronisation, batches {prof.gpu_batches}. Speedup = baseline median / variant median.
  The CPU batch-1 column (`cpu_b1_speedup`) comes from one more timing at the end of the run in
  which the baseline and *every* variant are timed together, round by round
  (`decomp.experiments.reproduce.joint_cpu_b1`), so that equal architectures get equal figures
  and machine drift between variants cancels; each variant's own timing is kept as
  `cpu_b1_speedup_alone`. Every model is timed NCHW (weights and input), and once more with
  baseline and variants all channels_last (`cpu_b1_cl_speedup`): the layout a deployment picks
  when it is faster, and on some CPUs it speeds the baseline up more than its decompositions.
""" + (f"- Not run for the time budget ({prof.budget_s:g} s): {', '.join(skipped)}.\n" if skipped else "") + control_text(controls) + f"""
## Best measured speedups

{chr(10).join(best) if best else '- no variant within 3 points.'}

## The origin's claims against these measurements

{claims_markdown(df)}
"""

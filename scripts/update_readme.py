"""Rewrite the README's results section from the files in results/ (no figure typed by hand).

    python scripts/update_readme.py          # rewrites the block between the results markers
    python scripts/update_readme.py --check  # exit 1 if the README is out of date

Every number in the block is read from a CSV in results/; each bullet names its file, whose
JSON sidecar says how it was made.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- results:start (scripts/update_readme.py) -->", "<!-- results:end -->"
SCALING_START, SCALING_END = "<!-- scaling:start (scripts/update_readme.py) -->", "<!-- scaling:end -->"
COMPAT_START, COMPAT_END = "<!-- compat:start (scripts/update_readme.py) -->", "<!-- compat:end -->"
CALIBRATION_START, CALIBRATION_END = "<!-- calibration:start (scripts/update_readme.py) -->", "<!-- calibration:end -->"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def cp_als_lines() -> list[str]:
    path = ROOT / "results/cp_als/cp_als_vs_tensorly.csv"
    if not path.exists():
        return []
    lines = ["**CP-ALS against tensorly's `parafac`** (same init, same sweeps; "
             "[`results/cp_als/`](results/cp_als/README.md)):", ""]
    for row in read_csv(path):
        if row["shape"].startswith("512x512"):
            lines.append(f"- {row['shape']} at rank {row['rank']}, {row['iterations']} sweeps: "
                         f"{float(row['tensorly time s']):.2f} s -> {float(row['ours time s']):.2f} s, "
                         f"**x{float(row['speedup x']):.1f} faster**, error ratio {float(row['error ratio']):.6f}")
    total = [r for r in read_csv(ROOT / "results/cp_als/vgg16_all_convs.csv") if r["layer"] == "total"]
    if total:
        lines.append(f"- all VGG16 3x3 convs but the first, CP at rank T/4: "
                     f"**{float(total[0]['time s']):.1f} s** in total")
    return lines + [""]


def layer_lines() -> list[str]:
    path = ROOT / "results/layers/vgg16_cpu_b1_t1.csv"
    if not path.exists():
        return []
    rows = read_csv(path)
    lines = ["**Per-layer CPU latency, batch 1, 1 thread** (random weights; "
             "[`results/layers/`](results/layers/README.md)):", ""]
    target = [r for r in rows if r["method"] == "tucker2" and r["fraction"] == "1/3" and r["kind"] == "conv"
              and min(int(r["in"]), int(r["out"])) >= 128]
    for fmt in ("nchw", "channels_last"):
        sel = [r for r in target if r["memory_format"] == fmt]
        if sel:
            met = sum(float(r["efficiency"]) >= 0.7 for r in sel)
            effs = [float(r["efficiency"]) for r in sel]
            lines.append(f"- VGG16 Tucker-2 at (S/3, T/3), 3x3 convs with >= 128 channels, {fmt}: "
                         f"efficiency (speedup / MAC reduction) {min(effs):.2f}-{max(effs):.2f}, "
                         f">= 0.7 on {met} of {len(sel)} layers")
    for model in ("vgg16", "alexnet"):
        mrows = read_csv(ROOT / f"results/layers/{model}_cpu_b1_t1.csv")
        for method in ("tucker2", "cp", "svd"):
            sel = [r for r in mrows if r["method"] == method]
            if sel:
                best = max(sel, key=lambda r: float(r["speedup"]))
                lines.append(f"- {model} best {method}: x{float(best['speedup']):.1f} measured on {best['layer']} "
                             f"(ranks {best['ranks']}, {best['memory_format']}) for a x{float(best['mac_reduction']):.1f} "
                             f"MAC reduction")
    return lines + [""]


def _timed_on(sidecar: dict) -> str:
    """The machine a run's speedups were timed on, from its sidecar."""
    gpu = f" and {sidecar['gpu']['name']}" if sidecar.get("gpu") else ""
    isa = f", {sidecar['cpu_capability']}" if sidecar.get("cpu_capability") else ""
    ident = sidecar.get("cpu_identity") or {}  # sidecars since the CPU's family and model were recorded
    family = (f", family {ident['family']} model {ident['model']}, {ident['mhz']} MHz"
              if ident.get("family") is not None and ident.get("mhz") else "")
    return f"{sidecar['cpu']} ({sidecar['cpu_count']} cores{isa}{family}, timed at 1 thread){gpu}"


def _speed_columns(rows) -> list[str]:
    """The measured speedup columns of a summary, e.g. ``["cpu_b1_speedup", "gpu_b256_speedup"]``."""
    return [c for c in rows[0] if c.endswith("_speedup") and c.split("_")[0] in ("cpu", "gpu")]


def cifar_lines() -> list[str]:
    lines = []
    for profile in ("cpu", "gpu"):  # smoke: tiny models on a subset, accuracy is noise
        path = ROOT / f"results/cifar10/{profile}/summary.csv"
        if not path.exists():
            continue
        rows = read_csv(path)
        side = json.loads(path.with_name("summary.csv.json").read_text())
        where = _timed_on(side)
        lines += [f"**CIFAR-10 fine-tuning, `{profile}` profile** "
                  f"([`results/cifar10/{profile}/`](results/cifar10/{profile}/README.md)), timed on {where}. "
                  "Best measured speedup per model at a given top-1 loss, with the variant and its Δ:", ""]
        lines += _cifar_rows(rows)
        lines.append(f"- the origin's claims, point by point against these runs: "
                     f"[`results/cifar10/{profile}/README.md`](results/cifar10/{profile}/README.md)")
        lines.append("")
    return lines + follow_up_lines()


def follow_up_lines() -> list[str]:
    """Runs of a profile with overrides (e.g. one variant with longer fine-tuning), one line per
    variant, with the command and machine from the sidecar, and the control's line if it ran."""
    lines = []
    for path in sorted((ROOT / "results/cifar10").glob("*/summary.csv")):
        name = path.parent.name
        if name in ("smoke", "cpu", "gpu") or name in ACCURACY_RUNS:
            continue
        side = json.loads(path.with_name("summary.csv.json").read_text())
        where = _timed_on(side)
        lines += [f"**CIFAR-10 follow-up run `{name}`** ([`results/cifar10/{name}/`](results/cifar10/{name}/README.md);"
                  f" `{side.get('command')}`; timed on {where}):", ""]
        control = path.with_name("control.csv")
        controls = {c["model"]: c for c in (read_csv(control) if control.exists() else [])}
        rows = read_csv(path)
        speeds = _speed_columns(rows)
        for r in rows:
            if r["variant"] == "baseline":
                base_line = f"- {r['model']} baseline top-1 {100 * float(r['top1_after']):.2f}%"
                c = controls.get(r["model"])
                if c:
                    base_line += (f"; control, the baseline fine-tuned alike for {c['finetune_epochs']} epochs"
                                  f"{_distilled(c)} without decomposing: {100 * float(c['top1_after']):.2f}% "
                                  f"({float(c['delta_points']):+.2f} points)")
                lines.append(base_line)
                continue
            how = f"{int(float(r['finetune_epochs']))} fine-tuning epochs{_distilled(r)}"
            c = controls.get(r["model"])
            against = (f" ({100 * (float(r['top1_after']) - float(c['top1_after'])):+.2f} against the control)"
                       if c else "")
            timings = ", ".join(("**x{:.2f}** " if col == "cpu_b1_speedup" else "x{:.2f} ").format(float(r[col]))
                                + _speed_label(col) for col in speeds)
            lines.append(f"- {r['model']} {r['variant']}, {how}: top-1 {100 * float(r['top1_after']):.2f}%, "
                         f"{float(r['delta_points']):+.2f} points{against}, MACs x{float(r['macs_x']):.2f}, "
                         f"measured {timings}")
        lines.append("")
    return lines


def _speed_label(col: str) -> str:
    """``"cpu_b256_speedup"`` -> ``"CPU b256"``, ``"cpu_b1_cl_speedup"`` -> ``"CPU b1 channels_last"``."""
    device, batch = col.split("_")[:2]
    return f"{device.upper()} {batch}" + (" channels_last" if col.endswith("_cl_speedup") else "")


def _cifar_rows(rows) -> list[str]:
    """A table per profile: for each model and top-1 loss limit, the fastest variant per timing."""
    cols = _speed_columns(rows)
    out = ["| model | baseline top-1 | top-1 lost | " + " | ".join(map(_speed_label, cols)) + " |",
           "|---|---|---|" + "---|" * len(cols)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    tucker_lines = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        base = next(r for r in mine if r["variant"] == "baseline")
        for limit in (1.0, 3.0):
            cells = []
            for col in cols:
                ok = [r for r in mine if r["variant"] != "baseline" and _measured(r.get(col))
                      and -float(r["delta_points"]) <= limit]
                best = max(ok, key=lambda r: float(r[col])) if ok else None
                cells.append(f"**x{float(best[col]):.2f}** {best['variant']} ({float(best['delta_points']):+.2f})"
                             if best else "")
            out.append(f"| {model} | {100 * float(base['top1_after']):.2f}% | ≤ {limit:g} point{'s' if limit != 1 else ''} | "
                       + " | ".join(cells) + " |")
        tucker = [r for r in mine if r["family"].startswith("tucker2")]
        if tucker:
            best = max(tucker, key=lambda r: float(r["top1_after"]))
            tucker_lines.append(f"- most accurate Tucker-2 variant of {model}: {best['variant']}, "
                                f"{float(best['delta_points']):+.2f} points, MACs x{float(best['macs_x']):.2f}, "
                                f"CPU batch 1 x{float(best['cpu_b1_speedup']):.2f}")
    return out + [""] + tucker_lines


ACCURACY_RUNS = ("cpu_w1_ft2", "cpu_e40", "cpu_e40_avx2", "cpu_e40_ft1", "cpu_e40_ft12", "cpu_e40_kd4", "cpu_e40_ft20",
                 "cpu_e40_ft20_ranks", "cpu_e40_ft20_ranks_avx512")  # the accuracy-at-speed runs: data-free, data-aware, budgeted


def _measured(value) -> bool:
    """Whether a summary cell holds a measurement (a run leaves the ones it did not take empty)."""
    return value not in (None, "", "nan")


def _times(value) -> str:
    """``"x1.30"`` for a measured factor, ``""`` for a cell the run left empty."""
    return f"x{float(value):.2f}" if _measured(value) else ""


def _distilled(row: dict) -> str:
    """``", distilled from the baseline (alpha 0.5)"`` for a row fine-tuned with distillation, else ``""``."""
    alpha = float(row.get("finetune_distill") or 0)
    return f", distilled from the baseline (alpha {alpha:g})" if alpha else ""


def retime_lines(run: Path) -> list[str]:
    """One line per ``RUN/retime/<cpu>.csv`` (scripts/retime_cifar10.py): the run's variants
    re-timed on another CPU, NCHW and channels_last."""
    lines = []
    for path in sorted((run / "retime").glob("*.csv")):
        side = json.loads(path.with_name(path.name + ".json").read_text())
        cells = [f"{r['variant']} x{float(r['cpu_b1_speedup']):.2f} NCHW, x{float(r['cpu_b1_cl_speedup']):.2f} "
                 f"channels_last (x{float(r['cpu_b1_speedup_as_run']):.2f} as run)" for r in read_csv(path)]
        table = path.relative_to(ROOT).with_suffix(".md")
        lines.append(f"- re-timed at CPU batch 1 on {_timed_on(side)} ([`{table}`]({table}), "
                     f"`{side.get('command')}`): " + "; ".join(cells))
    return lines + ([""] if lines else [])


def ranks_source_lines(command: str) -> list[str]:
    """For a run made with ``--ranks-from RUN:VARIANT``: where its architecture came from and how
    fast that architecture was timed there (its run and every re-timing), from RUN's files."""
    words = command.split()
    if "--ranks-from" not in words or words.index("--ranks-from") + 1 >= len(words):
        return []
    run_text, _, variant = words[words.index("--ranks-from") + 1].rpartition(":")
    run = ROOT / run_text
    if not (run / "summary.csv").exists():
        return []
    row = next((r for r in read_csv(run / "summary.csv") if r["variant"] == variant), None)
    if row is None:
        return []
    side = json.loads((run / "summary.csv.json").read_text())
    timings = [f"x{float(row['cpu_b1_speedup']):.2f} in its run on {_timed_on(side)}"]
    for path in sorted((run / "retime").glob("*.csv")):
        again = next((r for r in read_csv(path) if r["variant"] == variant), None)
        if again is not None:
            where = _timed_on(json.loads(path.with_name(path.name + ".json").read_text()))
            timings.append(f"x{float(again['cpu_b1_speedup']):.2f} re-timed on {where}")
    return [f"- the architecture is `{variant}` of [`{run_text}`]({run_text}/README.md) (MACs x{float(row['macs_x']):.2f}), "
            f"timed at CPU batch 1 NCHW: " + "; ".join(timings), ""]


FRONTIER = (2.0, 3.0)  # the speed-ups the accuracy-at-speed targets name


def frontier_lines() -> list[str]:
    """At each speed-up of :data:`FRONTIER`: over every run of :data:`ACCURACY_RUNS`, the variant
    that loses least against its run's control among those timed at least that fast in their
    own run (CPU batch 1, NCHW). Re-timings on other CPUs are quoted with each run, not here."""
    found = []
    for name in ACCURACY_RUNS:
        path = ROOT / f"results/cifar10/{name}/summary.csv"
        if not path.exists() or not path.with_name("control.csv").exists():
            continue
        control = {c["model"]: float(c["top1_after"]) for c in read_csv(path.with_name("control.csv"))}
        side = json.loads(path.with_name("summary.csv.json").read_text())
        for r in read_csv(path):
            if r["variant"] != "baseline" and r["model"] in control and _measured(r.get("cpu_b1_speedup")):
                found.append((name, r, float(r["top1_after"]) - control[r["model"]], side))
    lines = []
    for x in FRONTIER:
        fast = [f for f in found if float(f[1]["cpu_b1_speedup"]) >= x]
        if not fast:
            continue
        name, r, vs, side = max(fast, key=lambda f: f[2])
        lines.append(f"- at **>= x{x:g}** measured CPU batch-1 speed-up, the closest to its control: `{name}` "
                     f"{r['variant']} ({r['model']}), {100 * float(r['top1_after']):.2f}% after fine-tuning, "
                     f"**{100 * vs:+.2f} points against the control**, {float(r['delta_points']):+.2f} against the "
                     f"baseline, **x{float(r['cpu_b1_speedup']):.2f}** timed in its run on {_timed_on(side)}")
    return (["Best reached, every accuracy-at-speed run below:", "", *lines, ""]) if lines else []


def accuracy_at_speed_lines() -> list[str]:
    """Per run: every variant against the baseline and the control, raw / BN-recalibrated /
    fine-tuned top-1, MACs and measured CPU batch-1 speed-up, then the budget checks."""
    lines = frontier_lines()
    for name in ACCURACY_RUNS:
        path = ROOT / f"results/cifar10/{name}/summary.csv"
        if not path.exists():
            continue
        rows, side = read_csv(path), json.loads(path.with_name("summary.csv.json").read_text())
        control = {c["model"]: c for c in read_csv(path.with_name("control.csv"))} if path.with_name(
            "control.csv").exists() else {}
        base = next(r for r in rows if r["variant"] == "baseline")
        c = control.get(base["model"])
        epochs = next((r["finetune_epochs"] for r in rows if r["variant"] != "baseline"), "?")
        cl = any(_measured(r.get("cpu_b1_cl_speedup")) for r in rows)  # runs since channels_last timing
        # batch 256 beside batch 1: these runs budget latency at batch 1, where the weights' memory
        # traffic dominates, so their MACs and their throughput at a large batch can gain far less
        b256 = any(_measured(r.get("cpu_b256_speedup")) for r in rows if r["variant"] != "baseline")
        lines += [f"**Accuracy at speed, `{name}`** ([`results/cifar10/{name}/`](results/cifar10/{name}/README.md); "
                  f"`{side.get('command')}`; timed on {_timed_on(side)}): {base['model']} baseline "
                  f"{100 * float(base['top1_after']):.2f}%"
                  + (f", control (fine-tuned alike, {c['finetune_epochs']} epochs{_distilled(c)}) "
                     f"{100 * float(c['top1_after']):.2f}%" if c else "")
                  + (f" (reused from [`{c['source']}`]({c['source']}/README.md), the same recipe: `--control-from`)"
                     if c and c.get("source") else "")
                  + f"; every variant fine-tuned {int(float(epochs))} epochs{_distilled(rows[-1])}:", "",
                  "| variant | fit | top-1 decomposed | after BN recal. | after FT | Δ vs baseline | Δ vs control "
                  "| MACs × | CPU b1 speed-up |" + (" CPU b1, all channels_last |" if cl else "")
                  + (" CPU b256 speed-up |" if b256 else ""),
                  "|---|---|---|---|---|---|---|---|---|" + ("---|" if cl else "") + ("---|" if b256 else "")]
        for r in rows:
            if r["variant"] == "baseline":
                continue
            vs_control = f"{100 * (float(r['top1_after']) - float(c['top1_after'])):+.2f}" if c else ""
            lines.append(f"| {r['variant']} | {r.get('fit') or 'data-free'} | {100 * float(r['top1_before_raw']):.2f}% "
                         f"| {100 * float(r['top1_before']):.2f}% | {100 * float(r['top1_after']):.2f}% "
                         f"| {float(r['delta_points']):+.2f} | {vs_control} | x{float(r['macs_x']):.2f} "
                         f"| **x{float(r['cpu_b1_speedup']):.2f}** |"
                         + (f" x{float(r['cpu_b1_cl_speedup']):.2f} |" if cl else "")
                         + (f" {_times(r.get('cpu_b256_speedup'))} |" if b256 else ""))
        lines.append("")
        lines += ranks_source_lines(side.get("command") or "")
        lines += retime_lines(path.parent)
    for name, what in (("macs", "`decomp.MACs(x)` on torchvision's VGG16 at 224 (MACs reached)"),
                       ("latency", "`decomp.Latency(x)`, re-timed in a fresh process against the original")):
        path = ROOT / f"results/budget/{name}.csv"
        if not path.exists():
            continue
        cells = []
        for r in read_csv(path):
            if name == "macs":
                cells.append(f"{r['target']}: x{float(r['reached']):.2f} (search {float(r['search_s']):.0f} s)")
            else:
                cells.append(f"{r['target']}: x{float(r['fresh_process_speedup']):.2f} measured "
                             f"(search's own timing x{float(r['search_measured']):.2f}, search {float(r['search_s']):.0f} s)")
        lines.append(f"- {what}, [`results/budget/{name}.md`](results/budget/{name}.md): " + "; ".join(cells))
    return lines + ([""] if lines else [])


def render() -> str:
    body = cp_als_lines() + layer_lines() + accuracy_at_speed_lines() + cifar_lines()
    if not body:
        body = ["No results yet: run the scripts listed above.", ""]
    return "\n".join([START, "", *body, END])


def render_scaling() -> str:
    """The "Scaling out" figures, from results/scaling/scaling.csv (scripts/measure_scaling.py)."""
    path = ROOT / "results/scaling/scaling.csv"
    body = []
    if path.exists():
        rows = read_csv(path)
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        first = float(rows[0]["images_per_s"])
        body = [f"- {r['processes']} process{'es' if r['processes'] != '1' else ''} x {r['threads_per_process']} "
                f"thread{'s' if r['threads_per_process'] != '1' else ''}: **{float(r['images_per_s']):.0f} images/s** "
                f"(x{float(r['images_per_s']) / first:.2f} of 1 process x 1 thread)" for r in rows]
        loads = [run["load_average_1_5_15_before"][0] for run in sidecar.get("runs", [])
                 if "load_average_1_5_15_before" in run]
        body += ["", f"Measured on {sidecar.get('cpu', 'the CPU')} ({sidecar.get('cpu_count')} cores)"
                 + (f", 1-minute load average {min(loads):.1f}-{max(loads):.1f} at the start of the runs" if loads else "")
                 + ".", ""]
    return "\n".join([SCALING_START, *body, SCALING_END])


def render_compat() -> str:
    """The compatibility table's summary, from results/compat/compat.csv (scripts/compat_table.py)."""
    path = ROOT / "results/compat/compat.csv"
    body = []
    if path.exists():
        import torchvision

        rows = read_csv(path)
        listed = {"classification": set(torchvision.models.list_models(module=torchvision.models)),
                  "segmentation": set(torchvision.models.list_models(module=torchvision.models.segmentation))}
        for family, names in listed.items():
            mine = [r for r in rows if r["family"] == family]
            checked = {r["model"] for r in mine}
            body.append(f"- {family}: {len(checked & names)} of {len(names)} torchvision models checked")
            for method in dict.fromkeys(r["method"] for r in mine):
                ms = [r for r in mine if r["method"] == method]
                count = lambda status: sum(r["status"] == status for r in ms)  # noqa: E731
                body.append(f"  - `{method}`: {count('ok')} run after decomposition, {count('broken')} broken, "
                            f"{count('error')} refused or failed")
            missing = sorted(names - checked)
            if missing:
                body.append(f"  - not yet in the table: {', '.join(f'`{m}`' for m in missing)}")
        broken = sorted({r["model"] for r in rows if r["status"] == "broken"})
        body += ["", "Broken after decomposition: " + (", ".join(f"`{m}`" for m in broken) if broken else "none") + "."]
    return "\n".join([COMPAT_START, *body, COMPAT_END])


def render_calibration() -> str:
    """Calibration wall time and raw top-1, from results/calibration/calibration_time.csv
    (scripts/time_calibration.py)."""
    path = ROOT / "results/calibration/calibration_time.csv"
    body = []
    if path.exists():
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        for r in read_csv(path):
            what = (f"data-aware on {r['calibration_images']} images" if r["fit"] == "data-aware"
                    else "data-free")
            body.append(f"- {what}: `decompose` **{float(r['decompose_s']):.0f} s** with {r['threads']} threads, "
                        f"raw top-1 {100 * float(r['top1_before_raw']):.2f}% ({float(r['delta_points']):+.2f} "
                        f"points against {100 * float(r['top1_base']):.2f}%)")
        body += ["", f"Measured on {sidecar.get('cpu', 'the CPU')} ({sidecar.get('cpu_count')} cores, "
                     f"{sidecar.get('cpu_capability', '')}), git {str(sidecar.get('git_sha', ''))[:7]}.", ""]
    body += sensitivity_lines() + before_lines()
    return "\n".join([CALIBRATION_START, *body, CALIBRATION_END])


# Runs with a before.csv (reproduce --decompose-only): the raw loss at full width, on the profile's
# 2048 calibration images and on 8192 (--calibration-images 8192: the fit overfits 2048 images).
BEFORE_RUNS = ("cpu_w1", "cpu_w1-cal8192")


def before_lines() -> list[str]:
    """Every variant of a ``--decompose-only`` run before fine-tuning, from results/cifar10/<run>/before.csv."""
    lines = []
    for name in BEFORE_RUNS:
        path = ROOT / f"results/cifar10/{name}/before.csv"
        if not path.exists():
            continue
        rows, side = read_csv(path), json.loads(path.with_name("before.csv.json").read_text())
        bn = (side.get("profile") or {}).get("bn_batches")
        images = (side.get("profile") or {}).get("calibration_images")
        lines += [f"**Before fine-tuning, `{name}`** ([`results/cifar10/{name}/before.md`](results/cifar10/{name}/before.md); "
                  f"`{side.get('command')}`; timed on {_timed_on(side)}): {rows[0]['model']} baseline "
                  f"{100 * float(rows[0]['top1_base']):.2f}%, data-aware fits on {images} calibration images, each variant raw and after re-estimating the batch-norm "
                  f"statistics ({bn} batches), points against the baseline:", "",
                  "| variant | fit | top-1 raw | Δ raw | after BN recal. | Δ recal. | MACs × | CPU b1 speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['fit']} | {100 * float(r['top1_before_raw']):.2f}% "
                         f"| **{float(r['delta_raw_points']):+.2f}** | {100 * float(r['top1_before']):.2f}% "
                         f"| {float(r['delta_recal_points']):+.2f} | x{float(r['macs_x']):.2f} "
                         f"| x{float(r['cpu_b1_speedup']):.2f} |")
        lines.append("")
    return lines


def sensitivity_lines() -> list[str]:
    """Each layer alone, from results/calibration/layer_sensitivity.csv (scripts/layer_sensitivity.py):
    the sum of the one-layer drops per fit, and the layers trained against the logits."""
    path = ROOT / "results/calibration/layer_sensitivity.csv"
    if not path.exists():
        return []
    rows, side = read_csv(path), json.loads(path.with_name(path.name + ".json").read_text())
    drop = {(r["layer"], r["fit"]): float(r["delta_points"]) for r in rows}
    table = "results/calibration/layer_sensitivity.md"
    lines = [f"Each layer alone at rank {Fraction(side.get('rank', 0)).limit_denominator(100)} (every other layer "
             f"as it is; [`{table}`]({table}), `{side.get('command')}`), raw top-1 points against the baseline:"]
    for fit in dict.fromkeys(r["fit"] for r in rows):
        mine = [(r["layer"], drop[(r["layer"], fit)]) for r in rows if r["fit"] == fit]
        worst = min(mine, key=lambda m: m[1])
        lines.append(f"- {fit}: {len(mine)} layers, sum of the one-layer drops **{sum(d for _, d in mine):+.2f}**, "
                     f"most {worst[1]:+.2f} ({worst[0]})")
    refined = [r for r in rows if r["fit"] == "data-aware+logits"]
    if refined:
        lines.append(f"- the {len(refined)} layers that lose most, data-aware then trained against the original's "
                     f"logits ({refined[0]['refine_steps']} Adam steps on the calibration images; the ceiling of a "
                     "layer-wise fit, not part of `decompose`): "
                     + "; ".join(f"{r['layer']} {drop[(r['layer'], 'data-aware')]:+.2f} -> {float(r['delta_points']):+.2f}"
                                 for r in refined if (r["layer"], "data-aware") in drop))
    ident = side.get("cpu_identity") or {}
    family = f", family {ident['family']} model {ident['model']}" if ident.get("family") is not None else ""
    return lines + ["", f"Measured on {side.get('cpu', 'the CPU')} ({side.get('cpu_count')} cores, "
                        f"{side.get('cpu_capability', '')}{family}) with {side.get('torch_threads')} torch threads, "
                        f"git {str(side.get('git_sha', ''))[:7]}.", ""]


def _replace(text: str, start: str, end: str, block: str) -> str:
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return before + block + after


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    text = README.read_text()
    if START not in text or END not in text:
        print(f"README.md has no results markers ({START} ... {END})", file=sys.stderr)
        return 2
    new = _replace(text, START, END, render())
    if SCALING_START in new and SCALING_END in new:
        new = _replace(new, SCALING_START, SCALING_END, render_scaling())
    if COMPAT_START in new and COMPAT_END in new:
        new = _replace(new, COMPAT_START, COMPAT_END, render_compat())
    if CALIBRATION_START in new and CALIBRATION_END in new:
        new = _replace(new, CALIBRATION_START, CALIBRATION_END, render_calibration())
    if args.check:
        return 0 if new == text else 1
    if new != text:
        tmp = README.with_suffix(".md.tmp")
        try:
            tmp.write_text(new)
            tmp.replace(README)
        except OSError as e:  # a full disk: no temporary left behind, and the file named
            tmp.unlink(missing_ok=True)
            print(f"could not write {README}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

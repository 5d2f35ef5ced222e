"""Per-layer sweep: measured speedup of each decomposition next to its MAC reduction.

For every Conv2d and Linear of the chosen models (``decomp.experiments.catalog``), the original layer and
each decomposition at each rank setting are timed side by side, interleaved in rounds
(``decomp.measure.time_interleaved``) so that machine noise hits all of them alike. Convs are
timed in NCHW and channels_last; a decomposed row's speedup is against the original in the
same memory format. Writes, per model and device, to ``results/layers/``:

    <model>_<device>_b<batch>_t<threads>.csv      one row per (layer, method, ranks, format)
    <model>_<device>_b<batch>_t<threads>.md       the same as a table, with the target summary
    <model>_<device>_b<batch>_t<threads>.png      speedup vs MAC reduction, one panel per layer
    <model>_..._breakdown.csv                     per-sublayer timings where the target is missed
    each with a ``.json`` sidecar (command, git sha, versions, hardware, load, settings)

Resumable: finished layers are kept in ``<stem>.partial.csv`` and skipped on a rerun.
Weights are random (seeded): latency and MACs depend only on shapes; nothing here depends
on the fit of the factors (``--fit`` runs the real decompositions anyway).

    decomp bench                                       # VGG16 + AlexNet, batch 1, CPU
    decomp bench --models vgg16 --layers vgg16.features.28 --min-run-time 0.05
    python scripts/sweep_layers.py ...                 # the same; the command results/layers/ names
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from decomp.cli._config import ArgumentParser, add_config_arguments, check_output, config_values
from decomp.experiments.catalog import FRACTIONS, MODELS, Case, Layer, cases, model_layers
from decomp.experiments.runinfo import atomic_write_bytes, atomic_write_text, write_sidecar
from decomp.measure import count_macs, count_params, time_interleaved


ALIGN = 16  # channels: fp32 lanes of an AVX-512 register


@dataclass
class Config:
    models: tuple[str, ...] = ("vgg16", "alexnet")
    layers: tuple[str, ...] = ()        # layer ids to keep (e.g. vgg16.features.28); () = all
    device: str = "cpu"
    batch: int = 1                      # images per forward
    threads: int = 1                    # torch intra-op threads (1: robust on a shared machine)
    clock: str = "thread_cpu"           # "thread_cpu" (CPU time, threads=1) or "wall"
    min_run_time: float = 0.25          # s of timing per module per layer, over all rounds
    rounds: int = 5                     # interleaved rounds (A B C A B C ...)
    min_runs: int = 10                  # replicates per module, at least, over all rounds
    channels_last: bool = True          # also time convs in channels_last
    fit: bool = False                   # run the real decompositions (slow for big Linears)
    seed: int = 0                       # weight init
    target: float = 0.7                 # efficiency target for Tucker-2 at 1/3
    breakdown: str = "misses"           # per-sublayer timings: "misses", "all" or "none"
    out: str = "results/layers"
    fresh: bool = False                 # ignore a partial CSV from an interrupted run


def parse_args(argv=None, prog: str | None = None) -> Config:
    """The sweep's settings; every value is checked here, before any model is built or timed."""
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    values = config_values(add_config_arguments(p, Config).parse_args(argv), Config)
    unknown = [m for m in values["models"] if m not in MODELS]
    if unknown or not values["models"]:
        p.error(f"argument --models: {' '.join(unknown) or '(none)'}: allowed: one or more of {' '.join(MODELS)}")
    known_ids = {layer.id for m in values["models"] for layer in model_layers(m)} if values["layers"] else set()
    missing = [i for i in values["layers"] if i not in known_ids]
    if missing:
        p.error(f"argument --layers: {' '.join(missing)} not among the layers of --models "
                f"{' '.join(values['models'])}; ids look like {next(iter(sorted(known_ids)))}")
    if values["clock"] not in ("thread_cpu", "wall"):
        p.error(f"argument --clock: {values['clock']!r}: allowed: thread_cpu, wall")
    if values["clock"] == "thread_cpu" and (values["threads"] != 1 or values["device"] != "cpu"):
        p.error("argument --clock: thread_cpu needs --threads 1 and --device cpu; use --clock wall")
    if values["breakdown"] not in ("misses", "all", "none"):
        p.error(f"argument --breakdown: {values['breakdown']!r}: allowed: misses, all, none")
    if values["device"].startswith("cuda") and not torch.cuda.is_available():
        p.error(f"argument --device: {values['device']}: CUDA is not available on this machine; allowed: cpu")
    for name in ("batch", "threads", "rounds", "min_runs"):
        if values[name] < 1:
            p.error(f"argument --{name.replace('_', '-')}: {values[name]}: allowed: an int >= 1")
    if not values["min_run_time"] > 0:
        p.error(f"argument --min-run-time: {values['min_run_time']}: allowed: seconds > 0")
    check_output(p, "--out", values["out"], folder=True)
    return Config(**values)


def stem(cfg: Config, model: str) -> str:
    return f"{model}_{cfg.device.replace(':', '')}_b{cfg.batch}_t{cfg.threads}"


def load1() -> float:
    return os.getloadavg()[0]


# --- one layer ---------------------------------------------------------------------------------

def variants(layer: Layer, cfg: Config) -> dict[str, tuple[Case, bool]]:
    """name -> (case, channels_last) for one layer: the original and every decomposition."""
    formats = [False, True] if (layer.kind == "conv" and cfg.channels_last) else [False]
    out = {}
    for case in cases((layer.model,)):
        if case.layer != layer:
            continue
        for cl in formats:
            out[f"{case.id}{'+cl' if cl else ''}"] = (case, cl)
    return out


def measure_layer(layer: Layer, cfg: Config) -> list[dict]:
    var = variants(layer, cfg)
    modules, build_s = {}, {}
    for name, (case, _cl) in var.items():
        t0 = time.perf_counter()
        modules[name] = case.build(cfg.seed, fit=cfg.fit, device=cfg.device)
        build_s[name] = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)
    x = torch.randn(layer.batched_shape(cfg.batch), device=cfg.device)
    load_before = load1()
    t0 = time.perf_counter()
    timings = time_interleaved(modules, x, rounds=cfg.rounds, min_run_time=cfg.min_run_time,
                               channels_last={n: cl for n, (_c, cl) in var.items()},
                               threads=cfg.threads, min_runs=cfg.min_runs, clock=cfg.clock)
    wall = time.perf_counter() - t0
    shape = layer.batched_shape(cfg.batch)
    base = {cl: timings[f"{layer.id}:original{'+cl' if cl else ''}"] for (_c, cl) in var.values()}
    base_macs = count_macs(modules[f"{layer.id}:original"], shape)
    base_params = count_params(modules[f"{layer.id}:original"])
    rows = []
    for name, (case, cl) in var.items():
        t, macs, params = timings[name], count_macs(modules[name], shape), count_params(modules[name])
        speedup = base[cl].median / t.median
        rows.append({
            "model": layer.model, "layer": layer.name, "kind": layer.kind,
            "kernel": "x".join(map(str, layer.kernel_size)) if layer.kind == "conv" else "",
            "in": layer.in_channels, "out": layer.out_channels,
            "input_shape": "x".join(map(str, shape)),
            "method": case.method, "fraction": str(case.fraction or ""),
            "ranks": "/".join(map(str, case.ranks)),
            "memory_format": "channels_last" if cl else "nchw",
            "params": params, "macs": macs,
            "param_reduction": base_params / params, "mac_reduction": base_macs / macs,
            "median_ms": t.median * 1e3, "iqr_ms": t.iqr * 1e3, "runs": t.runs,
            "speedup": speedup, "efficiency": speedup / (base_macs / macs),
            "speedup_vs_nchw_original": base[False].median / t.median,
            "threads": t.threads, "clock": t.clock, "device": t.device, "batch": cfg.batch,
            "build_s": build_s[name], "fit": cfg.fit,
            "load1_before": load_before, "load1_after": load1(), "layer_wall_s": wall,
        })
    return rows


# --- per-sublayer breakdown ----------------------------------------------------------------------

def breakdown(layer: Layer, case: Case, cfg: Config) -> list[dict]:
    """Time each sublayer of a decomposed layer alone (interleaved) next to its MAC share."""
    seq = case.build(cfg.seed, fit=cfg.fit, device=cfg.device)
    torch.manual_seed(cfg.seed)
    x = torch.randn(layer.batched_shape(cfg.batch), device=cfg.device)
    rows = []
    formats = [False, True] if cfg.channels_last else [False]
    for cl in formats:
        inputs, modules, h = {}, {}, x
        with torch.inference_mode():
            for i, sub in enumerate(seq):
                inputs[i] = h.clone()
                modules[i] = sub
                h = sub(h)
        timings = {}
        for i, sub in modules.items():  # each sublayer has its own input: its own rounds
            timings[i] = time_interleaved({i: sub}, inputs[i], rounds=cfg.rounds,
                                          min_run_time=cfg.min_run_time, channels_last=cl,
                                          threads=cfg.threads, min_runs=cfg.min_runs,
                                          clock=cfg.clock)[i]
        whole = time_interleaved({"seq": seq}, x, rounds=cfg.rounds, min_run_time=cfg.min_run_time,
                                 channels_last=cl, threads=cfg.threads, min_runs=cfg.min_runs,
                                 clock=cfg.clock)["seq"]
        # The core at ranks rounded up to a multiple of ALIGN: does channel alignment explain a
        # slow core? (AVX-512 holds 16 fp32; oneDNN blocks channels by 16 on such CPUs.)
        core = seq[1]
        r_in, r_out = (-(-c // ALIGN) * ALIGN for c in (core.in_channels, core.out_channels))
        aligned = nn.Conv2d(r_in, r_out, core.kernel_size, stride=core.stride,
                            padding=core.padding, bias=False).eval()
        xa = torch.randn((inputs[1].shape[0], r_in, *inputs[1].shape[2:]))
        ta = time_interleaved({"a": aligned}, xa, rounds=cfg.rounds, min_run_time=cfg.min_run_time,
                              channels_last=cl, threads=cfg.threads, min_runs=cfg.min_runs,
                              clock=cfg.clock)["a"]
        macs = {i: count_macs(m, tuple(inputs[i].shape)) for i, m in modules.items()}
        total_t, total_m = sum(t.median for t in timings.values()), sum(macs.values())
        for i, sub in modules.items():
            rows.append({
                "model": layer.model, "layer": layer.name, "case": case.id,
                "memory_format": "channels_last" if cl else "nchw", "sublayer": i,
                "module": repr(sub), "input_shape": "x".join(map(str, inputs[i].shape)),
                "macs": macs[i], "mac_share": macs[i] / total_m,
                "median_ms": timings[i].median * 1e3, "time_share": timings[i].median / total_t,
                "gmacs_per_s": macs[i] / timings[i].median / 1e9,
                "sequence_median_ms": whole.median * 1e3, "threads": cfg.threads,
                "clock": cfg.clock,
            })
        am = count_macs(aligned, tuple(xa.shape))
        rows.append({
            "model": layer.model, "layer": layer.name, "case": case.id,
            "memory_format": "channels_last" if cl else "nchw", "sublayer": f"1 aligned x{ALIGN}",
            "module": repr(aligned), "input_shape": "x".join(map(str, xa.shape)),
            "macs": am, "mac_share": float("nan"), "median_ms": ta.median * 1e3,
            "time_share": float("nan"), "gmacs_per_s": am / ta.median / 1e9,
            "sequence_median_ms": whole.median * 1e3, "threads": cfg.threads, "clock": cfg.clock,
        })
    return rows


def target_layers(df: pd.DataFrame) -> pd.DataFrame:
    """Tucker-2 at 1/3 on VGG16 3x3 convs with min(S, T) >= 128 channels."""
    sel = (df.model == "vgg16") & (df.method == "tucker2") & (df.fraction == "1/3") & \
          (df.kernel == "3x3") & (df[["in", "out"]].min(axis=1) >= 128)
    return df[sel]


# --- outputs -------------------------------------------------------------------------------------

def md_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (no tabulate dependency); floats to 3 significant digits."""
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    rows = [[fmt(v) for v in r] for r in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(df: pd.DataFrame, cfg: Config, model: str) -> str:
    cols = {"layer": "layer", "input_shape": "input", "method": "method", "ranks": "ranks",
            "memory_format": "format", "params": "params", "macs": "MACs",
            "mac_reduction": "MAC red.", "median_ms": "median ms", "iqr_ms": "IQR ms",
            "speedup": "speedup", "efficiency": "efficiency"}
    table = df[list(cols)].rename(columns=cols)
    lines = [f"# {model}: per-layer speedup vs MAC reduction ({cfg.device}, batch {cfg.batch}, "
             f"{cfg.threads} thread(s))", "",
             "speedup = original median / decomposed median, same memory format; "
             "efficiency = speedup / MAC reduction. Random weights (timing depends on shapes only). "
             f"Clock: {cfg.clock} ('thread_cpu' = CPU time of the one compute thread, which leaves "
             "out waits for a core on a shared machine).",
             ""]
    tgt = target_layers(df)
    if len(tgt):
        lines += [f"## Target: Tucker-2 at (S/3, T/3), efficiency >= {cfg.target} on VGG16 3x3 "
                  "convs with min(S, T) >= 128", ""]
        t = tgt[["layer", "input_shape", "ranks", "memory_format", "mac_reduction", "speedup",
                 "efficiency"]].copy()
        t["meets"] = t.efficiency >= cfg.target
        lines += [md_table(t), ""]
    lines += ["## All rows", "", md_table(table), ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # scripts only: no display; the library never switches backends
    import matplotlib.pyplot as plt

    layer_names = list(dict.fromkeys(df.layer))
    ncols = 4
    nrows = math.ceil(len(layer_names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.4 * nrows), squeeze=False)
    styles = {("tucker2", "nchw"): ("C0", "o", "-"), ("tucker2", "channels_last"): ("C0", "s", "--"),
              ("cp", "nchw"): ("C1", "^", "-"), ("cp", "channels_last"): ("C1", "v", "--"),
              ("svd", "nchw"): ("C2", "D", "-")}
    for ax, name in zip(axes.flat, layer_names):
        d = df[(df.layer == name) & (df.method != "original")]
        top = max(d.mac_reduction.max(), d.speedup.max(), 1.0) * 1.3
        ax.plot([0.5, top], [0.5, top], color="grey", lw=0.8, label="speedup = MAC red.")
        ax.plot([0.5, top], [0.35, 0.7 * top], color="grey", lw=0.8, ls=":", label="0.7 x MAC red.")
        for (method, fmt), g in d.groupby(["method", "memory_format"]):
            c, m, ls = styles.get((method, fmt), ("k", "x", "-"))
            g = g.sort_values("mac_reduction")
            ax.plot(g.mac_reduction, g.speedup, color=c, marker=m, ls=ls, label=f"{method} {fmt}")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        shape = d.input_shape.iloc[0] if len(d) else ""
        ax.set_title(f"{name} ({shape})", fontsize=9)
        ax.set_xlabel("MAC reduction (x)", fontsize=8)
        ax.set_ylabel("measured speedup (x)", fontsize=8)
    for ax in axes.flat[len(layer_names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_outputs(df: pd.DataFrame, bd: pd.DataFrame, cfg: Config, model: str, extra: dict) -> list[Path]:
    out = Path(cfg.out)
    s = stem(cfg, model)
    paths = [atomic_write_text(out / f"{s}.csv", df.to_csv(index=False)),
             atomic_write_text(out / f"{s}.md", markdown(df, cfg, model))]
    png = out / f"{s}.png"
    plot(df, png, f"{model}: measured speedup vs MAC reduction ({cfg.device}, batch {cfg.batch}, "
                  f"{cfg.threads} thread(s))")
    paths.append(png)
    which = "where the efficiency target is missed" if cfg.breakdown == "misses" else "on every target layer"
    if len(bd):
        paths.append(atomic_write_text(out / f"{s}_breakdown.csv", bd.to_csv(index=False)))
        paths.append(atomic_write_text(out / f"{s}_breakdown.md",
                                       f"# {model}: per-sublayer timings of Tucker-2 (S/3, T/3) "
                                       f"{which}\n\n"
                                       "Each sublayer timed alone on its own input; 'sequence' is "
                                       "the whole decomposed layer; '1 aligned x16' is the core "
                                       "conv with both ranks rounded up to a multiple of 16.\n\n"
                                       + md_table(bd.drop(columns=["module"])) + "\n"))
    else:  # no breakdown in this run: a stale one from an earlier run would contradict it
        for name in (f"{s}_breakdown.csv", f"{s}_breakdown.md"):
            for stale in (out / name, out / f"{name}.json"):
                stale.unlink(missing_ok=True)
    for p in paths:
        write_sidecar(p, extra=extra)
    return paths


# --- driver --------------------------------------------------------------------------------------

def sweep_model(model: str, cfg: Config) -> list[Path]:
    out = Path(cfg.out)
    partial = out / f"{stem(cfg, model)}.partial.csv"
    done = pd.DataFrame()
    if partial.exists() and not cfg.fresh:
        done = pd.read_csv(partial, dtype={"fraction": str, "ranks": str, "kernel": str},
                           keep_default_na=False)
    todo = [l for l in model_layers(model) if not cfg.layers or l.id in cfg.layers]
    skip = set(done.layer) if len(done) else set()
    t0 = time.perf_counter()
    load_start = load1()
    frames = [done] if len(done) else []
    for layer in tqdm(todo, desc=model, unit="layer"):
        if layer.name in skip:
            continue
        frames.append(pd.DataFrame(measure_layer(layer, cfg)))
        atomic_write_text(partial, pd.concat(frames).to_csv(index=False))
    df = pd.concat(frames, ignore_index=True)
    df = df[df.layer.isin([l.name for l in todo])]
    # The breakdown explains target misses with measurements, per sublayer.
    bd_rows = []
    if cfg.breakdown != "none":
        tgt = target_layers(df)
        if cfg.breakdown == "misses":
            tgt = tgt[tgt.efficiency < cfg.target]
        for name in tqdm(list(dict.fromkeys(tgt.layer)), desc=f"{model} breakdown", unit="layer"):
            layer = next(l for l in todo if l.name == name)
            case = Case(layer, "tucker2", FRACTIONS[1])
            bd_rows += breakdown(layer, case, cfg)
    extra = {"config": dataclasses.asdict(cfg), "wall_s": time.perf_counter() - t0,
             "load1_start": load_start, "load1_end": load1(), "resumed_layers": sorted(skip),
             "weights": "random (seeded); latency and MACs depend on shapes only"}
    paths = write_outputs(df, pd.DataFrame(bd_rows), cfg, model, extra)
    partial.unlink(missing_ok=True)
    return paths


def main(argv=None, prog: str | None = None) -> None:
    """Run the sweep; ``prog`` names the command in ``--help`` and in errors."""
    cfg = parse_args(argv, prog)
    t0 = time.perf_counter()
    for model in cfg.models:
        for p in sweep_model(model, cfg):
            print(p)
    print(f"wall {time.perf_counter() - t0:.1f} s, load1 now {load1():.2f}", file=sys.stderr)

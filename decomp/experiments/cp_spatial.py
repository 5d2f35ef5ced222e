"""CP layers' two spatial forms side by side: separable (kh x 1 then 1 x kw) against merged (kh x kw).

For every 3x3 conv of torchvision VGG16 (``decomp.experiments.catalog``, input shapes at
224x224), at CP rank ``ceil(T * fraction)`` (default T/4): the original conv, the CP layer
with ``spatial="separable"`` (1x1, kh x 1 depthwise, 1 x kw depthwise, 1x1) and with
``spatial="merged"`` (1x1, kh x kw depthwise, 1x1), assembled by ``decomp.layers.cp_layers``
with seeded random weights (latency depends on shapes only), timed interleaved in rounds
(``decomp.measure.time_interleaved``: eval, ``inference_mode``, 1 thread, thread CPU clock) in
NCHW and channels_last. Writes ``<out>/vgg16_cp_spatial_cpu_b1_t1.{csv,md}`` with sidecars:
one row per (layer, memory format), ``merged_speedup`` = separable median / merged median.

    python scripts/cp_spatial.py            # results/layers/ (a few minutes on 1 core)
    python scripts/cp_spatial.py --quick    # two layers, short timings, into a temp folder
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from decomp.cli._config import ArgumentParser, add_config_arguments, config_values
from decomp.experiments.catalog import model_layers
from decomp.experiments.runinfo import write_artifacts
from decomp.layers import cp_layers
from decomp.measure import count_macs, time_interleaved


@dataclass
class Config:
    fraction: float = 0.25          # CP rank = ceil(out_channels * this)
    rounds: int = 5                 # interleaved rounds
    min_run_time: float = 0.5       # s of timing per module per layer and format, over all rounds
    min_runs: int = 10              # replicates per module, at least
    channels_last: bool = True      # also time in channels_last
    seed: int = 0                   # weights and input
    out: str = "results/layers"     # output folder (--quick: a temp folder unless given)
    quick: bool = False             # features.2 and features.28 only, 0.05 s


def parse_args(argv=None, prog=None) -> Config:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_config_arguments(p, Config).set_defaults(out=None)
    v = config_values(p.parse_args(argv), Config)
    if v["quick"]:
        v.update(min_run_time=0.05, rounds=2, min_runs=2)
        v["out"] = v["out"] or str(Path(tempfile.gettempdir()) / "decomp_cp_spatial_quick")
    v["out"] = v["out"] or Config().out
    if not 0 < v["fraction"] <= 1:
        p.error(f"argument --fraction: {v['fraction']}: allowed: a number in (0, 1]")
    for name in ("rounds", "min_runs"):
        if v[name] < 1:
            p.error(f"argument --{name.replace('_', '-')}: {v[name]}: allowed: an int >= 1")
    if not v["min_run_time"] > 0:
        p.error(f"argument --min-run-time: {v['min_run_time']}: allowed: seconds > 0")
    return Config(**v)


def _random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module.eval()


def measure(layer, cfg: Config) -> list[dict]:
    conv = layer.build(cfg.seed)
    rank = math.ceil(layer.out_channels * cfg.fraction)
    modules = {"original": conv,
               "separable": _random_(cp_layers(conv, rank, spatial="separable"), cfg.seed),
               "merged": _random_(cp_layers(conv, rank, spatial="merged"), cfg.seed)}
    shape = layer.batched_shape(1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
    rows = []
    for cl in ([False, True] if cfg.channels_last else [False]):
        load = os.getloadavg()[0]
        t = time_interleaved(modules, x, rounds=cfg.rounds, min_run_time=cfg.min_run_time, channels_last=cl,
                             min_runs=cfg.min_runs, threads=1, clock="thread_cpu")
        row = {"layer": layer.name, "in": layer.in_channels, "out": layer.out_channels,
               "input_shape": "x".join(map(str, shape)), "rank": rank,
               "memory_format": "channels_last" if cl else "nchw"}
        for name, m in modules.items():
            row[f"{name}_ms"] = t[name].median * 1e3
            row[f"{name}_iqr_ms"] = t[name].iqr * 1e3
            row[f"{name}_runs"] = t[name].runs
            row[f"{name}_macs"] = count_macs(m, shape)
        row["merged_speedup"] = t["separable"].median / t["merged"].median
        row["separable_vs_original"] = t["original"].median / t["separable"].median
        row["merged_vs_original"] = t["original"].median / t["merged"].median
        row["load1_before"], row["load1_after"] = load, os.getloadavg()[0]
        rows.append(row)
    return rows


def markdown(df: pd.DataFrame, cfg: Config) -> str:
    cols = ["layer", "in", "out", "input_shape", "rank", "memory_format", "original_ms", "separable_ms",
            "merged_ms", "merged_speedup", "separable_vs_original", "merged_vs_original"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    faster = df.groupby("memory_format")["merged_speedup"].agg(
        lambda s: f"{int((s > 1).sum())} of {len(s)} layers, geometric mean x{statistics.geometric_mean(s):.3f}")
    summary = "; ".join(f"{fmt}: merged faster on {v}" for fmt, v in faster.items())
    return (f"# CP layers at rank T*{cfg.fraction:g}: separable vs merged spatial convs, VGG16, CPU batch 1\n\n"
            f"{summary}.\n\n" + "\n".join(lines) + "\n\n"
            "- separable: 1x1, 3x1 depthwise, 1x3 depthwise, 1x1 (Lebedev et al. 2014); merged: 1x1, 3x3 "
            "depthwise, 1x1 (`decomp.layers.cp_layers(spatial=...)`), random weights (latency depends on shapes).\n"
            f"- Medians of {cfg.rounds} interleaved rounds, 1 thread, thread CPU clock (`time.thread_time`), "
            "inference_mode; merged_speedup = separable / merged time; *_vs_original = original / decomposed.\n"
            "- MACs of each module and IQRs in the CSV.\n")


def main(argv=None, prog=None) -> None:
    cfg = parse_args(argv, prog)
    torch.set_num_threads(1)
    out = Path(cfg.out)
    start = time.perf_counter()
    layers = [l for l in model_layers("vgg16") if l.kind == "conv" and l.kernel_size != (1, 1)]
    if cfg.quick:
        layers = [l for l in layers if l.name in ("features.2", "features.28")]
    rows = []
    with torch.inference_mode():
        for layer in layers:
            rows += measure(layer, cfg)
            print(f"{layer.name} done", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    stem = out / "vgg16_cp_spatial_cpu_b1_t1"
    extra = {"config": dataclasses.asdict(cfg), "wall_s": round(time.perf_counter() - start, 1),
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    write_artifacts({stem.with_suffix(".csv"): df.to_csv(index=False), stem.with_suffix(".md"): markdown(df, cfg)},
                    extra=extra)
    print(f"wrote {stem}.csv/.md", file=sys.stderr)

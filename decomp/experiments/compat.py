"""Compatibility table: every torchvision classification (and segmentation) model through every
method of :func:`decomp.decompose`, and whether what comes back runs (``scripts/compat_table.py``).

For each model and method one row: how many layers were decomposed, why the others were left as
they were (grouped, an unsupported type, no cost reduction, a parent that reads ``.weight``), the
error if ``decompose`` refused, the forward check (the decomposed model run once on a random input,
its output shapes compared with the original's, and finite), and params and MACs before and after.

Sized for a small CPU: weights are the builders' random initialisation (no download; compatibility
depends on the architecture, not the values), ranks are ``Fraction(rank)`` of each mode (no spectra
to compute), CP and Tucker-2 run few iterations, and each model runs at the smallest input of
``sizes`` it takes. ``torch.no_grad`` and 1 thread throughout. Rows are appended to
``compat.csv`` as they finish, so a killed run resumes where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import dataclasses
import gc
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

import decomp
from decomp.checks import output_shapes
from decomp.cli._config import ArgumentParser, add_config_arguments, check_output, config_values
from decomp.experiments.runinfo import atomic_write_text, write_sidecar

__all__ = ["Config", "model_names", "check_model", "summary", "main"]

METHODS = ("tucker2", "cp", "svd")
FAMILIES = {"classification": "torchvision.models", "segmentation": "torchvision.models.segmentation"}
CSV, MD = "compat.csv", "compat.md"
# The largest models (hundreds of MB of weights, or a 25088 x 4096 Linear to factorize) go last in
# their family, so that an interrupted run has covered the most models.
HEAVY = re.compile(r"^(vgg|vit_h|vit_l|regnet_y_128gf|regnet_[xy]_32gf|regnet_[xy]_16gf|wide_resnet|efficientnet_v2_l|"
                   r"convnext_large|swin_v2_b|swin_b|maxvit|alexnet)")


@dataclass
class Config:
    out: str = "results/compat"                    # folder of compat.csv / compat.md and their sidecars
    families: tuple = ("classification", "segmentation")  # torchvision model families, in this order
    models: tuple = ()                             # model names (default: every model of the families)
    defer: tuple = ()                              # model names run after every other (the slowest)
    methods: tuple = METHODS                       # decompose(method=...) presets
    rank: float = 0.25                             # Fraction of each mode's channels kept
    cp_max_iter: int = 2                           # CP-ALS sweeps (compatibility, not fit quality)
    tucker_max_iter: int = 1                       # Tucker-2 HOOI sweeps (1: the HOSVD)
    sizes: tuple = (64, 224)                       # square input sizes tried, smallest first (pixels)
    threads: int = 1                               # torch threads
    seed: int = 0                                  # weight initialisation and input
    fresh: bool = False                            # ignore an existing compat.csv


def parse_args(argv=None, prog: str | None = None) -> Config:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, Config)
    cfg = Config(**config_values(parser.parse_args(argv), Config))
    _check(cfg, parser)
    return cfg


def _check(cfg: Config, parser) -> None:
    """Every argument, before any model is built."""
    import torchvision

    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown:
        parser.error(f"argument --families: {unknown}; allowed: {sorted(FAMILIES)}")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        parser.error(f"argument --methods: {bad}; allowed: {list(METHODS)}")
    if not 0 < cfg.rank <= 1:
        parser.error(f"argument --rank: {cfg.rank}; allowed: a fraction in (0, 1]")
    for flag, value in (("--cp-max-iter", cfg.cp_max_iter), ("--tucker-max-iter", cfg.tucker_max_iter),
                        ("--threads", cfg.threads)):
        if value < 1:
            parser.error(f"argument {flag}: {value}; allowed: an int >= 1")
    if not cfg.sizes or min(cfg.sizes) < 1:
        parser.error(f"argument --sizes: {list(cfg.sizes)}; allowed: one or more sizes >= 1 (pixels)")
    known = set(torchvision.models.list_models())
    missing = [m for m in (*cfg.models, *cfg.defer) if m not in known]
    if missing:
        parser.error(f"argument --models / --defer: {missing} are not torchvision models; allowed: names from "
                     "torchvision.models.list_models()")
    check_output(parser, "--out", cfg.out, folder=True)


def model_names(cfg: Config) -> list[tuple[str, str]]:
    """``(family, name)`` of every model to check, in the families' order."""
    import importlib

    import torchvision

    names, seen = [], set()
    for family in cfg.families:
        listed = torchvision.models.list_models(module=importlib.import_module(FAMILIES[family]))
        for name in sorted(listed, key=lambda n: (bool(HEAVY.match(n)), n)):
            if (not cfg.models or name in cfg.models) and name not in seen:
                seen.add(name)
                names.append((family, name))
    return sorted(names, key=lambda fn: fn[1] in cfg.defer)  # stable: the families' order otherwise


def _build(family: str, name: str, seed: int) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"weights": None}
    if family != "classification":
        kwargs["weights_backbone"] = None  # the default would download ImageNet weights
    return torchvision.models.get_model(name, **kwargs).eval()


def _finite(output) -> bool:
    if isinstance(output, torch.Tensor):
        return bool(torch.isfinite(output).all())
    if isinstance(output, dict):
        return all(_finite(v) for v in output.values())
    if isinstance(output, (list, tuple)):
        return all(_finite(v) for v in output)
    return True


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _input_size(model: nn.Module, sizes) -> int:
    """The smallest of ``sizes`` the model runs at."""
    error = None
    for size in sorted(sizes):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return size
        except Exception as e:  # too small for this architecture (a fixed-size ViT, a deep stride)
            error = e
    raise ValueError(f"runs at none of the sizes {list(sizes)}: {_first_line(error)}")


_REASONS = (  # a skip reason's gist: the report's own text varies with each layer's numbers
    (r"^grouped convolution", "grouped conv"),
    (r"^(\w+) is not supported", r"\1 not supported"),
    (r"would not reduce cost", "no cost reduction"),
    (r"^parent reads \.weight directly", "parent reads .weight"),
    (r"^put back as it was", "put back by the forward check"),
    (r"^no method selected for (\w+) layers", r"\1 not selected"),
)


def _gist(reason: str) -> str:
    for pattern, gist in _REASONS:
        m = re.search(pattern, reason)
        if m:
            return m.expand(gist)
    return reason[:60]


def _reasons(report) -> str:
    counts: dict[str, int] = {}
    for row in report.skipped:
        gist = _gist(row.skipped)
        counts[gist] = counts.get(gist, 0) + 1
    return "; ".join(f"{g} x{n}" for g, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def check_model(family: str, name: str, cfg: Config) -> list[dict]:
    """One row per method for model ``name``: what ``decompose`` did and whether the result runs."""
    started = time.perf_counter()
    model = _build(family, name, cfg.seed)
    base = {"model": name, "family": family}
    try:
        size = _input_size(model, cfg.sizes)
    except ValueError as e:
        return [{**base, "method": m, "status": "error", "error": str(e)} for m in cfg.methods]
    shape = (1, 3, size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        reference = output_shapes(model(x))
    rows = []
    build_s = time.perf_counter() - started
    for method in cfg.methods:
        t0 = time.perf_counter()
        row = {**base, "method": method, "input": f"{size}x{size}"}
        try:
            new, report = decomp.decompose(model, method, rank=cfg.rank, input_shape=shape, method_options={
                "cp": {"max_iter": cfg.cp_max_iter}, "tucker2": {"max_iter": cfg.tucker_max_iter}})
        except Exception as e:
            rows.append({**row, "status": "error", "error": _first_line(e), "seconds": time.perf_counter() - t0})
            continue
        try:
            with torch.no_grad():
                out = new(x)
            got = output_shapes(out)
            forward = "ok" if got == reference and _finite(out) else (
                "not finite" if got == reference else f"shapes {got} instead of {reference}")
        except Exception as e:
            forward = f"fails: {_first_line(e)}"
        rows.append({**row, "status": "ok" if forward == "ok" else "broken", "layers": len(report),
                     "decomposed": len(report.decomposed), "skipped": len(report.skipped),
                     "skip_reasons": _reasons(report), "forward": forward,
                     "params_before": report.params_before, "params_after": report.params_after,
                     "macs_before": report.macs_before, "macs_after": report.macs_after,
                     "seconds": round(time.perf_counter() - t0 + build_s / len(cfg.methods), 1)})
        del new, report
        gc.collect()
    return rows


def summary(df: pd.DataFrame, cfg: Config, total: dict[str, int]) -> str:
    """The table's headline: coverage per family and method, and what came back broken."""
    lines = []
    for family in cfg.families:
        part = df[df.family == family]
        if not total.get(family):
            continue
        models = part.model.nunique()
        lines.append(f"- {family}: {models} of {total[family]} torchvision models checked")
        for method in cfg.methods:
            m = part[part.method == method]
            ok, broken, err = (m.status == "ok").sum(), (m.status == "broken").sum(), (m.status == "error").sum()
            some = ((m.status == "ok") & (m.decomposed.fillna(0) > 0)).sum()
            lines.append(f"  - `{method}`: {ok} run after decomposition ({some} with at least one layer "
                         f"decomposed), {broken} broken, {err} refused or failed")
    return "\n".join(lines)


def _si(n) -> str:
    if n is None or (isinstance(n, float) and n != n):
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def markdown(df: pd.DataFrame, cfg: Config, total: dict[str, int]) -> str:
    head = ["model", "method", "input", "status", "decomposed", "skipped (why)", "forward", "params",
            "MACs", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.itertuples():
        get = lambda k: getattr(r, k, None)  # noqa: E731
        decomposed = "" if pd.isna(get("layers")) else f"{int(r.decomposed)} of {int(r.layers)}"
        skipped = "" if pd.isna(get("skipped")) or not r.skipped else f"{int(r.skipped)} ({r.skip_reasons})"
        params = "" if pd.isna(get("params_before")) else f"{_si(r.params_before)} -> {_si(r.params_after)}"
        macs = "" if pd.isna(get("macs_before")) else f"{_si(r.macs_before)} -> {_si(r.macs_after)}"
        forward = (r.forward if isinstance(get("forward"), str) else "") or (
            r.error if isinstance(get("error"), str) else "")
        seconds = "" if pd.isna(get("seconds")) else f"{r.seconds:.0f}"
        lines.append("| " + " | ".join([r.model, r.method, str(get("input") or ""), r.status, decomposed,
                                        skipped, forward.replace("|", "/"), params, macs, seconds]) + " |")
    return (f"# decomp compatibility: torchvision models x methods\n\n{summary(df, cfg, total)}\n\n"
            f"Settings: `rank=Fraction({cfg.rank})` for every layer, CP-ALS {cfg.cp_max_iter} sweeps, "
            f"Tucker-2 {cfg.tucker_max_iter} HOOI sweep(s), random initial weights (the builders' own; "
            "compatibility depends on the architecture), batch 1 at the smallest of "
            f"{'/'.join(map(str, cfg.sizes))} px each model takes (the `input` column), CPU, "
            f"{cfg.threads} thread, `torch.no_grad`. `status`: ok = the decomposed model runs and its "
            "output shapes match the original's (and are finite); broken = they do not; error = "
            "`decompose` refused or failed. MACs are counted at that input. Command and environment: "
            f"`{MD}.json`.\n\n" + "\n".join(lines) + "\n")


def _write(df: pd.DataFrame, cfg: Config, total: dict[str, int], extra: dict) -> None:
    out = Path(cfg.out)
    atomic_write_text(out / CSV, df.to_csv(index=False))
    atomic_write_text(out / MD, markdown(df.sort_values(["family", "model"], kind="stable"), cfg, total))
    for name in (CSV, MD):
        write_sidecar(out / name, extra=extra)


def main(argv=None, prog: str | None = None) -> int:
    cfg = parse_args(argv, prog)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    done = pd.DataFrame()
    if (out / CSV).exists() and not cfg.fresh:
        done = pd.read_csv(out / CSV, keep_default_na=False, na_values=[""])
    names = model_names(cfg)
    total = {f: sum(1 for fam, _ in names if fam == f) for f in cfg.families}
    have = set(zip(done.model, done.method)) if len(done) else set()
    frames = [done] if len(done) else []
    started = time.perf_counter()
    for family, name in tqdm(names, desc="compat", unit="model"):
        methods = [m for m in cfg.methods if (name, m) not in have]
        if not methods:
            continue
        rows = check_model(family, name, dataclasses.replace(cfg, methods=tuple(methods)))
        frames.append(pd.DataFrame(rows))
        df = pd.concat(frames, ignore_index=True)
        _write(df, cfg, total, {"config": dataclasses.asdict(cfg), "wall_s": time.perf_counter() - started,
                                "resumed_rows": len(have)})
        gc.collect()
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    print(summary(df, cfg, total) if len(df) else "nothing checked", file=sys.stderr)
    return 0

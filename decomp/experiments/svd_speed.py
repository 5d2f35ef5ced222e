"""Truncated SVD of an fc6-sized layer: the randomized path at its defaults against the exact one.

For each spectrum, one random ``out x in`` matrix (VGG16 fc6: 4096 x 25088) whose singular
values follow ``i^-alpha`` (a power law, as trained layers' spectra roughly do; ``alpha`` 0.5
leaves a heavy tail, the hard case for a range finder), built as ``G1 diag(sigma) G2`` from
seeded Gaussians (its exact spectrum is smeared, and the optimum is computed, not assumed).
Side by side, interleaved in ``repeats`` rounds, on ``threads`` CPU threads:

* ``exact``: ``decomp.svd.truncated_svd(algorithm="exact")``, the float64 Gram
  eigendecomposition (the Eckart-Young optimum, and ``svd_linear``'s path before ``algorithm``);
* ``auto``: ``truncated_svd`` at its defaults (what ``svd_linear(layer, rank)`` runs);
* ``svd_lowrank``: ``torch.svd_lowrank(W, q=576, niter=2)``, truncated to the rank.

Every error is ``||W - W_r||_F / ||W||_F`` of the returned factors (for ``svd_lowrank``, of its
rank-r truncation, from its singular values: its factors are an orthogonal projection too),
and ``error ratio`` divides it by the exact path's. Times: wall clock and process CPU time
(all threads of this process: waits for a core on a shared machine are left out).

    python scripts/svd_speed.py               # results/svd/ (about 10 minutes on 2 cores)
    python scripts/svd_speed.py --quick       # 1024 x 6272 at rank 128, into a temp folder
"""

from __future__ import annotations

import dataclasses
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
from decomp.experiments.runinfo import write_artifacts
from decomp.svd import resolve_algorithm, truncated_svd


@dataclass
class Config:
    out_features: int = 4096        # rows of W (VGG16 fc6)
    in_features: int = 25088        # columns of W
    rank: int = 512                 # kept singular values
    lowrank_q: int = 576            # torch.svd_lowrank's q (rank + 64)
    lowrank_niter: int = 2          # torch.svd_lowrank's niter
    alphas: tuple[float, ...] = (0.5, 1.0)  # spectra: sigma_i = i^-alpha
    repeats: int = 3                # interleaved rounds of the fast methods (exact: once)
    threads: int = 2                # torch intra-op threads
    seed: int = 0                   # matrix and randomized seed
    out: str = "results/svd"        # output folder (--quick: a temp folder unless given)
    quick: bool = False             # 1024 x 6272 at rank 128 (q 192), 1 round


def parse_args(argv=None, prog=None) -> Config:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_config_arguments(p, Config).set_defaults(out=None)
    v = config_values(p.parse_args(argv), Config)
    if v["quick"]:
        v.update(out_features=1024, in_features=6272, rank=128, lowrank_q=192, repeats=1)
        v["out"] = v["out"] or str(Path(tempfile.gettempdir()) / "decomp_svd_quick")
    v["out"] = v["out"] or Config().out
    for name in ("out_features", "in_features", "rank", "lowrank_q", "repeats", "threads"):
        if v[name] < 1:
            p.error(f"argument --{name.replace('_', '-')}: {v[name]}: allowed: an int >= 1")
    if not v["rank"] <= min(v["out_features"], v["in_features"]) or v["lowrank_q"] < v["rank"]:
        p.error(f"argument --rank: {v['rank']}: allowed: 1 <= rank <= lowrank_q ({v['lowrank_q']}) "
                f"and rank <= min(out, in) ({min(v['out_features'], v['in_features'])})")
    if not v["alphas"] or any(a < 0 for a in v["alphas"]):
        p.error(f"argument --alphas: {v['alphas']}: allowed: one or more numbers >= 0")
    return Config(**v)


def power_law_matrix(rows: int, cols: int, alpha: float, seed: int) -> torch.Tensor:
    """``G1 diag(i^-alpha) G2`` (float32), Gaussians scaled so the product has the spectrum's scale."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    sigma = torch.arange(1, k + 1, dtype=torch.float32) ** -alpha
    left = torch.randn(rows, k, generator=g) / k**0.5
    right = torch.randn(k, cols, generator=g) / cols**0.5
    return (left * sigma) @ right


def _lowrank_error(w: torch.Tensor, rank: int, q: int, niter: int, seed: int) -> float:
    torch.manual_seed(seed)  # svd_lowrank draws from the global RNG
    _, s, _ = torch.svd_lowrank(w, q=q, niter=niter)
    total = float(torch.linalg.vector_norm(w, dtype=torch.float64) ** 2)
    return (max(total - float((s[:rank].double() ** 2).sum()), 0.0) / total) ** 0.5


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def measure_spectrum(alpha: float, cfg: Config) -> list[dict]:
    w = power_law_matrix(cfg.out_features, cfg.in_features, alpha, cfg.seed)
    methods = {
        "exact": lambda: truncated_svd(w, cfg.rank, algorithm="exact").rel_error,
        "auto": lambda: truncated_svd(w, cfg.rank, seed=cfg.seed).rel_error,
        "svd_lowrank": lambda: _lowrank_error(w, cfg.rank, cfg.lowrank_q, cfg.lowrank_niter, cfg.seed),
    }
    runs: dict[str, list] = {name: [] for name in methods}
    load = os.getloadavg()[0]
    for round_ in range(cfg.repeats):  # exact once (tens of seconds), the fast two every round
        for name, fn in methods.items():
            if name == "exact" and round_ > 0:
                continue
            runs[name].append(_timed(fn))
    exact_err, exact_wall, exact_cpu = runs["exact"][0]
    med = {n: (statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs)) for n, rs in runs.items()}
    rows = []
    for name, rs in runs.items():
        err = rs[0][0]
        wall, cpu = med[name]
        rows.append({
            "alpha": alpha, "shape": f"{cfg.out_features}x{cfg.in_features}", "rank": cfg.rank, "method": name,
            "path": resolve_algorithm((cfg.out_features, cfg.in_features), cfg.rank) if name == "auto" else name,
            "rel_error": err, "error_ratio": err / exact_err,
            "cpu_s": cpu, "wall_s": wall, "cpu_vs_exact": cpu / exact_cpu, "wall_vs_exact": wall / exact_wall,
            "cpu_vs_svd_lowrank": cpu / med["svd_lowrank"][1], "wall_vs_svd_lowrank": wall / med["svd_lowrank"][0],
            "runs": len(rs), "cpu_min_s": min(r[2] for r in rs), "cpu_max_s": max(r[2] for r in rs),
            "load1_before": load, "load1_after": os.getloadavg()[0],
        })
    return rows


def markdown(df: pd.DataFrame, cfg: Config) -> str:
    cols = ["alpha", "method", "path", "rel_error", "error_ratio", "cpu_s", "cpu_vs_exact", "cpu_vs_svd_lowrank",
            "wall_s", "wall_vs_exact"]
    fmt = {"rel_error": "{:.5f}", "error_ratio": "{:.5f}", "cpu_s": "{:.2f}", "wall_s": "{:.2f}",
           "cpu_vs_exact": "{:.3f}", "cpu_vs_svd_lowrank": "{:.3f}", "wall_vs_exact": "{:.3f}", "alpha": "{:g}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(v) for c, v in zip(cols, r)) + " |")
    return (f"# Truncated SVD of a {cfg.out_features} x {cfg.in_features} matrix at rank {cfg.rank}\n\n"
            + "\n".join(lines) + "\n\n"
            f"- W = G1 diag(i^-alpha) G2, seeded Gaussians (seed {cfg.seed}); error = ||W - W_r||_F / ||W||_F of the "
            "returned factors; error_ratio = error / the exact path's (the Eckart-Young optimum).\n"
            f"- exact: float64 Gram eigendecomposition; auto: `truncated_svd` defaults (what `svd_linear` runs); "
            f"svd_lowrank: `torch.svd_lowrank(W, q={cfg.lowrank_q}, niter={cfg.lowrank_niter})` truncated to rank "
            f"{cfg.rank}.\n"
            f"- Times: median of {cfg.repeats} interleaved rounds (exact: 1), {cfg.threads} torch threads; cpu_s = "
            "process CPU time (all threads), wall_s = wall clock; ratios within one spectrum, one run.\n")


def main(argv=None, prog=None) -> None:
    cfg = parse_args(argv, prog)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    start = time.perf_counter()
    rows = [r for a in cfg.alphas for r in measure_spectrum(a, cfg)]
    df = pd.DataFrame(rows)
    stem = out / f"linear_{cfg.out_features}x{cfg.in_features}_r{cfg.rank}"
    extra = {"config": dataclasses.asdict(cfg), "wall_s": round(time.perf_counter() - start, 1),
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    write_artifacts({stem.with_suffix(".csv"): df.to_csv(index=False), stem.with_suffix(".md"): markdown(df, cfg)},
                    extra=extra)
    print(f"wrote {stem}.csv/.md", file=sys.stderr)

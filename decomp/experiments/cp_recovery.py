"""CP-ALS exact-rank recovery: how often ``cp_als`` at its defaults finds a kernel of known CP rank.

Each kernel is ``sum_r a_r (x) b_r (x) c_r (x) d_r`` with i.i.d. standard normal factors
(float64, then stored as float32 like a conv weight), decomposed at its own rank ``R``; it counts
as recovered when ``||X - X_hat|| / ||X|| <= 1e-3``. Two kinds of sets:

* ``broad``: ``broad_n`` kernels with ``T, S`` uniform in ``[channels_min, channels_max]``,
  ``(kh, kw)`` drawn from ``kernels`` (square: 3x3 three times as often as 5x5) and ``R``
  uniform in ``[1, min(T, S)]``;
* ``kx1``: ``rect_n`` kernels drawn the same way with ``(kh, kw)`` from ``rect_kernels`` (3x1,
  1x3): with a mode of size 1 the kernel is a 3-way ``T x S x 3`` tensor whose rank may be many
  times its spatial size, the hardest shapes for ALS; reported apart from ``broad``;
* one set per hard configuration (``hard``, ``hard_n`` kernels each): ranks comparable to or
  above the spatial and channel sizes, where plain ALS meets long swamps.

Every kernel runs under each variant of ``variants``: ``defaults`` (``cp_als(x, R)``), and the
ablations ``no_restarts`` (``restarts=0``) and ``plain_100`` (the defaults before issue 14:
plain ALS, no line search or restarts, 100 sweeps). Kernel ``i`` of a set is drawn from
``torch.Generator().manual_seed(seed + 1_000_000 * set_index + i)`` (set_index 0 broad, 1 kx1,
2... the hard ones); ``cp_als`` gets ``seed=0``.
Writes to ``out`` (``results/cp_als``):

    recovery.csv / .md          one row per (set, variant): recovered share with its Wilson
                                95% interval, converged share, sweeps and restarts, CPU time
    recovery_kernels.csv        one row per (kernel, variant)
    each with a .json sidecar (command, git sha, versions, CPU, config, wall time)

    python scripts/cp_recovery.py              # the committed run (about 10 minutes on 2 cores)
    python scripts/cp_recovery.py --quick      # a few kernels per set, into a temp folder
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from decomp.cli._config import ArgumentParser, add_config_arguments, config_values
from decomp.cp_als import CPConvergenceWarning, cp_als, cp_to_tensor
from decomp.experiments.runinfo import write_artifacts

RECOVERED = 1e-3  # relative error at or below which a kernel counts as recovered
VARIANTS = {
    "defaults": {},
    "no_restarts": {"restarts": 0},
    "plain_100": {"max_iter": 100, "tol": 0.0, "line_search": False, "restarts": 0},
}
KERNEL_CHOICES = ("3x3", "5x5", "3x1", "1x3", "1x1", "7x7")


@dataclass
class Config:
    broad_n: int = 1000                 # kernels in the broad set
    channels_min: int = 4               # T and S of the broad set: uniform in [min, max]
    channels_max: int = 64
    kernels: tuple[str, ...] = ("3x3", "3x3", "3x3", "5x5")  # broad set's (kh x kw) draws; repeats weigh
    rect_n: int = 200                   # kernels in the kx1 set
    rect_kernels: tuple[str, ...] = ("3x1", "1x3")  # the kx1 set's (kh x kw) draws
    hard: tuple[str, ...] = ("10x12x3x3:12", "64x64x3x3:24")  # T x S x kh x kw : rank
    hard_n: int = 200                   # kernels per hard configuration
    variants: tuple[str, ...] = ("defaults", "no_restarts", "plain_100")
    threads: int = 1                    # torch intra-op threads
    seed: int = 0                       # base seed of the kernels
    out: str = "results/cp_als"         # output folder (--quick: a temp folder unless given)
    quick: bool = False                 # 20 broad and 10 per hard configuration


def _parse_hard(spec: str) -> tuple[tuple[int, int, int, int], int]:
    shape, _, rank = spec.partition(":")
    dims = tuple(int(v) for v in shape.split("x"))
    if len(dims) != 4 or not rank.isdigit() or min(dims) < 1 or int(rank) < 1:
        raise ValueError(spec)
    return dims, int(rank)


def parse_args(argv=None, prog=None) -> Config:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_config_arguments(p, Config).set_defaults(out=None)
    v = config_values(p.parse_args(argv), Config)
    if v["quick"]:
        v.update(broad_n=20, hard_n=10, rect_n=6)
        v["out"] = v["out"] or str(Path(tempfile.gettempdir()) / "decomp_cp_recovery_quick")
    v["out"] = v["out"] or Config().out
    for spec in v["hard"]:
        try:
            _parse_hard(spec)
        except ValueError:
            p.error(f"argument --hard: {spec!r}: allowed: TxSxKHxKW:RANK with positive ints, e.g. 10x12x3x3:12")
    for name in ("kernels", "rect_kernels"):
        bad = [k for k in v[name] if k not in KERNEL_CHOICES]
        if bad or not v[name]:
            p.error(f"argument --{name.replace('_', '-')}: {' '.join(bad) or '(none)'}: allowed: "
                    f"{' '.join(KERNEL_CHOICES)}")
    bad = [k for k in v["variants"] if k not in VARIANTS]
    if bad or not v["variants"]:
        p.error(f"argument --variants: {' '.join(bad) or '(none)'}: allowed: {' '.join(VARIANTS)}")
    if not 1 <= v["channels_min"] <= v["channels_max"]:
        p.error(f"argument --channels-min/--channels-max: {v['channels_min']}..{v['channels_max']}: "
                "allowed: 1 <= min <= max")
    for name in ("broad_n", "hard_n", "rect_n", "threads"):
        if v[name] < (1 if name == "threads" else 0):
            p.error(f"argument --{name.replace('_', '-')}: {v[name]}: allowed: an int >= 0")
    return Config(**v)


def exact_cp_kernel(shape, rank: int, gen: torch.Generator) -> torch.Tensor:
    """Float32 kernel of CP rank ``rank``: i.i.d. standard normal factors, unit weights."""
    factors = [torch.randn(n, rank, generator=gen, dtype=torch.float64) for n in shape]
    return cp_to_tensor(torch.ones(rank, dtype=torch.float64), factors).float()


def kernel_sets(cfg: Config) -> dict[str, list[tuple[tuple[int, ...], int, int]]]:
    """set name -> [(shape, rank, kernel seed)], drawn deterministically from ``cfg.seed``."""
    sets = {"broad": _random_set(cfg, cfg.broad_n, cfg.kernels, 0),
            "kx1": _random_set(cfg, cfg.rect_n, cfg.rect_kernels, 1)}
    for j, spec in enumerate(cfg.hard, start=2):
        shape, rank = _parse_hard(spec)
        sets[spec] = [(shape, rank, cfg.seed + 1_000_000 * j + i) for i in range(cfg.hard_n)]
    return sets


def _random_set(cfg: Config, n: int, kernels, index: int) -> list[tuple[tuple[int, ...], int, int]]:
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_000 * index)
    out = []
    for i in range(n):
        t, s = (int(torch.randint(cfg.channels_min, cfg.channels_max + 1, (1,), generator=gen)) for _ in range(2))
        kh, kw = (int(v) for v in kernels[int(torch.randint(len(kernels), (1,), generator=gen))].split("x"))
        rank = int(torch.randint(1, min(t, s) + 1, (1,), generator=gen))
        out.append(((t, s, kh, kw), rank, cfg.seed + 1_000_000 * index + i))
    return out


def kruskal_unique(shape, rank: int) -> bool:
    """Kruskal's sufficient condition for a unique CP model with generic factors:
    sum_n min(I_n, R) >= 2R + 3 (k-ranks of generic Gaussian factors)."""
    return sum(min(n, rank) for n in shape) >= 2 * rank + 3


def run_kernel(shape, rank: int, kseed: int, variant: str) -> dict:
    x = exact_cp_kernel(shape, rank, torch.Generator().manual_seed(kseed))
    c0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CPConvergenceWarning)  # recorded as `converged` below
        res = cp_als(x, rank, **VARIANTS[variant])
    return {"shape": "x".join(map(str, shape)), "rank": rank, "kernel_seed": kseed, "variant": variant,
            "kruskal_unique": kruskal_unique(shape, rank), "rel_error": res.rel_error,
            "recovered": res.rel_error <= RECOVERED, "converged": res.converged, "stop": res.stop,
            "sweeps": res.n_iter, "restarts": res.restarts, "cpu_s": time.process_time() - c0}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% for z = 1.96)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (name, variant), g in df.groupby(["set", "variant"], sort=False):
        k, n = int(g["recovered"].sum()), len(g)
        lo, hi = wilson(k, n)
        rows.append({"set": name, "variant": variant, "kernels": n, "recovered": k, "recovered_pct": 100 * k / n,
                     "wilson95_lo_pct": 100 * lo, "wilson95_hi_pct": 100 * hi,
                     "converged_pct": 100 * g["converged"].mean(), "sweeps_mean": g["sweeps"].mean(),
                     "sweeps_max": int(g["sweeps"].max()), "restarts_mean": g["restarts"].mean(),
                     "cpu_s_mean": g["cpu_s"].mean(), "cpu_s_total": g["cpu_s"].sum()})
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, cfg: Config) -> str:
    cols = ["set", "variant", "kernels", "recovered_pct", "wilson95_lo_pct", "wilson95_hi_pct", "converged_pct",
            "sweeps_mean", "sweeps_max", "restarts_mean", "cpu_s_mean"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary[cols].itertuples(index=False):
        cells = [f"{v:.1f}" if isinstance(v, float) and c != "cpu_s_mean" else
                 (f"{v:.3f}" if c == "cpu_s_mean" else str(v)) for c, v in zip(cols, r)]
        lines.append("| " + " | ".join(cells) + " |")
    kernels = ", ".join(sorted(set(cfg.kernels)))
    return ("# CP-ALS exact-rank recovery (relative error <= 1e-3)\n\n" + "\n".join(lines) + "\n\n"
            f"- broad: {cfg.broad_n} kernels, T, S uniform in [{cfg.channels_min}, {cfg.channels_max}], "
            f"kh x kw drawn from {list(cfg.kernels)} ({kernels}), rank uniform in [1, min(T, S)]; kx1: "
            f"{cfg.rect_n} kernels drawn the same way from {list(cfg.rect_kernels)}; hard: "
            f"{cfg.hard_n} kernels per configuration T x S x kh x kw : rank. Factors i.i.d. N(0, 1), unit "
            "weights, kernels stored in float32; kernel seeds in `recovery_kernels.csv`.\n"
            "- defaults: `cp_als(x, R)` (max_iter=3000, relative tol=1e-5, float32 floor 1e-5, line search, "
            "up to 2 restarts); no_restarts: restarts=0; plain_100: plain ALS, 100 sweeps, no line search or "
            "restarts (the sweep limit and ALS before issue 14).\n"
            f"- {cfg.threads} torch thread(s); cpu_s_mean: process CPU seconds per kernel. "
            "Wilson 95% interval of the recovered share.\n")


def main(argv=None, prog=None) -> None:
    cfg = parse_args(argv, prog)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    start = time.perf_counter()
    jobs = [(name, *k, v) for name, ks in kernel_sets(cfg).items() for k in ks for v in cfg.variants]
    rows = [{"set": name, **run_kernel(shape, rank, kseed, v)}
            for name, shape, rank, kseed, v in tqdm(jobs, desc="cp recovery", file=sys.stderr, mininterval=10)]
    df = pd.DataFrame(rows)
    summary = summarise(df)
    extra = {"config": dataclasses.asdict(cfg), "recovered_at_or_below": RECOVERED,
             "variants": {v: VARIANTS[v] for v in cfg.variants}, "wall_s": round(time.perf_counter() - start, 1),
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "load_avg_at_end": os.getloadavg()}
    write_artifacts({out / "recovery_kernels.csv": df.to_csv(index=False),
                     out / "recovery.csv": summary.to_csv(index=False),
                     out / "recovery.md": markdown(summary, cfg)}, extra=extra)
    print(f"wrote {out}/recovery.*", file=sys.stderr)

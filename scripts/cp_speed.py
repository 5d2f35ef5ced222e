"""CP-ALS speed and fit: ``decomp.cp_als.cp_als`` against ``tensorly.decomposition.parafac``.

Part 1, for (T, T, 3, 3) kernels with T in ``sizes`` at ranks T // d for d in ``rank_divisors``:
both algorithms start from the same initial factors (``svd_init``, computed once per case and
passed to both) and run exactly ``n_iter`` ALS sweeps (tol = 0). Timed runs of the two are
interleaved (tensorly, ours, tensorly, ours, ...) so machine noise hits both alike; the median
over ``repeats`` is reported with the min and max in the CSV. The init time is measured
separately and is in neither algorithm's time.

Part 1 runs plain ALS on our side (``line_search=False, restarts=0``): the same iterates as
tensorly's, so the ratio is the cost of a sweep.

Part 2: the time to CP-decompose every 3x3 conv of torchvision's ``vgg16()`` except the first
at rank out_channels // ``vgg_rank_divisor`` with ``cp_als``'s default settings (SVD init,
up to 3000 sweeps, relative tol 1e-5, line search, up to 2 restarts), each timed once, plus
``balance_cp``, as ``decomp.cp.cp_conv2d`` does.

Part 3, defaults against defaults: for one VGG16 conv per size in ``defaults_sizes`` (the first
(T, T, 3, 3) layer of each), ``cp_als`` at its defaults against ``tensorly.decomposition.parafac``
at its own (``n_iter_max=100``, ``tol=1e-8`` on the absolute change, tensorly's SVD init),
interleaved, once each: time, sweeps and final error of both.

All kernels hold random weights of torchvision's VGG init (kaiming normal, fan_out, ReLU gain),
seeded. Writes to ``out_dir`` (default ``results/cp_als``):

    cp_als_vs_tensorly.csv / .md     part 1, one row per (shape, rank)
    vgg16_all_convs.csv / .md        part 2, one row per layer and a total row
    each with a ``.json`` sidecar (command, git sha, versions, hardware, threads, settings)

    python scripts/cp_speed.py            # the full run behind results/cp_als (several minutes)
    python scripts/cp_speed.py --quick    # smoke test: tiny shapes, writes to a temp folder
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a 2-core machine
# shared with other jobs, spinning workers wait out whole scheduler slices at every parallel op
# (measured here under load: 668 ms per 512x512x3x3 rank-128 sweep with the default policy,
# 53 ms with PASSIVE). Applies to both algorithms alike; an OMP_WAIT_POLICY already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file without installing the package

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from decomp.cp_als import balance_cp, cp_als, cp_tensorly, svd_init  # noqa: E402
from decomp.experiments.runinfo import atomic_write_text, write_sidecar  # noqa: E402
from decomp.cli._config import add_config_arguments, config_values  # noqa: E402


@dataclass
class Config:
    sizes: tuple[int, ...] = (64, 128, 256, 512)  # channels T = S of the (T, S, 3, 3) kernels
    rank_divisors: tuple[int, ...] = (4, 2)  # rank R = T // d for each d
    n_iter: int = 25  # ALS sweeps run by both algorithms (tol = 0)
    repeats: int = 3  # timed runs per algorithm and case, interleaved; median reported
    vgg_rank_divisor: int = 4  # VGG16 part: rank = out_channels // this
    vgg: bool = True  # run part 2 (all VGG16 3x3 convs but the first)
    defaults_sizes: tuple[int, ...] = (64, 128, 256, 512)  # part 3: channels of the (T, T, 3, 3) layers; () skips it
    seed: int = 0  # seed of the kernels' weights and of the SVD init
    threads: int = 2  # torch intra-op threads
    device: str = "cpu"  # where the decompositions run
    out_dir: str = "results/cp_als"  # output folder (--quick: a temp folder unless given)
    quick: bool = False  # smoke test: sizes (16, 32), 3 sweeps, 1 repeat, 3 VGG16 layers


def parse_args(argv=None) -> Config:
    p = add_config_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), Config)
    p.set_defaults(out_dir=None)  # None: not given, so --quick may pick a temporary folder
    ns = config_values(p.parse_args(argv), Config)
    if ns["quick"]:
        ns.update(sizes=(16, 32), n_iter=3, repeats=1, defaults_sizes=(64,))
    if ns["out_dir"] is None:
        ns["out_dir"] = str(Path(tempfile.gettempdir()) / "decomp_cp_als_quick") if ns["quick"] else Config().out_dir
    if ns["repeats"] < 1 or ns["n_iter"] < 1:
        p.error(f"Got repeats={ns['repeats']}, n_iter={ns['n_iter']}. However, both must be >= 1.")
    return Config(**ns)


# ----------------------------------------------------------------------------- helpers


def vgg_kernel(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random conv weight as torchvision's VGG initialises it (kaiming normal, fan_out, ReLU)."""
    w = torch.empty(shape)
    return nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=torch.Generator().manual_seed(seed))


def timed(fn, device: str):
    """(result, wall seconds) of one call, CUDA synchronised before and after."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def markdown_table(df: pd.DataFrame, floatfmt: dict[str, str]) -> str:
    """A GitHub Markdown table; numeric columns right-aligned, formats per column."""
    def cell(col, v):
        if isinstance(v, float) and col in floatfmt:
            return format(v, floatfmt[col])
        return "" if v is None or (isinstance(v, float) and v != v) else str(v)

    rows = [[cell(c, v) for c, v in zip(df.columns, r)] for r in df.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, stem: Path, title: str, notes: list[str], floatfmt: dict[str, str], extra: dict,
                md_columns: list[str] | None = None):
    """``stem``.csv (all columns) and ``stem``.md (``md_columns``, title and notes), with sidecars."""
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write_text(csv, df.to_csv(index=False))
    table = markdown_table(df[md_columns] if md_columns else df, floatfmt)
    text = f"# {title}\n\n" + table + "\n" + "".join(f"- {n}\n" for n in notes)
    atomic_write_text(md, text)
    for path in (csv, md):
        write_sidecar(path, extra=extra)


# ----------------------------------------------------------------------------- part 1


def compare_case(t: int, rank: int, cfg: Config) -> dict:
    load1 = os.getloadavg()[0]
    x = vgg_kernel((t, t, 3, 3), cfg.seed).to(cfg.device)
    init, init_s = timed(lambda: svd_init(x, rank, seed=cfg.seed), cfg.device)
    run = dict(max_iter=cfg.n_iter, tol=0.0, init=init)
    plain = dict(line_search=False, restarts=0)  # tensorly's iterates: a sweep against a sweep
    times = {"tensorly": [], "ours": []}
    results = {}
    for _ in range(cfg.repeats):  # interleaved: tensorly, ours, tensorly, ours, ...
        results["tensorly"], s = timed(lambda: cp_tensorly(x, rank, **run), cfg.device)
        times["tensorly"].append(s)
        results["ours"], s = timed(lambda: cp_als(x, rank, **run, **plain), cfg.device)
        times["ours"].append(s)
    tl_s, our_s = statistics.median(times["tensorly"]), statistics.median(times["ours"])
    tl_err, our_err = results["tensorly"].rel_error, results["ours"].rel_error
    return {
        "shape": f"{t}x{t}x3x3", "rank": rank, "iterations": cfg.n_iter,
        "tensorly time s": tl_s, "ours time s": our_s, "speedup x": tl_s / our_s,
        "tensorly rel. error": tl_err, "ours rel. error": our_err, "error ratio": our_err / tl_err,
        "init time s": init_s,
        "tensorly time min s": min(times["tensorly"]), "tensorly time max s": max(times["tensorly"]),
        "ours time min s": min(times["ours"]), "ours time max s": max(times["ours"]),
        "ours ms per iteration": 1e3 * our_s / cfg.n_iter,
        "load avg 1 min before": load1, "load avg 1 min after": os.getloadavg()[0],
    }


def run_comparison(cfg: Config, out: Path) -> pd.DataFrame:
    cases = [(t, t // d) for t in cfg.sizes for d in cfg.rank_divisors if t // d >= 1]
    compare_case(8, 2, dataclasses.replace(cfg, n_iter=2, repeats=1))  # warm-up, not recorded
    start = time.perf_counter()
    rows = [compare_case(t, r, cfg) for t, r in tqdm(cases, desc="cp_als vs tensorly", file=sys.stderr)]
    df = pd.DataFrame(rows)
    notes = [
        f"Kernels: random weights of torchvision's VGG init (kaiming normal, fan_out, ReLU), seed {cfg.seed}.",
        f"Both start from the same factors (`svd_init`, seed {cfg.seed}; its time, column `init time s` in the "
        f"CSV, is in neither) and run exactly {cfg.n_iter} plain ALS sweeps (tol=0; ours with "
        "line_search=False, restarts=0).",
        f"Times: median of {cfg.repeats} interleaved runs (min/max in the CSV), {cfg.device}, "
        f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
        "(the machine's load average per case is in the CSV). Speedup = tensorly time / ours time; "
        "error ratio = ours rel. error / tensorly rel. error.",
        "Rel. error = ||X - X_hat|| / ||X|| from the full reconstruction, same code for both.",
    ]
    fmt = {c: ".3f" for c in df.columns if c.endswith(" s")} | {"speedup x": ".1f", "error ratio": ".6f",
           "tensorly rel. error": ".5f", "ours rel. error": ".5f", "ours ms per iteration": ".1f"}
    write_table(df, out / "cp_als_vs_tensorly", "CP-ALS (ours) vs tensorly.parafac, same init and sweeps",
                notes, fmt, _extra(cfg, start), md_columns=list(df.columns[:9]))
    return df


# ----------------------------------------------------------------------------- part 2


def vgg16_convs(cfg: Config) -> list[tuple[str, nn.Conv2d]]:
    from torchvision.models import vgg16

    torch.manual_seed(cfg.seed)  # torchvision initialises from the global RNG
    model = vgg16(weights=None)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    return convs[1:4] if cfg.quick else convs[1:]


def run_vgg16(cfg: Config, out: Path) -> pd.DataFrame:
    rows = []
    start = time.perf_counter()
    for name, conv in tqdm(vgg16_convs(cfg), desc="vgg16 convs", file=sys.stderr):
        w = conv.weight.detach().to(cfg.device)
        rank = max(1, w.shape[0] // cfg.vgg_rank_divisor)

        def decompose():
            res = cp_als(w, rank)
            balance_cp(res)
            return res

        load1 = os.getloadavg()[0]
        res, s = timed(decompose, cfg.device)
        rows.append({"layer": name,
                     "shape": "x".join(map(str, w.shape)), "rank": rank, "time s": s,
                     "rel. error": res.rel_error, "iterations": res.n_iter, "converged": res.converged,
                     "restarts": res.restarts, "stop": res.stop, "load avg 1 min before": load1})
    df = pd.DataFrame(rows)
    total = {"layer": "total", "shape": "", "rank": int(df["rank"].sum()), "time s": float(df["time s"].sum()),
             "rel. error": float("nan"), "iterations": int(df["iterations"].sum()), "converged": None,
             "restarts": int(df["restarts"].sum()), "stop": "", "load avg 1 min before": float("nan")}
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    notes = [
        f"Every 3x3 conv of torchvision `vgg16()` except the first, random weights of its init (seed {cfg.seed}).",
        f"Rank = out_channels // {cfg.vgg_rank_divisor}; `cp_als` defaults (SVD init, max_iter=3000, relative "
        "tol=1e-5, line search, up to 2 restarts) then `balance_cp`; time = one run of both, including the SVD init; "
        "iterations = sweeps of all runs, restarts = runs after the first, stop = why the kept run stopped.",
        f"{cfg.device}, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
        "(the machine's load average per layer is in the CSV). "
        "Total row: sums of rank, time and iterations.",
    ]
    write_table(df, out / "vgg16_all_convs", "CP-decomposing VGG16's 3x3 convs with cp_als", notes,
                {"time s": ".3f", "rel. error": ".5f"}, _extra(cfg, start), md_columns=list(df.columns[:9]))
    return df


# ----------------------------------------------------------------------------- part 3


def run_defaults(cfg: Config, out: Path) -> pd.DataFrame:
    convs = {}
    for name, conv in vgg16_convs(dataclasses.replace(cfg, quick=False)):
        t, s = conv.weight.shape[:2]
        if t == s and t in cfg.defaults_sizes and t not in convs:
            convs[t] = (name, conv)
    rows = []
    start = time.perf_counter()
    for t, (name, conv) in tqdm(sorted(convs.items()), desc="defaults vs defaults", file=sys.stderr):
        w = conv.weight.detach().to(cfg.device)
        rank = max(1, t // cfg.vgg_rank_divisor)
        load1 = os.getloadavg()[0]
        tl_res, tl_s = timed(lambda: cp_tensorly(w, rank, max_iter=100, tol=1e-8, init="svd", seed=cfg.seed), cfg.device)
        our_res, our_s = timed(lambda: cp_als(w, rank, seed=cfg.seed), cfg.device)
        rows.append({"layer": name, "shape": "x".join(map(str, w.shape)), "rank": rank,
                     "tensorly time s": tl_s, "ours time s": our_s, "speedup x": tl_s / our_s,
                     "tensorly sweeps": tl_res.n_iter, "ours sweeps": our_res.n_iter, "ours restarts": our_res.restarts,
                     "tensorly rel. error": tl_res.rel_error, "ours rel. error": our_res.rel_error,
                     "load avg 1 min before": load1, "load avg 1 min after": os.getloadavg()[0]})
    df = pd.DataFrame(rows)
    total = {"layer": "total", "shape": "", "rank": int(df["rank"].sum()),
             "tensorly time s": float(df["tensorly time s"].sum()), "ours time s": float(df["ours time s"].sum()),
             "speedup x": float(df["tensorly time s"].sum() / df["ours time s"].sum())}
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    notes = [
        f"One VGG16 conv per size (random weights of torchvision's init, seed {cfg.seed}), rank = T // "
        f"{cfg.vgg_rank_divisor}, each algorithm at its own defaults: `cp_als(w, rank)` (max_iter=3000, relative "
        "tol=1e-5, line search, up to 2 restarts, our SVD init) and tensorly's `parafac` (n_iter_max=100, tol=1e-8 "
        "absolute, tensorly's SVD init) through `cp_tensorly`; each timed once, tensorly first, init included.",
        f"{cfg.device}, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}. "
        "Total row: sums of times, speedup = total tensorly time / total ours.",
    ]
    fmt = {"tensorly time s": ".3f", "ours time s": ".3f", "speedup x": ".1f", "tensorly rel. error": ".5f",
           "ours rel. error": ".5f"}
    write_table(df, out / "cp_als_vs_tensorly_defaults", "cp_als at its defaults vs tensorly.parafac at its defaults",
                notes, fmt, _extra(cfg, start), md_columns=list(df.columns[:11]))
    return df


def _extra(cfg: Config, start: float) -> dict:
    return {"config": dataclasses.asdict(cfg), "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "wall_s": round(time.perf_counter() - start, 3), "load_avg_at_end": os.getloadavg()}


def main(argv=None) -> None:
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        run_comparison(cfg, out)
        if cfg.vgg:
            run_vgg16(cfg, out)
        if cfg.defaults_sizes:
            run_defaults(cfg, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

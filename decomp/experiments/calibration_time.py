"""How long ``decompose(..., calibration=...)`` takes, and what it keeps, on the committed baseline.

    python scripts/time_calibration.py --data ../shared/data/cifar10-jpeg.tar.gz   # ~10 min on 2 cores

The committed 40-epoch CIFAR VGG16-BN at 1/2 width (``results/cifar10/cpu_e40/``) is decomposed
with Tucker-2 + SVD at 1/3 (the first conv and the classifier left out, as in the reproduction),
data-free once and data-aware on ``--images`` calibration images (seeded subsets of the training
set, unaugmented, batches of 256) with ``--threads`` torch threads. Per setting: the wall time of
``decompose`` alone (calibration passes, fits and the ReLU refinement; no evaluation) and the
raw top-1 on the test set (no fine-tuning, no batch-norm recalibration). Writes
``--out``/``calibration_time.{csv,md}`` with sidecars; each setting is saved as it finishes, and
a rerun keeps the settings already measured on the same commit (``--fresh`` drops them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from decomp import decompose
from decomp.experiments.cifar10 import RESULTS, load_committed_baseline_
from decomp.experiments.data import Loader, load_cifar10
from decomp.experiments.reproduce import FAMILIES, _eval_top1, leave_out, subset
from decomp.experiments.runinfo import atomic_write_text, environment_info, write_sidecar
from decomp.experiments.zoo import ModelConfig

__all__ = ["measure", "data_arguments", "main"]

BASELINE = RESULTS / "cifar10" / "cpu_e40" / "baseline_vgg16_bn_w0.5_bf16.pt"
METHOD = FAMILIES["tucker2+svd-all"]
RANK = 1 / 3
COLUMNS = ("fit", "calibration_images", "threads", "decompose_s", "top1_base", "top1_before_raw",
           "delta_points")


def _baseline() -> torch.nn.Module:
    return load_committed_baseline_(ModelConfig(name="vgg16_bn", width=0.5).build(), BASELINE).eval()


def measure(model, train, test, images: int, top1_base: float) -> dict:
    """One setting: ``images`` = 0 is the data-free decomposition."""
    guided = {}
    if images:
        guided["calibration"] = [x for x, _ in Loader(subset(train, images, seed=1), 256, train=False,
                                                      device="cpu")]
    start = time.perf_counter()
    new, _ = decompose(model, method=METHOD, rank=RANK, overrides=leave_out(model),
                       input_shape=(1, 3, 32, 32), progress=False, **guided)
    seconds = time.perf_counter() - start
    top1 = _eval_top1(new, test, "cpu")
    return {"fit": "data-aware" if images else "data-free", "calibration_images": images,
            "threads": torch.get_num_threads(), "decompose_s": round(seconds, 1), "top1_base": top1_base,
            "top1_before_raw": top1, "delta_points": round(100 * (top1 - top1_base), 2)}


def _markdown(rows) -> str:
    lines = ["| fit | calibration images | threads | decompose s | top-1 base | top-1 raw | points |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['fit']} | {r['calibration_images'] or '-'} | {r['threads']} | {r['decompose_s']:.1f} | "
                     f"{100 * r['top1_base']:.2f}% | {100 * r['top1_before_raw']:.2f}% | {r['delta_points']:+.2f} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, rows, sha) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    extra = {"what": "Tucker-2 + SVD at 1/3 of the committed cpu_e40 baseline, data-free and data-aware; "
                     "decompose_s is decompose() alone", "baseline": str(BASELINE.relative_to(RESULTS.parent)),
             "settings_sha": sha}
    for name, text in (("calibration_time.csv", buf.getvalue()), ("calibration_time.md", _markdown(rows))):
        atomic_write_text(out / name, text)
        write_sidecar(out / name, extra=extra)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(n <= 0 for n in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: comma-separated integers >= 1, e.g. 1024,2048")
    return sizes


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: an int >= 1")
    return n


def data_arguments(p: argparse.ArgumentParser) -> None:
    """``--data`` and ``--data-cache``: the CIFAR-10 the committed baseline is measured on."""
    p.add_argument("--data", required=True, help="CIFAR-10: the JPEG .tar.gz, a folder of class folders, or "
                                                 "cifar-10-batches-py")
    p.add_argument("--data-cache", default=".cache/decomp", help="decoded-data cache (default .cache/decomp)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/time_calibration.py", description=__doc__.split("\n")[0])
    data_arguments(p)
    p.add_argument("--images", type=_sizes, default=[1024, 2048],
                   help="comma-separated calibration set sizes (default 1024,2048)")
    p.add_argument("--threads", type=_threads, default=2, help="torch threads (default 2: this machine's cores)")
    p.add_argument("--out", default=str(RESULTS / "calibration"), help="output folder (default results/calibration)")
    p.add_argument("--fresh", action="store_true", help="measure every setting again")
    args = p.parse_args(argv)
    sizes, out = args.images, Path(args.out)
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data, cache_dir=args.data_cache)
    model = _baseline()
    top1_base = _eval_top1(model, data.test, "cpu")
    sha = environment_info()["git_sha"]
    done_file = out / "calibration_time.csv"
    rows = []
    if done_file.is_file() and not args.fresh:
        meta = json.loads((out / "calibration_time.csv.json").read_text())
        if meta.get("settings_sha") == sha:
            rows = [{k: (float(v) if k in ("decompose_s", "top1_base", "top1_before_raw", "delta_points")
                         else int(v) if k in ("calibration_images", "threads") else v) for k, v in r.items()}
                    for r in csv.DictReader(done_file.open())]
    todo = [n for n in [0, *sizes] if not any(r["calibration_images"] == n and r["threads"] == args.threads
                                             for r in rows)]
    for n in tqdm(todo, desc="settings", unit="setting"):
        rows.append(measure(model, data.train, data.test, n, top1_base))
        rows.sort(key=lambda r: (r["threads"], r["calibration_images"]))
        _write(out, rows, sha)
    print(_markdown(rows), end="")
    return 0

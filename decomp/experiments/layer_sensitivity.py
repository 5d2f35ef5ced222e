"""What each layer alone costs at one rank, and how much of it any fit of its factors could win back.

    python scripts/layer_sensitivity.py --data ../shared/data/cifar10-jpeg.tar.gz   # ~30 min on 2 cores

The committed 40-epoch CIFAR VGG16-BN at 1/2 width (``results/cifar10/cpu_e40/``) is decomposed
one layer at a time with Tucker-2 (convs) or SVD (the hidden Linears) at ``--rank`` (default
1/3, the reproduction's setting), every other layer left as it is, and the raw top-1 on the
test set is read (no fine-tuning, no batch-norm recalibration):

- ``data-free``: factors fitted to the weights;
- ``data-aware``: ``decompose(..., calibration=...)`` on ``--images`` training images (the
  closed-form output fit and the ReLU alternation of :mod:`decomp.calibration`);
- ``data-aware+logits`` (layers whose data-aware drop exceeds ``--refine-above`` points): the
  data-aware factors then trained with Adam against the original network's logits (KL, on
  the same calibration images, no labels; every other weight frozen). This is not part of
  ``decompose``: it is a ceiling on what any fit of that layer's factors to the network's
  output can give back, whatever its objective.

If the ``data-aware+logits`` rows lose about what the ``data-aware`` rows lose, the loss at
that rank is the rank's, not the fit's. Writes ``--out``/``layer_sensitivity.{csv,md}`` with
sidecars; each row is saved as it finishes, and a rerun on the same commit keeps the rows
already measured (``--fresh`` drops them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from decomp import decompose
from decomp.experiments.calibration_time import BASELINE, METHOD, _baseline, _threads, data_arguments
from decomp.experiments.cifar10 import RESULTS
from decomp.experiments.data import Loader, load_cifar10
from decomp.experiments.reproduce import _eval_top1, leave_out, subset
from decomp.experiments.runinfo import atomic_write_text, environment_info, write_sidecar

__all__ = ["decomposable_layers", "decompose_one", "refine_against_logits", "measure", "main"]

COLUMNS = ("layer", "geometry", "method", "ranks", "fit", "calibration_images", "refine_steps", "top1_base",
           "top1_before_raw", "delta_points", "output_rel_error", "relu_rel_error", "seconds")
FITS = ("data-free", "data-aware", "data-aware+logits")
INPUT_SHAPE = (1, 3, 32, 32)
REFINE_LR, REFINE_BATCH = 3e-4, 128  # Adam on the KL: 300 steps of 128 of 2048 images, ~19 passes


def decomposable_layers(model: nn.Module) -> list[str]:
    """The convs and Linears the reproduction decomposes, in model order (the first conv and the
    classifier's last Linear are left out: :func:`decomp.experiments.reproduce.leave_out`)."""
    skip = leave_out(model)
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip]


def decompose_one(model: nn.Module, name: str, rank, calibration=None):
    """``model`` with only layer ``name`` decomposed at ``rank`` (Tucker-2 / SVD), and its report row."""
    others = {n: None for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != name}
    guided = {} if calibration is None else {"calibration": calibration}
    new, report = decompose(model, method=METHOD, rank=rank, overrides=others, input_shape=INPUT_SHAPE,
                            progress=False, **guided)
    return new, report[name]


def refine_against_logits(new: nn.Module, original: nn.Module, name: str, images: torch.Tensor, *, steps: int,
                          lr: float = REFINE_LR, batch: int = REFINE_BATCH, seed: int = 0) -> list[float]:
    """Train layer ``name`` of ``new`` (in place) so that ``new``'s logits match ``original``'s on
    ``images``: ``steps`` Adam steps on the KL divergence, cosine-decayed ``lr``, batches drawn
    with a seeded generator, both models in eval mode (batch norms keep their statistics), every
    other parameter frozen. Returns the mean KL on ``images`` before and after."""
    layer = new.get_submodule(name)
    original.eval()
    new.eval()
    with torch.no_grad():
        target = torch.cat([F.log_softmax(original(x), 1) for x in images.split(256)])
    frozen = {p: p.requires_grad for p in new.parameters()}
    for p in new.parameters():
        p.requires_grad_(False)
    for p in layer.parameters():
        p.requires_grad_(True)

    def kl() -> float:
        with torch.no_grad():
            return sum(float(F.kl_div(F.log_softmax(new(x), 1), t, log_target=True, reduction="sum"))
                       for x, t in zip(images.split(256), target.split(256))) / len(images)

    before = kl()
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    try:
        for _ in range(steps):
            i = torch.randint(0, len(images), (min(batch, len(images)),), generator=g)
            loss = F.kl_div(F.log_softmax(new(images[i]), 1), target[i], log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        for p, was in frozen.items():
            p.requires_grad_(was)
    return [before, kl()]


def _row(name, info, fit, images, steps, top1_base, top1, seconds) -> dict:
    return {"layer": name, "geometry": info.layer, "method": info.method, "ranks": json.dumps(info.ranks),
            "fit": fit, "calibration_images": images, "refine_steps": steps, "top1_base": top1_base,
            "top1_before_raw": top1, "delta_points": round(100 * (top1 - top1_base), 2),
            # the fit's own errors: not measured again after training against the logits
            "output_rel_error": "" if steps else info.info.get("output_rel_error", ""),
            "relu_rel_error": "" if steps else info.info.get("relu_rel_error", ""),
            "seconds": round(seconds, 1)}


def measure(model, name, fit, rank, cal_images, test, top1_base, steps) -> dict:
    """One row: layer ``name`` alone at ``rank`` with fit ``fit`` (one of :data:`FITS`)."""
    start = time.perf_counter()
    calibration = None if fit == "data-free" else list(cal_images.split(256))
    new, info = decompose_one(model, name, rank, calibration)
    refined = fit == "data-aware+logits" and info.decomposed
    if refined:
        refine_against_logits(new, model, name, cal_images, steps=steps)
    top1 = _eval_top1(new, test, "cpu")
    return _row(name, info, fit, 0 if calibration is None else len(cal_images), steps if refined else 0,
                top1_base, top1, time.perf_counter() - start)


def _markdown(rows, joint: str) -> str:
    lines = ["| layer | geometry | ranks | fit | top-1 raw | points vs baseline | output error | ReLU error | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        err = (lambda v: f"{float(v):.3f}" if v not in ("", None) else "-")  # noqa: E731
        fit = r["fit"] + (f" ({r['refine_steps']} steps)" if int(r["refine_steps"]) else "")
        lines.append(f"| {r['layer']} | {r['geometry']} | {r['ranks']} | {fit} | {100 * float(r['top1_before_raw']):.2f}% "
                     f"| {float(r['delta_points']):+.2f} | {err(r['output_rel_error'])} | {err(r['relu_rel_error'])} "
                     f"| {float(r['seconds']):.0f} |")
    lines.append("")
    for fit in FITS:
        drops = [float(r["delta_points"]) for r in rows if r["fit"] == fit]
        if drops:
            lines.append(f"- {fit}: {len(drops)} layers, sum of the one-layer drops {sum(drops):+.2f} points.")
    lines.append(f"- {joint}")
    return "\n".join(lines) + "\n"


def _joint_line() -> str:
    """The every-layer figure at the same setting, quoted from ``results/calibration/`` when it is there."""
    path = RESULTS / "calibration" / "calibration_time.csv"
    if not path.is_file():
        return "Every layer at once: run scripts/time_calibration.py for the figure."
    rows = [r for r in csv.DictReader(path.open()) if r["fit"] == "data-aware"]
    if not rows:
        return "Every layer at once: no data-aware row in results/calibration/calibration_time.csv."
    r = max(rows, key=lambda r: int(r["calibration_images"]))
    return (f"Every layer at once, data-aware on {r['calibration_images']} images "
            f"(results/calibration/calibration_time.csv): {float(r['delta_points']):+.2f} points.")


def _write(out: Path, rows, sha, extra) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    meta = {"what": "one layer at a time decomposed (the rest as they are), raw top-1 on the CIFAR-10 test set",
            "baseline": str(BASELINE.relative_to(RESULTS.parent)), "settings_sha": sha, **extra}
    for name, text in (("layer_sensitivity.csv", buf.getvalue()), ("layer_sensitivity.md", _markdown(rows, _joint_line()))):
        atomic_write_text(out / name, text)
        write_sidecar(out / name, extra=meta)


def _rank(text: str):
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        value = 0.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: a fraction of each layer's full rank in (0, 1), e.g. 1/3")
    return value


def _at_least(kind, low):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = low - 1
        if not value >= low:  # also refuses nan
            what = "an int" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r}; allowed: {what} >= {low}")
        return value
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/layer_sensitivity.py", description=__doc__.split("\n")[0])
    data_arguments(p)
    p.add_argument("--rank", type=_rank, default=1 / 3, help="fraction of each layer's rank (default 1/3)")
    p.add_argument("--images", type=_at_least(int, 1), default=2048, help="calibration images (default 2048)")
    p.add_argument("--refine-above", type=_at_least(float, 0), default=0.3,
                   help="train against the logits the layers whose data-aware drop exceeds this many points "
                        "(default 0.3)")
    p.add_argument("--refine-steps", type=_at_least(int, 0), default=300, help=f"Adam steps of {REFINE_BATCH} images (default 300)")
    p.add_argument("--threads", type=_threads, default=2, help="torch threads (default 2: this machine's cores)")
    p.add_argument("--out", default=str(RESULTS / "calibration"), help="output folder (default results/calibration)")
    p.add_argument("--fresh", action="store_true", help="measure every row again")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data, cache_dir=args.data_cache)
    model = _baseline()
    top1_base = _eval_top1(model, data.test, "cpu")
    cal_images = torch.cat([x for x, _ in Loader(subset(data.train, args.images, seed=1), 256, train=False,
                                                 device="cpu")])
    sha = environment_info()["git_sha"]
    extra = {"rank": args.rank, "refine_above_points": args.refine_above, "refine_lr": REFINE_LR, "refine_batch": REFINE_BATCH}
    done_file, rows = out / "layer_sensitivity.csv", []
    if done_file.is_file() and not args.fresh:
        meta = json.loads((out / "layer_sensitivity.csv.json").read_text())
        if meta.get("settings_sha") == sha and meta.get("rank") == args.rank:
            rows = list(csv.DictReader(done_file.open()))
    names = decomposable_layers(model)
    order = {n: i for i, n in enumerate(names)}

    def owed(rows) -> list[tuple[str, str]]:  # the refinements the data-aware rows measured so far call for
        have = {(r["layer"], r["fit"]) for r in rows}
        return [(r["layer"], FITS[2]) for r in rows if r["fit"] == FITS[1] and args.refine_steps
                and -float(r["delta_points"]) > args.refine_above and (r["layer"], FITS[2]) not in have]

    have = {(r["layer"], r["fit"]) for r in rows}
    todo = [(n, f) for f in FITS[:2] for n in names if (n, f) not in have] + owed(rows)
    with tqdm(total=len(todo), desc="layers", unit="row") as bar:
        while todo:
            name, fit = todo.pop(0)
            rows.append(measure(model, name, fit, args.rank, cal_images, data.test, top1_base, args.refine_steps))
            rows.sort(key=lambda r: (FITS.index(r["fit"]), order.get(r["layer"], len(order))))
            _write(out, rows, sha, extra)
            more = [t for t in owed(rows) if t not in todo]
            todo += more
            bar.total += len(more)
            bar.update()
    print(_markdown(rows, _joint_line()), end="")
    return 0

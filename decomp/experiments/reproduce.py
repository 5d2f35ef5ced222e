"""Reproduce the speedup/accuracy claims end to end: decompose, fine-tune, evaluate, time.

The pieces of ``scripts/reproduce_cifar10.py``, kept apart so tests can run them on tiny models:

* :func:`variant_table` -- the grid of variants (family x rank policy) as data, with the
  fine-tuning learning rate of each family;
* :func:`run_variant` -- one variant through three cached stages, each written atomically
  under its own folder and skipped when its file is there: ``decomposed.pt`` + ``decomposed.json``
  (weights, report records, top-1 before fine-tuning), then, in a subfolder per fine-tuning
  setting (:func:`finetune_key`), ``finetune.pt`` (a :func:`decomp.experiments.train.train` checkpoint,
  resumable) and ``result.json`` (the summary row, timings included);
* :func:`measure_speedup` -- the original and the decomposed model timed interleaved on the CPU
  (thread CPU clock, 1 thread) and, when present, on CUDA;
* :func:`best_speedups`, :func:`claims_markdown`,
  :func:`plot_accuracy_vs_speedup` -- tables, the point-by-point comparison with the claims
  (computed from the summary CSV) and the figure.

The library prints nothing; progress goes through tqdm.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction as _Frac
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decomp import calibration
from decomp.budget import parse_budget
from decomp.experiments import distributed
from decomp.experiments.data import Loader, Split
from decomp.measure import count_macs, count_params, paired_speedups, time_interleaved
from decomp.model import build_decomposed, decompose
from decomp.experiments.runinfo import atomic_torch_save, atomic_write_bytes, atomic_write_text
from decomp.experiments.train import TrainConfig, evaluate, recalibrate_batchnorm, train

__all__ = [
    "FAMILIES", "FINETUNE_LR", "Variant", "variant_table", "rank_label", "leave_out",
    "subset", "finetune_key", "run_variant", "variant_cache", "decompose_variant", "before_row", "measure_speedup", "best_speedups", "claims_markdown",
    "plot_accuracy_vs_speedup", "plot_layer_speedups", "CLAIM_BAND",
]

# Variant families: decompose()'s method mapping (layer kind -> method).
FAMILIES: dict[str, dict[str, str]] = {
    "svd-fc": {"linear": "svd"},                              # Girshick 2015: FC layers only
    "cp-conv": {"conv": "cp"},                                 # Lebedev et al. 2014
    "tucker2-conv": {"conv": "tucker2"},                       # Kim et al. 2015
    "tucker2+svd-all": {"conv": "tucker2", "linear": "svd"},   # Kim et al. 2015, whole network
}
# Peak fine-tuning lr per 512 images (decomp.experiments.train's convention), per family: 1/10 of the
# baseline's 0.4. The origin used ~1e-6 for CP on a plain-SGD VGG16 without BN and 1e-3 for
# Tucker-2; these nets have BN, which tolerates far larger steps (a first CPU run at 0.01 / 0.002
# for 1 epoch on 10,000 images recovered only part of the accuracy lost). CP gets a 4x smaller
# lr: its factors are less well conditioned (Lebedev et al. 2014 report fine-tuning instability).
FINETUNE_LR: dict[str, float] = {"svd-fc": 0.04, "cp-conv": 0.01, "tucker2-conv": 0.04,
                                 "tucker2+svd-all": 0.04}
CLAIM_BAND = (2.0, 4.0)  # the origin's claimed speedup range


@dataclass(frozen=True)
class Variant:
    """One decomposition setting of the grid."""

    family: str        # a key of FAMILIES
    rank: Any          # decompose()'s rank policy: "vbmf" or a float fraction of the channels
    lr: float          # peak fine-tuning lr per 512 images
    aware: bool = False       # fit the factors to calibration data (decompose(calibration=...))
    budget: str | None = None  # one whole-model target instead of rank, e.g. "latency:2" (decomp.budget.parse_budget)
    fixed: Any = None          # a committed run's per-layer ranks (decomp.experiments.fixed_ranks.FixedRanks)

    @property
    def method(self) -> dict[str, str]:
        return FAMILIES[self.family]

    @property
    def rank_label(self) -> str:
        if self.fixed is not None:
            return self.fixed.label
        if self.budget:
            kind, _, factor = self.budget.partition(":")
            return f"{kind}-x{factor}"
        return ("aware-" if self.aware else "") + rank_label(self.rank)

    @property
    def fit(self) -> str:
        return "data-aware" if self.aware else "data-free"

    @property
    def name(self) -> str:  # also the cache folder name
        return f"{self.family}@{self.rank_label.replace('/', '-')}"


def rank_label(rank: Any) -> str:
    """``"vbmf"`` or a fraction as ``"1/3"``."""
    if isinstance(rank, float):
        return str(_Frac(rank).limit_denominator(64))
    return str(rank)


def variant_table(
    fractions: Sequence[float] = (1 / 3, 1 / 4, 1 / 6), *, vbmf: bool = True, cp_vbmf: bool = False,
    families: Sequence[str] = tuple(FAMILIES), lr: Mapping[str, float] | None = None,
    aware: Sequence[str] = (), budgets: Sequence[str] = (),
) -> list[Variant]:
    """The grid, most important first: the origin's heuristic (first fraction) and VBMF for every
    family, then the more aggressive fractions (so a time-boxed run drops those first), and
    within those the families in reverse order: whole-network Tucker-2 + SVD, the likeliest to
    reach the claim's speedups, before SVD of the FC layers alone, which barely moves latency.

    VBMF applies to SVD and Tucker-2; for CP only with ``cp_vbmf`` (CP's rank is then the larger
    of the two VBMF mode ranks). ``aware``: families also run data-aware (fitted to calibration
    data) at the first fraction and VBMF; ``budgets``: whole-model targets (``"latency:2"``),
    data-aware, for each family of ``aware`` (SVD and Tucker-2 only). These follow the grid.
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families must be among {sorted(FAMILIES)}; got {unknown}")
    lrs = {**FINETUNE_LR, **dict(lr or {})}

    def variants(rank: Any, order: Sequence[str]) -> list[Variant]:
        return [Variant(f, rank, lrs[f]) for f in order
                if not (rank == "vbmf" and f == "cp-conv" and not cp_vbmf)]

    first: list[Any] = list(fractions[:1]) + (["vbmf"] if vbmf else [])
    unknown = [f for f in aware if f not in FAMILIES or f == "cp-conv" and budgets]
    if unknown:
        raise ValueError(f"aware families must be among {sorted(FAMILIES)} (not cp-conv with budgets); got {unknown}")
    guided = ([Variant(f, rank, lrs[f], aware=True) for rank in first for f in aware]
              + [Variant(f, None, lrs[f], aware=True, budget=b) for b in budgets for f in aware])
    return ([v for rank in first for v in variants(rank, families)] + guided
            + [v for rank in fractions[1:] for v in variants(rank, families[::-1])])


def leave_out(model: nn.Module) -> dict[str, None]:
    """decompose() overrides leaving out the first conv (3 input channels: nothing to gain)
    and the last Linear (the 10-way classifier: its rank would be a fraction of 10)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {n: None for n in convs[:1] + linears[-1:]}


def subset(split: Split, n: int, seed: int = 0) -> Split:
    """``n`` images of ``split`` drawn without replacement by a seeded permutation (all if n <= 0)."""
    if n <= 0 or n >= len(split):
        return split
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(split), generator=g)[:n].sort().values
    return Split(split.images[index], split.labels[index])


# ----------------------------------------------------------------------------------------
# Timing


def _cpu_copy(model: nn.Module) -> nn.Module:
    # fp32 and NCHW: time_forward puts weights and input in one layout (NCHW unless asked)
    return copy.deepcopy(model).to("cpu").float().eval()


def measure_speedup(
    base: nn.Module, variant: nn.Module, *, cpu_batches: Sequence[int] = (1, 256),
    gpu_batches: Sequence[int] = (1, 256), min_run_time: float = 1.0, rounds: int = 3,
    gpu: bool | None = None, input_hw: int = 32,
) -> dict[str, Any]:
    """Median forward time of ``base`` and ``variant`` and their ratio, timed interleaved.

    CPU: 1 thread, ``clock="thread_cpu"`` (robust on a shared machine), each batch size of
    ``cpu_batches``. CUDA (when ``gpu`` or, by default, when available): wall clock with
    synchronisation, fp32, each of ``gpu_batches``. Keys: ``cpu_b{n}_base_ms``,
    ``cpu_b{n}_ms``, ``cpu_b{n}_speedup`` (and ``gpu_...``).
    """
    out: dict[str, Any] = {}
    gpu = torch.cuda.is_available() if gpu is None else gpu
    targets = [("cpu", torch.device("cpu"), cpu_batches)]
    if gpu:
        targets.append(("gpu", torch.device("cuda"), gpu_batches))
    g = torch.Generator().manual_seed(0)
    for tag, device, batches in targets:
        models = {"base": _cpu_copy(base).to(device), "variant": _cpu_copy(variant).to(device)}
        for b in batches:
            x = torch.randn(b, 3, input_hw, input_hw, generator=g).to(device)
            kw = {"threads": 1, "clock": "thread_cpu"} if tag == "cpu" else {"clock": "wall"}
            t = time_interleaved(models, x, rounds=rounds, min_run_time=min_run_time, **kw)
            out[f"{tag}_b{b}_base_ms"] = t["base"].median * 1e3
            out[f"{tag}_b{b}_ms"] = t["variant"].median * 1e3
            out[f"{tag}_b{b}_rel_iqr"] = max(t["base"].rel_iqr, t["variant"].rel_iqr)
            out[f"{tag}_b{b}_speedup"] = t["base"].median / t["variant"].median
    return out


def joint_cpu_b1(base: nn.Module, variants: Mapping[str, nn.Module], *, rounds: int = 20,
                 min_run_time: float = 2.0, input_hw: int = 32,
                 channels_last: bool = False) -> dict[str, dict[str, float]]:
    """Every variant and the baseline timed together at CPU batch 1 (1 thread, thread CPU
    clock, all NCHW or, with ``channels_last``, all channels_last), in ``rounds`` paired rounds (:func:`decomp.measure.paired_speedups`: each round
    times all models back to back and gives one ratio per variant; the median over rounds),
    ``min_run_time`` seconds per model in all: ``{name: {"speedup": ..., "rel_iqr": ...}}``.

    Each variant's own timing (:func:`measure_speedup`) runs minutes apart from the others', and
    on a shared machine the same architecture measured that way came out anywhere between x2.4
    and x2.9 in one run. Timed side by side, drift hits every model alike and equal
    architectures get equal figures: these are the speed-ups the tables report.
    """
    models = {"baseline": _cpu_copy(base), **{n: _cpu_copy(m) for n, m in variants.items()}}
    x = torch.randn(1, 3, input_hw, input_hw, generator=torch.Generator().manual_seed(0))
    t = paired_speedups(models, x, "baseline", rounds=rounds, block_s=min_run_time / rounds, threads=1,
                        clock="thread_cpu", channels_last=channels_last)
    return {n: {"speedup": t[n].median, "rel_iqr": t[n].rel_iqr, "ms": 1e3 * t[n].seconds,
                "baseline_ms": 1e3 * t[n].reference_seconds} for n in variants}


# ----------------------------------------------------------------------------------------
# One variant, three cached stages


def _eval_top1(model: nn.Module, data: Split, device) -> float:
    # called by rank 0 alone (the decomposition stage): not a collective evaluation
    return evaluate(model, data, device=device, distributed_eval=False)["accuracy"]


def _layer_ranks(records: list[dict]) -> str:
    """Ranks of the decomposed layers in model order, e.g. ``"6x11 11x11 64"`` (Tucker-2 r_in x r_out; CP/SVD R)."""
    parts = []
    for r in records:
        if r.get("skipped") is None:
            k = r["ranks"]
            parts.append("x".join(map(str, k)) if isinstance(k, (list, tuple)) else str(k))
    return " ".join(parts)


def finetune_key(config: TrainConfig, images: int) -> str:
    """Folder name of a fine-tuning setting, e.g. ``"ft-e2-n50000-bs256-lr0.04"``; the full
    TrainConfig is checked against the checkpoint by :func:`decomp.experiments.train.train`."""
    key = f"ft-e{config.epochs}-n{images}-bs{config.batch_size}-lr{config.lr:g}"
    if config.distill:  # distilled from the baseline: other weights
        key += f"-kd{config.distill:g}-T{config.distill_temperature:g}"
    return key


def run_variant(
    base: nn.Module, variant: Variant, *, train_data: Split, test_data: Split, cache: str | Path,
    finetune: TrainConfig, device: torch.device | str = "cpu", timing: Mapping[str, Any] | None = None,
    base_info: Mapping[str, Any] | None = None, input_hw: int = 32, bn_batches: int = 0,
    min_speedup: float | None = None, progress: bool = True, calibration_images: int = 2048,
) -> tuple[dict, dict]:
    """Decompose ``base`` with ``variant``, evaluate, fine-tune, evaluate, time; cached per stage.

    ``base_info``: the baseline's ``top1``, ``params`` and ``macs`` (for the row's ratios) and
    anything else to copy into the row (``model``, ``width`` ...). ``bn_batches``: batches of
    ``train_data`` on which batch-norm statistics are re-estimated right after decomposing
    (:func:`decomp.experiments.train.recalibrate_batchnorm`; 0: none); ``top1_before`` is then measured
    after it and ``top1_before_raw`` before. ``min_speedup``: passed to :func:`decompose`
    (layers whose decomposition is measured less than this much faster at batch 1 are kept).
    ``timing``: keyword arguments
    of :func:`measure_speedup`. ``calibration_images``: for data-aware and budgeted variants,
    this many images of ``train_data`` (a seeded subset, unaugmented) are the calibration data.
    Returns ``(row, stage_info)`` where ``stage_info`` holds the per-stage seconds and whether
    each stage came from the cache.

    Under torchrun every rank calls it: rank 0 alone reads the cache, decomposes, times and
    writes, and broadcasts the decomposed ``state_dict`` (and the row), so every rank fine-tunes
    the same model together (:func:`decomp.experiments.train.train`, data-parallel) and returns
    the same row; on the other ranks ``stage_info["model"]`` is ``None`` for a cached variant.
    """
    cache = variant_cache(cache, variant, min_speedup=min_speedup, bn_batches=bn_batches,
                          calibration_images=calibration_images)
    ft_dir = cache / finetune_key(finetune, len(train_data))  # fine-tuning and results per FT setting
    device = torch.device(device)
    result_file = ft_dir / "result.json"
    if distributed.broadcast_object(result_file.is_file()):
        model = None
        if distributed.is_main():
            row = json.loads(result_file.read_text())
            records = json.loads((cache / "decomposed.json").read_text())["records"]
            model = build_decomposed(base, records)  # the architecture, for the joint timing
            model.load_state_dict(torch.load(cache / "decomposed.pt", map_location=device, weights_only=True))
        row, records = distributed.broadcast_object((row, records) if distributed.is_main() else None)
        return row, {"cached": True, "records": records, "model": model}
    stages: dict[str, Any] = {"cached": False}

    # (1) decomposition (its weights and report), with top-1 before fine-tuning: rank 0 alone
    start = time.perf_counter()
    if distributed.is_main():
        model, dec, stages["decompose_cached"] = _decomposed(
            base, variant, cache, train_data=train_data, test_data=test_data, device=device, input_hw=input_hw,
            bn_batches=bn_batches, min_speedup=min_speedup, progress=progress, calibration_images=calibration_images,
            model_tag=(base_info or {}).get("model"))
    if distributed.active():
        shared = distributed.broadcast_object(
            (dec, {k: v.cpu() for k, v in model.state_dict().items()}, stages["decompose_cached"])
            if distributed.is_main() else None)
        if not distributed.is_main():  # the architecture from the records, the weights from rank 0
            dec, state, stages["decompose_cached"] = shared
            model = build_decomposed(base, dec["records"]).to(device)
            model.load_state_dict(state)
    stages["decompose_s"] = time.perf_counter() - start
    stages["records"] = dec["records"]
    return _finetune_and_time(base, model, dec, variant, stages, train_data=train_data, test_data=test_data,
                              ft_dir=ft_dir, finetune=finetune, device=device, timing=timing, base_info=base_info,
                              input_hw=input_hw, progress=progress, min_speedup=min_speedup, bn_batches=bn_batches)


def variant_cache(cache: str | Path, variant: Variant, *, min_speedup: float | None, bn_batches: int,
                  calibration_images: int) -> Path:
    """The folder of ``variant``'s decomposition under a model's ``cache``: one per setting that
    changes the decomposed weights (its fine-tunings sit below it, one per fine-tuning setting)."""
    cache = Path(cache) / variant.name
    if min_speedup is not None:  # another set of decomposed layers
        cache = cache / f"speed{min_speedup:g}"
    if bn_batches:  # the decomposed weights differ with recalibrated statistics
        cache = cache / f"bn{bn_batches}"
    if variant.aware:  # fitted to these calibration images (and refined for the ReLUs, or not)
        cache = cache / (f"cal{calibration_images}" + ("-relu" if calibration.RELU_LAMBDAS else ""))
    return cache


def decompose_variant(base: nn.Module, variant: Variant, cache: str | Path, *, train_data: Split, test_data: Split,
                      device: torch.device | str = "cpu", input_hw: int = 32, bn_batches: int = 0,
                      min_speedup: float | None = None, progress: bool = True, calibration_images: int = 2048,
                      model_tag: str | None = None) -> tuple[nn.Module, dict, bool]:
    """Stage (1) of :func:`run_variant` alone, in the same cache (so a later :func:`run_variant`
    fine-tunes this very decomposition): ``(model, record dict, whether it came from the cache)``.
    The record dict has ``top1_before_raw``, ``top1_before`` (after batch-norm recalibration),
    ``params_after``, ``macs_after``, ``decompose_s``, ``budget``, ``calibration`` and ``records``."""
    folder = variant_cache(cache, variant, min_speedup=min_speedup, bn_batches=bn_batches,
                           calibration_images=calibration_images)
    return _decomposed(base, variant, folder, train_data=train_data, test_data=test_data, device=torch.device(device),
                       input_hw=input_hw, bn_batches=bn_batches, min_speedup=min_speedup, progress=progress,
                       calibration_images=calibration_images, model_tag=model_tag)


def _decomposed(base: nn.Module, variant: Variant, cache: Path, *, train_data: Split, test_data: Split, device,
                input_hw: int, bn_batches: int, min_speedup, progress: bool, calibration_images: int,
                model_tag: str | None = None):
    """Stage (1) of :func:`run_variant`: (decomposed model, its record dict, whether it was cached)."""
    start = time.perf_counter()
    dec_file, dec_pt = cache / "decomposed.json", cache / "decomposed.pt"
    if dec_file.is_file() and dec_pt.is_file():
        dec = json.loads(dec_file.read_text())
        model = build_decomposed(base, dec["records"])
        model.load_state_dict(torch.load(dec_pt, map_location=device, weights_only=True))
    else:
        guided = {}
        if variant.aware:
            images = subset(train_data, calibration_images, seed=1)  # not the fine-tuning order's first images
            guided["calibration"] = [x for x, _ in Loader(images, 256, train=False, device=device)]
        if variant.budget:
            guided["budget"] = parse_budget(variant.budget)
        overrides = leave_out(base)
        if variant.fixed is not None:  # every layer at the committed run's rank, or left as it was there
            overrides.update(variant.fixed.overrides(model_tag))
        model, report = decompose(base, method=variant.method, rank=None if variant.budget else variant.rank,
                                  overrides=overrides, input_shape=(1, 3, input_hw, input_hw),
                                  min_speedup=min_speedup, progress=progress, **guided)
        seconds = time.perf_counter() - start
        top1_raw = _eval_top1(model, test_data, device)
        if not report.decomposed:  # the baseline itself: nothing to recalibrate or fine-tune
            bn_batches = 0
        if bn_batches:
            recalibrate_batchnorm(model, train_data, batches=bn_batches, device=device)
        dec = {"records": report.to_records(), "params_after": report.params_after,
               "macs_after": report.macs_after, "decompose_s": seconds, "top1_before_raw": top1_raw,
               "top1_before": _eval_top1(model, test_data, device) if bn_batches else top1_raw,
               "bn_batches": bn_batches, "budget": report.budget, "calibration": report.calibration}
        atomic_torch_save(model.state_dict(), dec_pt)       # weights first, the JSON marks completion
        atomic_write_text(dec_file, json.dumps(dec, indent=1, default=str) + "\n")
        return model, dec, False
    return model, dec, True


def before_row(tag: str, info: Mapping[str, Any], variant: Variant, dec: Mapping[str, Any]) -> dict:
    """One row of ``before.csv``: a variant right after decomposing, before any fine-tuning."""
    base = info["top1"]
    return {"model": tag, "variant": variant.name, "family": variant.family, "ranks": variant.rank_label,
            "fit": variant.fit, "budget": variant.budget, "budget_reached": (dec.get("budget") or {}).get("reached"),
            "top1_base": base, "top1_before_raw": dec["top1_before_raw"], "top1_before": dec["top1_before"],
            "delta_raw_points": 100 * (dec["top1_before_raw"] - base),
            "delta_recal_points": 100 * (dec["top1_before"] - base), "bn_recal_batches": dec.get("bn_batches"),
            "params_x": info["params"] / dec["params_after"],
            "macs_x": info["macs"] / dec["macs_after"] if dec["macs_after"] else None,
            "decompose_s": dec["decompose_s"], "layer_ranks": _layer_ranks(dec["records"])}


def _finetune_and_time(base: nn.Module, model: nn.Module, dec: dict, variant: Variant, stages: dict, *,
                       train_data: Split, test_data: Split, ft_dir: Path, finetune: TrainConfig, device,
                       timing, base_info, input_hw: int, progress: bool, min_speedup, bn_batches: int):
    """Stages (2) and (3) of :func:`run_variant`: fine-tuning on every rank, timing and the row on rank 0."""
    # (2) fine-tuning (decomp.experiments.train: resumable, skipped when complete)
    start = time.perf_counter()
    decomposed_any = any(r.get("skipped") is None for r in dec["records"])
    if decomposed_any:
        ft = train(model, train_data, finetune, checkpoint=ft_dir / "finetune.pt", test_data=test_data,
                   device=device, model_config={"base": dict((base_info or {}).get("model_config", {})),
                                                "variant": variant.name},
                   progress=progress, teacher=base if finetune.distill else None)
        top1_after, stages["finetune_cached"] = ft.test["accuracy"], ft.skipped
    else:  # every layer was kept (e.g. by min_speedup): the model is the baseline, left as it is
        top1_after, stages["finetune_cached"] = dec["top1_before"], False
    stages["finetune_s"] = time.perf_counter() - start

    # (3) timing against the baseline, interleaved in this run: rank 0 alone (the others wait,
    # idle, so they do not disturb the timing), which writes the row and hands it to the others
    stages["model"] = model
    if not distributed.is_main():
        return distributed.broadcast_object(None), stages
    start = time.perf_counter()
    speed = measure_speedup(base, model, input_hw=input_hw, **dict(timing or {}))
    stages["timing_s"] = time.perf_counter() - start

    info = dict(base_info or {})
    info.pop("model_config", None)
    top1_base = info.get("top1")
    params_base, macs_base = info.get("params", count_params(base)), info.get("macs")
    if macs_base is None:
        macs_base = count_macs(base, (1, 3, input_hw, input_hw))
    row = {
        **{k: v for k, v in info.items() if k not in ("top1", "params", "macs")},
        "variant": variant.name, "family": variant.family, "ranks": variant.rank_label, "fit": variant.fit,
        "budget": variant.budget, "budget_reached": (dec.get("budget") or {}).get("reached"),
        "budget_search_s": (dec.get("budget") or {}).get("search_s"),
        "layer_ranks": _layer_ranks(dec["records"]),
        "top1_base": top1_base, "top1_before_raw": dec.get("top1_before_raw", dec["top1_before"]),
        "top1_before": dec["top1_before"], "top1_after": top1_after, "bn_recal_batches": dec.get("bn_batches", bn_batches),
        "speed_guard": min_speedup,  # decompose(min_speedup=...); "*_speedup" columns are measured
        "delta_points": None if top1_base is None else 100 * (top1_after - top1_base),
        "params": dec["params_after"], "params_x": params_base / dec["params_after"],
        "macs": dec["macs_after"], "macs_x": macs_base / dec["macs_after"] if dec["macs_after"] else None,
        **speed,
        "finetune_lr": variant.lr, "finetune_epochs": finetune.epochs if decomposed_any else 0,
        "finetune_images": len(train_data),
        "finetune_distill": finetune.distill if decomposed_any else 0.0,
        "decompose_s": dec["decompose_s"], "finetune_s": stages["finetune_s"],
        "timing_s": stages["timing_s"],
    }
    atomic_write_text(ft_dir / "result.json", json.dumps(row, indent=1, default=str) + "\n")
    return distributed.broadcast_object(row), stages


# ----------------------------------------------------------------------------------------
# Tables, claims and the figure


def best_speedups(df, max_drop: float, column: str = "cpu_b1_speedup", delta: str = "delta_points"):
    """Per model, the variant with the largest ``column`` among those losing <= ``max_drop`` points
    of top-1 after fine-tuning (baselines excluded) by ``delta`` (``"delta_control_points"``:
    against the control); a DataFrame, possibly empty."""
    d = df[(df["variant"] != "baseline") & (df[delta] >= -max_drop)].dropna(subset=[column])
    if d.empty:
        return d
    return d.loc[d.groupby("model")[column].idxmax()]


def _fmt_row(r, column: str) -> str:
    return (f"{r['variant']} (x{r[column]:.2f} measured, MACs x{r['macs_x']:.2f}, "
            f"top-1 {100 * r['top1_after']:.2f}% vs {100 * r['top1_base']:.2f}%, "
            f"Δ {r['delta_points']:+.2f} points)")


def _speed_columns(df) -> list[tuple[str, str]]:
    cols = [c for c in df.columns if c.endswith("_speedup")]
    names = []
    for c in sorted(cols, key=lambda c: (not c.startswith("cpu"), int(c.split("_b")[1].split("_")[0]))):
        dev, b = c.split("_")[0], c.split("_b")[1].split("_")[0]
        layout = ", channels_last" if c.endswith("_cl_speedup") else ""  # cpu_b1_cl_speedup
        names.append((c, f"{dev.upper()} batch {b}{layout}"))
    return names


def _verdict(ok: bool | None) -> str:
    return {True: "**reproduced**", False: "**not reproduced**", None: "**not testable here**"}[ok]


def claims_markdown(df, *, no_drop_points: float = 0.5, usable_points: float = 3.0) -> str:
    """Point-by-point comparison of the origin's claims with the measurements in ``df``
    (the summary CSV as a DataFrame); every number comes from ``df``.

    ``no_drop_points``: the largest top-1 loss (points) that counts as "no accuracy drop";
    ``usable_points``: the largest loss for a Tucker-2 VBMF variant to be compared with CP.
    """
    lines = []
    low, high = CLAIM_BAND
    speeds = _speed_columns(df)
    variants = df[df["variant"] != "baseline"]
    for model in sorted(df["model"].unique()):
        m = df[df["model"] == model]
        mv = variants[variants["model"] == model]
        base = m[m["variant"] == "baseline"]
        lines.append(f"### {model}" + (f" (baseline top-1 {100 * base['top1_after'].iloc[0]:.2f}%)"
                                       if len(base) else ""))
        lines.append("")
        # Claim 1: x2-x4 depending on the accuracy drop accepted.
        lines.append(f"1. *Claim: x{low:g} to x{high:g} speedup depending on the accuracy drop accepted.*")
        for drop in (1.0, 3.0):
            for col, label in speeds:
                best = best_speedups(m, drop, col)
                if best.empty:
                    lines.append(f"   - ≤ {drop:g} point(s) lost, {label}: no variant qualifies.")
                    continue
                r = best.iloc[0]
                lines.append(f"   - ≤ {drop:g} point(s) lost, {label}: best {_fmt_row(r, col)}.")
        for col, label in speeds:  # reproduced if some variant losing <= 3 points reaches x2
            best3 = best_speedups(m, 3.0, col)
            ok = None if best3.empty else bool(best3.iloc[0][col] >= low)
            lines.append(f"   - Verdict ({label}, ≤ 3 points lost): {_verdict(ok)}"
                         + ("" if best3.empty else f": x{best3.iloc[0][col]:.2f}."))
        col = speeds[0][0] if speeds else None
        # Claim 2: CP gave x2 with no accuracy drop after fine-tuning.
        cp = mv[mv["family"] == "cp-conv"]
        lines.append(f"2. *Claim: CP gave x2 with no accuracy drop after fine-tuning.* "
                     f"(\"no drop\" = at most {no_drop_points:g} point lost)")
        if cp.empty or col is None:
            lines.append("   - no CP variant in this run: " + _verdict(None) + ".")
        else:
            for _, r in cp.iterrows():
                lines.append(f"   - {_fmt_row(r, col)}, fine-tune lr {r['finetune_lr']:g}.")
            good = cp[cp["delta_points"] >= -no_drop_points]
            best = good[col].max() if not good.empty else None
            lines.append(f"   - Verdict: {_verdict(best is not None and best >= 2.0)}"
                         + (f": best CP speedup without a drop x{best:.2f}." if best is not None
                            else ": every CP variant lost more than the tolerance."))
        # Claim 3: Tucker-2 with VBMF ranks did better than CP.
        tv = mv[(mv["family"].str.startswith("tucker2")) & (mv["ranks"] == "vbmf")]
        lines.append("3. *Claim: Tucker-2 with VBMF ranks did better than CP.* (a VBMF variant losing "
                     f"≤ {usable_points:g} points that no CP variant matches in both speed and accuracy)")
        if tv.empty or cp.empty or col is None:
            lines.append("   - needs both a Tucker-2 VBMF and a CP variant: " + _verdict(None) + ".")
        else:
            for _, r in tv.iterrows():
                lines.append(f"   - {_fmt_row(r, col)}, fine-tune lr {r['finetune_lr']:g}.")
            usable = tv[tv["delta_points"] >= -usable_points]
            if usable.empty:
                lines.append(f"   - Verdict: {_verdict(False)}: every Tucker-2 VBMF variant lost more "
                             f"than {usable_points:g} points.")
            else:
                t = usable.loc[usable[col].idxmax()]
                # "Better": no CP variant is at least as fast while keeping at least as much accuracy.
                dominated = cp[(cp[col] >= t[col]) & (cp["delta_points"] >= t["delta_points"])]
                lines.append(f"   - Verdict: {_verdict(dominated.empty)}: "
                             + ("no CP variant is both as fast and as accurate as "
                                f"{t['variant']}." if dominated.empty else
                                f"{', '.join(dominated['variant'])} is as fast and as accurate."))
        # Claim 4: Kim et al. x4.93 fewer FLOPs for a 0.5 point top-5 drop on ImageNet.
        lines.append("4. *Claim (Kim et al. 2015): x4.93 fewer FLOPs on VGG16 for 0.5 point top-5 "
                     "lost on ImageNet.* (Here: CIFAR-10 top-1, so only the FLOP side compares.)")
        half = mv[mv["delta_points"] >= -0.5].dropna(subset=["macs_x"])
        if half.empty:
            lines.append("   - no variant loses ≤ 0.5 point: " + _verdict(False) + " at this budget.")
        else:
            r = half.loc[half["macs_x"].idxmax()]
            lines.append(f"   - largest MAC reduction at ≤ 0.5 point top-1 lost: {r['variant']}, "
                         f"MACs x{r['macs_x']:.2f}, Δ {r['delta_points']:+.2f} points"
                         + (f", measured x{r[col]:.2f} ({speeds[0][1]})" if col else "") + ".")
            lines.append(f"   - Verdict: {_verdict(bool(r['macs_x'] >= 4.93))}.")
        lr = mv.groupby("family")["finetune_lr"].first()
        lines.append("5. Fine-tuning lr used (peak, per 512 images, SGD + Nesterov, BN net): "
                     + ", ".join(f"{f} {v:g}" for f, v in lr.items()) + ".")
        lines.append("")
    return "\n".join(lines)


def _kind(row) -> str:
    """How a variant chose its ranks and fitted its factors: the plot's colour."""
    if isinstance(row.get("budget"), str) and row["budget"]:
        return "budgeted (data-aware)"
    return row.get("fit") if isinstance(row.get("fit"), str) else "data-free"


def plot_accuracy_vs_speedup(df, path: str | Path, controls=()) -> Path:
    """Top-1 after fine-tuning against measured speedup, one panel per model and timing column,
    the claim's x2-x4 band shaded, the baseline's accuracy as a line and, with ``controls``
    (the baseline fine-tuned alike), the control's as a dotted line; colours tell data-free,
    data-aware and budgeted variants apart, markers the families."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speeds = _speed_columns(df)
    models = sorted(df["model"].unique())
    fig, axes = plt.subplots(len(models), max(len(speeds), 1), squeeze=False,
                             figsize=(4.5 * max(len(speeds), 1), 3.6 * len(models)))
    markers = {"svd-fc": "s", "cp-conv": "^", "tucker2-conv": "o", "tucker2+svd-all": "D"}
    colours = {"data-free": "tab:blue", "data-aware": "tab:orange", "budgeted (data-aware)": "tab:red"}
    control_of = {c["model"]: c["top1_after"] for c in controls}
    df = df.assign(kind=[_kind(r) for r in df.to_dict("records")])
    for i, model in enumerate(models):
        m = df[df["model"] == model]
        base = m[m["variant"] == "baseline"]
        for j, (col, label) in enumerate(speeds):
            ax = axes[i][j]
            ax.axvspan(*CLAIM_BAND, color="tab:green", alpha=0.12, label="claim x2-x4")
            if len(base):
                ax.axhline(100 * base["top1_after"].iloc[0], color="grey", ls="--", lw=1, label="baseline")
            if model in control_of:
                ax.axhline(100 * control_of[model], color="black", ls=":", lw=1.2,
                           label="control (baseline fine-tuned alike)")
            for (family, kind), g in m[m["variant"] != "baseline"].groupby(["family", "kind"]):
                ax.scatter(g[col], 100 * g["top1_after"], marker=markers.get(family, "o"),
                           color=colours.get(kind), label=f"{family}, {kind}")
                for _, r in g.iterrows():
                    ax.annotate(r["ranks"], (r[col], 100 * r["top1_after"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"measured speedup, {label}")
            ax.set_ylabel("top-1 after fine-tuning (%)")
            ax.set_title(model, fontsize=10)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | Path) -> Path:
    """Render to memory, write atomically (no temporary file is left on a full disk, and the error
    names ``path``) and close the figure."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_layer_speedups(layers, path: str | Path, min_speedup: float | None = None) -> Path | None:
    """Measured batch-1 speedup of each layer's decomposition (``measured_speedup`` of the
    per-layer table, timed by :func:`decomp.decompose` with ``min_speedup``), one panel per
    model, one line per variant; layers kept as they were are drawn hollow. Returns ``None``
    (and writes nothing) when no layer was timed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "measured_speedup" not in layers or layers["measured_speedup"].isna().all():
        return None
    timed = layers[layers["measured_speedup"].notna()]
    models = sorted(timed["model"].unique())
    fig, axes = plt.subplots(len(models), 1, squeeze=False, figsize=(9, 3.8 * len(models)))
    for ax, model in zip(axes[:, 0], models):
        m = timed[timed["model"] == model]
        names = list(dict.fromkeys(layers[layers["model"] == model]["name"]))
        pos = {n: i for i, n in enumerate(names)}
        for variant, g in m.groupby("variant", sort=False):
            x = g["name"].map(pos)
            line, = ax.plot(x, g["measured_speedup"], lw=0.8, alpha=0.6)
            kept = g["skipped"].notna()
            ax.scatter(x[~kept], g["measured_speedup"][~kept], color=line.get_color(), s=18, label=variant)
            ax.scatter(x[kept], g["measured_speedup"][kept], facecolors="none",
                       edgecolors=line.get_color(), s=18)
        ax.axhline(1.0, color="grey", lw=1)
        if min_speedup is not None:
            ax.axhline(min_speedup, color="tab:red", ls="--", lw=1, label=f"min_speedup x{min_speedup:g}")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_yscale("log", base=2)
        ax.set_ylabel("layer speedup, CPU batch 1")
        ax.set_title(f"{model}: per-layer measured speedup (hollow: kept as it was)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return _save_figure(fig, path)


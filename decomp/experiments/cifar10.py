"""Reproduce the x2-x4 speedup / accuracy claims on CIFAR-10: train, decompose, fine-tune, time.

    decomp reproduce --profile smoke   # ~1-2 min, no data needed
    decomp reproduce --profile cpu     # full CIFAR-10, ~50 min
    decomp reproduce --profile gpu     # full widths, one H100

Stages, each cached under ``--cache`` and skipped on a re-run (files written atomically):
(1) data (decoded once into ``--data-cache``), (2) baseline training per model
(``decomp.experiments.train`` checkpoint, resumable), (3) per model and variant (``decomp.experiments.reproduce``):
decomposition + top-1 before fine-tuning, fine-tuning + top-1 after, CPU (and GPU) timing
against the baseline interleaved in the same run. Then ``--out`` gets ``summary.{csv,md}``,
``layers.{csv,md}``, ``accuracy_vs_speedup.png`` and ``README.md``, each with a JSON sidecar.

Under ``torchrun --nproc_per_node N`` (see the README's "Scaling out") every process runs this
pipeline in step: training and fine-tuning are data-parallel (:mod:`decomp.experiments.train`),
while rank 0 alone decomposes, times and writes every file, and broadcasts what the others need
(the decomposed weights, the rows, its decisions to skip a variant under the time budget).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from decomp.cli._config import ArgumentParser
from decomp.experiments import control_reuse, distributed
from decomp.experiments.cifar10_outputs import write_before, write_outputs
from decomp.experiments.data import load_cifar10
from decomp.experiments.fixed_ranks import parse_ranks_from
from decomp.experiments.profiles import CONTROL_LR, PROFILES, Profile, finetune_config
from decomp.experiments.reproduce import (FINETUNE_LR, Variant, before_row, decompose_variant, finetune_key, joint_cpu_b1,
                                         run_variant, subset, variant_table)
from decomp.experiments.runinfo import atomic_torch_save, write_sidecar
from decomp.experiments.train import TrainConfig, TrainResult, cpu_has_native_bf16, evaluate, train
from decomp.experiments.usage import UsageError
from decomp.experiments.zoo import ModelConfig
from decomp.measure import count_macs, count_params

__all__ = ["SHARED_JPEG", "parse", "main", "train_baseline", "finetune_control", "select_variants", "data_key", "data_path", "parse_models"]

# The project's copy of CIFAR-10 beside a source checkout (../shared/data next to the repository).
REPO = Path(__file__).resolve().parents[2]  # the source checkout (results/ is written there)
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
RESULTS = REPO / "results"


def parse_models(text: str) -> tuple:
    """``"vgg16_bn:1,alexnet:0.5"`` -> ``(("vgg16_bn", 1.0), ("alexnet", 0.5))``."""
    from decomp.experiments.zoo import MODELS  # noqa: PLC0415

    models = []
    for item in filter(None, text.split(",")):
        name, _, width = item.partition(":")
        if name not in MODELS:
            raise argparse.ArgumentTypeError(f"model {name!r} is not one of {sorted(MODELS)}")
        try:
            value = float(width or 1.0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"width {width!r} of {name} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"width of {name} must be > 0; got {value:g}")
        models.append((name, value))
    if not models:
        raise argparse.ArgumentTypeError("name at least one model, e.g. vgg16_bn:0.5")
    return tuple(models)


def _calibration_images(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of images") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 image; got {n}")
    return n


def parse(argv=None, prog: str | None = None) -> tuple[Profile, argparse.Namespace]:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    p.add_argument("--data", default=None, help="CIFAR-10 path (default: the shared JPEG archive "
                   "for cpu/gpu, the embedded subset for smoke)")
    p.add_argument("--out", type=Path, default=None, help="default results/cifar10/<profile> "
                   "(results/cifar10/<profile>-ddp<N> under torchrun with N processes)")
    p.add_argument("--cache", type=Path, default=None, help="default .cache/decomp/cifar10/<profile>; runs are kept in a data-<sha> subfolder per data set")
    p.add_argument("--data-cache", type=Path, default=Path(".cache/decomp"),
                   help="decoded CIFAR-10 tensors (shared by profiles)")
    p.add_argument("--epochs", type=int, help="override the profile's baseline epochs")
    p.add_argument("--budget-s", type=float, help="override the profile's time budget (s)")
    p.add_argument("--device", help="override the profile's device")
    p.add_argument("--min-speedup", type=float, help="override the profile's per-layer speed guard "
                   "(decompose only layers measured at least this much faster at batch 1)")
    p.add_argument("--ft-epochs", type=int, help="override the profile's fine-tuning epochs per variant")
    p.add_argument("--models", type=parse_models, metavar="NAME:WIDTH,...",
                   help="override the profile's models, e.g. vgg16_bn:1 or vgg16_bn:0.5,alexnet:0.5")
    p.add_argument("--ft-distill", type=float, metavar="ALPHA",
                   help="fine-tune with knowledge distillation from the baseline: loss = (1 - ALPHA) * "
                        "cross-entropy + ALPHA * T^2 * KL at temperature 4 (decomp.experiments.train.DistillLoss)")
    p.add_argument("--amp-cpu", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for training on the CPU (default: the profile's; off anyway where the "
                        "CPU has no native bf16). --no-amp-cpu trains in float32 on any CPU, as a control "
                        "fine-tuned on a machine without native bf16 was")
    p.add_argument("--ft-control", action="store_true", default=None,
                   help="control: also fine-tune each undecomposed baseline with the same settings "
                        "(distilling from the frozen baseline when --ft-distill is on), so the gain from the "
                        "extra training alone is measured")
    p.add_argument("--control-from", type=Path, metavar="RUN",
                   help="reuse the control of an earlier run (RUN/control.csv) instead of training it, "
                        "after checking that its baseline, fine-tuning settings, data and training code are "
                        "this run's (decomp.experiments.control_reuse); a difference is refused before any work")
    p.add_argument("--ranks-from", metavar="RUN:VARIANT",
                   help="also run a committed run's architecture: VARIANT's per-layer ranks from RUN/layers.csv, "
                        "fitted data-aware again on this run's calibration images (decomp.experiments.fixed_ranks); "
                        "e.g. results/cifar10/cpu_e40:tucker2+svd-all@latency-x3")
    p.add_argument("--calibration-images", type=_calibration_images, metavar="N",
                   help="override the profile's calibration images of the data-aware and budgeted variants "
                        "(a seeded, unaugmented subset of the training set); the default --out then ends in "
                        "-cal<N>, so the profile's own results are never overwritten")
    p.add_argument("--variants", type=lambda v: tuple(x for x in v.split(",") if x),
                   help="run only these variants of the grid, comma-separated names as in summary.csv "
                        "(e.g. tucker2+svd-all@vbmf)")
    p.add_argument("--baseline-only", action="store_true",
                   help="train (or resume) the profile's baselines, then stop: start the long part "
                        "in the background, run the variants later from the cache")
    p.add_argument("--decompose-only", action="store_true",
                   help="train (or read) the baselines and decompose every variant of the grid, then stop "
                        "before fine-tuning: writes OUT/before.{csv,md} (top-1 raw and after batch-norm "
                        "recalibration, MACs, CPU batch-1 speed-up; no control). The decompositions are "
                        "cached where a full run fine-tunes them")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.decompose_only and a.baseline_only:
        p.error("argument --decompose-only: not allowed with --baseline-only (it stops after the baselines)")
    a.prog = prog
    a.parser = p  # main reports a UsageError of select_variants / data_path through it
    prof = PROFILES[a.profile]
    over = {k: v for k, v in (("epochs", a.epochs), ("budget_s", a.budget_s), ("device", a.device),
                              ("min_speedup", a.min_speedup), ("ft_epochs", a.ft_epochs), ("ft_distill", a.ft_distill),
                              ("ft_control", a.ft_control), ("amp_cpu", a.amp_cpu), ("models", a.models),
                              ("variants", a.variants), ("calibration_images", a.calibration_images))
            if v is not None}
    prof = replace(prof, **over)
    # Under torchrun the default output is the profile's plus the process count: a data-parallel
    # run (batch norms per shard) never overwrites the single-process results.
    procs = os.environ.get("WORLD_SIZE", "1")
    stem = prof.name if prof.calibration_images == PROFILES[a.profile].calibration_images else (
        f"{prof.name}-cal{prof.calibration_images}")
    a.out = a.out or Path("results/cifar10") / (stem if procs in ("", "1") else f"{stem}-ddp{procs}")
    a.cache = a.cache or Path(".cache/decomp/cifar10") / prof.name
    return prof, a


def data_path(prof: Profile, data: str | None) -> str | None:
    if data is not None:
        return None if data == "embedded" else data
    if prof.embedded:
        return None
    if SHARED_JPEG.is_file():
        return str(SHARED_JPEG)
    raise UsageError(
        f"argument --data: --profile {prof.name} needs full CIFAR-10 and {SHARED_JPEG} is not there; pass --data PATH: "
        "a folder with cifar-10-batches-py (python -c \"import torchvision; "
        "torchvision.datasets.CIFAR10('data', download=True)\" then --data data), or a folder / "
        ".tar.gz with train/<class>/*.jpg and test/<class>/*.jpg.")


def committed_baseline(prof: Profile, mcfg: ModelConfig) -> Path:
    """Where a profile with ``commit_baseline`` keeps its trained baseline, as a bf16 ``state_dict``."""
    return RESULTS / "cifar10" / prof.name / f"baseline_{mcfg.name}_w{mcfg.width:g}_bf16.pt"


def load_committed_baseline_(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load a committed bf16 ``state_dict`` into ``model`` as float32 (in place; returned)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model


# Fields of a committed baseline's train_config that change how it ran, not what it learns from:
# a machine without native bf16 trains the same recipe in float32 (without_emulated_bf16).
_PRECISION_FIELDS = ("amp", "amp_cpu", "channels_last")


def check_committed_baseline(path: Path, tcfg: TrainConfig, mcfg: ModelConfig) -> None:
    """Refuse a committed baseline trained with another recipe than ``tcfg`` / ``mcfg`` (say an
    ``--epochs`` override): its sidecar names the settings; the precision fields may differ."""
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    saved_t, saved_m = meta.get("train_config"), meta.get("model_config")
    if saved_t is None or saved_m is None:
        raise UsageError(f"committed baseline {path}: its sidecar {side.name} is missing or has no train_config / "
                         "model_config, so its recipe cannot be checked; delete the file to train anew")
    wanted_t = asdict(tcfg)
    diff = [f"{k}: committed {saved_t.get(k)!r} != this run's {v!r}" for k, v in wanted_t.items()
            if k not in _PRECISION_FIELDS and k in saved_t and saved_t[k] != v]
    diff += [f"model {k}: committed {saved_m.get(k)!r} != this run's {v!r}" for k, v in mcfg.to_dict().items()
             if k in saved_m and saved_m[k] != v]
    if diff:
        raise UsageError(f"committed baseline {path} was trained with another recipe ({'; '.join(diff)}); "
                         "run the profile without overriding its training recipe (e.g. --epochs), or train "
                         "a checkpoint of your own into --cache first")


def train_baseline(mcfg: ModelConfig, prof: Profile, data, cache: Path, progress: bool) -> tuple:
    """Train (or resume, or read from the cache) the baseline. With ``prof.commit_baseline``, a
    machine without the cache starts from the committed bf16 weights instead of training, and a
    machine that trained writes them (with a sidecar) when they are missing."""
    tcfg = TrainConfig(epochs=prof.epochs, batch_size=prof.batch_size, lr=prof.lr, seed=prof.seed,
                       channels_last=prof.channels_last, amp_cpu=prof.amp_cpu)
    torch.manual_seed(prof.seed)  # model init
    model = mcfg.build()
    checkpoint = cache / f"{mcfg.name}_w{mcfg.width:g}" / "baseline.pt"
    committed = committed_baseline(prof, mcfg)
    # rank 0's view of the files decides for every rank (several nodes need not share a disk)
    if distributed.broadcast_object(prof.commit_baseline and not checkpoint.is_file() and committed.is_file()):
        check_committed_baseline(committed, tcfg, mcfg)
        load_committed_baseline_(model, committed).to(prof.device)
        test = evaluate(model, data.test, device=prof.device)
        return model.eval(), TrainResult([], test, prof.epochs, prof.epochs, True, True, 0.0, str(committed)), tcfg
    res = train(model, data.train, tcfg, checkpoint=checkpoint, test_data=data.test, device=prof.device,
                model_config=mcfg, meta={"data": data.description}, progress=progress)
    if prof.commit_baseline and res.complete and distributed.is_main() and not committed.is_file():
        atomic_torch_save({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                           for k, v in model.state_dict().items()}, committed)
        write_sidecar(committed, extra={"what": "the profile's trained baseline, float32 rounded to bf16",
                                        "train_config": asdict(tcfg), "model_config": mcfg.to_dict(),
                                        "test_top1_float32": res.test["accuracy"], "history": res.history,
                                        "trained_on": "this machine (see cpu)", "data": data.description})
    return model.eval(), res, tcfg


def finetune_control(base, base_info: dict, prof: Profile, ft_train, test, cache: Path, progress: bool) -> dict:
    """Fine-tune a copy of the undecomposed baseline exactly as the variants are (lr of the
    Tucker-2/SVD families, the same epochs, images and distillation): how much of a variant's
    recovery is extra training. With ``prof.ft_distill`` the copy distils from the frozen
    baseline, as every variant does; a distilled variant against an undistilled control would
    credit the distillation to the decomposition. Cached and resumable like every fine-tuning."""
    config = finetune_config(prof, CONTROL_LR)
    model = copy.deepcopy(base)
    teacher = copy.deepcopy(base).eval() if config.distill else None  # train() moves and freezes it
    checkpoint = cache / "baseline+ft" / finetune_key(config, len(ft_train)) / "finetune.pt"
    res = train(model, ft_train, config, checkpoint=checkpoint, test_data=test, device=prof.device,
                model_config={"base": base_info["model_config"], "variant": "baseline+ft"}, progress=progress,
                teacher=teacher)
    top1 = res.test["accuracy"]
    return {"model": base_info["model"], "variant": "baseline+ft", "top1_base": base_info["top1"],
            "top1_after": top1, "delta_points": 100 * (top1 - base_info["top1"]),
            "finetune_epochs": config.epochs, "finetune_images": len(ft_train), "finetune_lr": config.lr,
            "finetune_distill": config.distill, "finetune_s": sum(h["seconds"] for h in res.history), "cached": res.skipped}


def select_variants(prof: Profile, extra=()) -> list:
    """The profile's grid (``decomp.experiments.reproduce.variant_table``) and ``extra`` variants
    (``--ranks-from``), narrowed to ``prof.variants``."""
    table = variant_table(prof.fractions, vbmf=prof.vbmf, cp_vbmf=prof.cp_vbmf,
                          **({"families": prof.families} if prof.families else {}),
                          aware=prof.aware, budgets=prof.budgets) + list(extra)
    if prof.variants:
        unknown = sorted(set(prof.variants) - {v.name for v in table})
        if unknown:
            raise UsageError(f"argument --variants: {','.join(prof.variants)}: {unknown} not in the grid of profile "
                             f"{prof.name!r}; choose from {[v.name for v in table]}")
        table = [v for v in table if v.name in prof.variants]
    return table


def data_key(description: dict) -> str:
    """Short identity of a data set: its archive's sha256, else its path and counts."""
    if description.get("sha256"):
        return description["sha256"][:12]
    basis = f"{description.get('path')}|{description.get('train_count')}|{description.get('test_count')}"
    return hashlib.sha256(basis.encode()).hexdigest()[:12]


def main(argv=None, prog: str | None = None) -> None:
    """Run the reproduction; ``prog`` names the command in sidecars and the run's README.

    Under torchrun it joins the process group that torchrun's environment describes (gloo on
    the CPU, NCCL on GPUs) and leaves it at the end."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on a shared CPU
    prof, args = parse(argv, prog)
    try:  # a bad --variants, a missing --data or a control that cannot be reused fails now, not after training
        extra = []
        if args.ranks_from is not None:
            fixed = parse_ranks_from(args.ranks_from)
            for name, width in prof.models:
                fixed.overrides(f"{name}_w{width:g}")  # every model of this run must be in it
            extra.append(Variant(fixed.family, None, FINETUNE_LR[fixed.family], aware=True, fixed=fixed))
        grid = select_variants(prof, extra)
        path = data_path(prof, args.data)
        args.control_source = None
        if args.control_from is not None:
            args.control_source = control_reuse.load(args.control_from)
            control_reuse.check_recipe(args.control_source, without_emulated_bf16(prof))
            control_reuse.check_code(args.control_source, REPO)
    except UsageError as e:
        args.parser.error(str(e))
    distributed.init_from_env()
    try:
        _run(replace(prof, device=str(distributed.device_for(prof.device))), args, grid, path, argv)
    finally:
        distributed.cleanup()


def without_emulated_bf16(prof: Profile) -> Profile:
    """``prof`` with bf16 autocast off where the CPU has no native bf16: emulated bf16 crawls, so
    such a machine trains in float32 (another fine-tuning setting, cached apart)."""
    if prof.amp_cpu and torch.device(prof.device).type == "cpu" and not cpu_has_native_bf16():
        return replace(prof, amp_cpu=False)
    return prof


def _run(prof: Profile, args: argparse.Namespace, grid: list, path: str | None, argv) -> None:
    t0 = time.perf_counter()
    main_rank = distributed.is_main()
    progress = not args.no_progress and main_rank
    stage_s: dict = {}
    log = (lambda msg: tqdm.write(f"[{time.perf_counter() - t0:7.0f} s] {msg}")) if main_rank else (  # noqa: E731
        lambda msg: None)
    effective = without_emulated_bf16(prof)
    if effective is not prof:
        prof = effective
        log("bf16 autocast off: this CPU has no native bf16 (avx512_bf16 / amx_bf16); training in float32")
    if distributed.active():
        log(f"torchrun: {distributed.world_size()} processes ({torch.distributed.get_backend()}), "
            f"global batch = the profile's batch size")
    # (1) data
    start = time.perf_counter()
    with distributed.main_first():  # rank 0 decodes into the cache, the others read it
        data = load_cifar10(path, cache_dir=args.data_cache)
    test = subset(data.test, prof.test_images, prof.seed)
    data = type(data)(data.train, test, data.description)
    ft_train = subset(data.train, prof.ft_images, prof.seed)
    stage_s["data"] = time.perf_counter() - start
    log(f"data: {data.description['dataset']}, {len(data.train)} train / {len(test)} test")
    reuse = getattr(args, "control_source", None)
    if reuse is not None:
        try:
            control_reuse.check_data(reuse, data.description)
        except UsageError as e:
            args.parser.error(str(e))
    # Checkpoints are only valid for the data they were trained on: key the run cache by it.
    args.cache = args.cache / f"data-{data_key(data.description)}"
    if distributed.world_size() > 1:  # per-shard batch norms give other weights: a cache of their own
        args.cache = args.cache / f"ddp{distributed.world_size()}"

    # (2) baselines, then (3) the variants: the origin's heuristic and VBMF of every model before
    # the aggressive fractions of any, so a time-boxed run with several models drops those first.
    models, plan, controls = [], [], []
    for model_name, width in prof.models:
        mcfg = ModelConfig(name=model_name, width=width)
        tag = f"{mcfg.name}_w{width:g}"
        start = time.perf_counter()
        try:
            base, res, tcfg = train_baseline(mcfg, prof, data, args.cache, progress)
        except UsageError as e:
            args.parser.error(str(e))
        stage_s[f"{tag}/baseline"] = {"seconds": time.perf_counter() - start, "cached": res.skipped,
                                      "train_s": sum(h["seconds"] for h in res.history)}
        base_info = {"model": tag, "top1": res.test["accuracy"], "params": count_params(base),
                     "macs": count_macs(base, (1, 3, 32, 32)), "model_config": mcfg.to_dict()}
        log(f"{tag} baseline top-1 {100 * res.test['accuracy']:.2f}%"
            + (" (cached)" if res.skipped else f" ({res.elapsed_s:.0f} s)"))
        models.append((tag, base, base_info))
        if args.baseline_only or args.decompose_only:  # no fine-tuning: no control either
            plan += [(tag, v) for v in grid]
            continue
        if reuse is not None:
            try:
                controls.append(control_reuse.reused_control(reuse, base_info, finetune_config(prof, CONTROL_LR),
                                                             len(ft_train)))
            except UsageError as e:
                args.parser.error(str(e))
            stage_s[f"{tag}/control"] = {"seconds": 0.0, "cached": True, "reused_from": controls[-1]["source"],
                                         "finetune_s": controls[-1]["finetune_s"]}
            log(f"{tag} control reused from {controls[-1]['source']}: top-1 {100 * controls[-1]['top1_after']:.2f}%")
        elif prof.ft_control:
            start = time.perf_counter()
            controls.append(finetune_control(base, base_info, prof, ft_train, test, args.cache / tag, progress))
            stage_s[f"{tag}/control"] = {"seconds": time.perf_counter() - start, "cached": controls[-1]["cached"],
                                         "finetune_s": controls[-1]["finetune_s"]}
            log(f"{tag} control, baseline fine-tuned alike: top-1 {100 * controls[-1]['top1_after']:.2f}% "
                f"({controls[-1]['delta_points']:+.2f} points)")
        plan += [(tag, v) for v in grid]
    if args.baseline_only:
        log(f"baselines in {args.cache}; stopping (--baseline-only)")
        return
    if args.decompose_only:
        if main_rank:
            _decompose_only(prof, args, plan, models, data, ft_train, test, stage_s, log, progress, argv)
        return
    core = lambda v: v.rank == "vbmf" or v.rank == prof.fractions[0]  # noqa: E731
    plan = [p for p in plan if core(p[1])] + [p for p in plan if not core(p[1])]

    timing = {"cpu_batches": prof.cpu_batches, "gpu_batches": prof.gpu_batches,
              "min_run_time": prof.min_run_s, "rounds": prof.rounds}
    done_rows: dict = {}  # (tag, variant name) -> (row, layer rows)
    done_models: dict = {}  # tag -> {variant name: decomposed model}, for the joint timing
    skipped = []
    by_tag = {tag: (base, info) for tag, base, info in models}
    for tag, v in tqdm(plan, desc="variants", disable=not progress):
        base, base_info = by_tag[tag]
        done = (args.cache / tag / v.name / "result.json").is_file()
        # rank 0's clock decides for all: every rank must run the same variants
        if distributed.broadcast_object(bool(prof.budget_s and time.perf_counter() - t0 > prof.budget_s and not done)):
            skipped.append(f"{tag} {v.name}")
            continue
        row, st = run_variant(base, v, train_data=ft_train, test_data=test,
                              cache=args.cache / tag, finetune=finetune_config(prof, v.lr),
                              bn_batches=prof.bn_batches, min_speedup=prof.min_speedup,
                              device=prof.device, timing=timing, base_info=base_info,
                              progress=progress, calibration_images=prof.calibration_images)
        row["baseline_epochs"], row["baseline_lr"] = prof.epochs, prof.lr
        layers = [{"model": tag, "variant": v.name, **{k: r[k] for k in (
            "name", "layer", "method", "ranks", "params_before", "params_after",
            "macs_before", "macs_after", "rel_error", "skipped")},
            "measured_speedup": (r.get("info") or {}).get("measured_speedup")} for r in st["records"]]
        done_rows[tag, v.name] = (row, layers)
        done_models.setdefault(tag, {})[v.name] = st["model"]
        stage_s[f"{tag}/{v.name}"] = {**{k: st[k] for k in st if k.endswith("_s") or k.endswith("cached")},
                                      **{k: row[k] for k in ("decompose_s", "finetune_s", "timing_s")}}
        log(f"{tag} {v.name}: top-1 {100 * row['top1_before_raw']:.2f}% (BN recal. {100 * row['top1_before']:.2f}%) -> {100 * row['top1_after']:.2f}%, "
            f"MACs x{row['macs_x']:.2f}, CPU b1 x{row['cpu_b1_speedup']:.2f}"
            + (f", GPU b1 x{row['gpu_b1_speedup']:.2f}" if "gpu_b1_speedup" in row else "")
            + (" (cached)" if st["cached"] else ""))

    if not main_rank:  # rank 0 alone times and writes
        return
    # The reported CPU batch-1 speed-ups: every variant timed side by side with its baseline.
    for tag, variants in done_models.items():
        start = time.perf_counter()
        joint = joint_cpu_b1(by_tag[tag][0], variants, input_hw=32)
        joint_cl = joint_cpu_b1(by_tag[tag][0], variants, input_hw=32, channels_last=True)
        stage_s[f"{tag}/joint_timing_s"] = time.perf_counter() - start
        for name, t in joint.items():
            row = done_rows[tag, name][0]
            row["cpu_b1_speedup_alone"] = row.get("cpu_b1_speedup")
            row["cpu_b1_speedup"], row["cpu_b1_joint_rel_iqr"] = t["speedup"], t["rel_iqr"]
            row["cpu_b1_cl_speedup"] = joint_cl[name]["speedup"]  # baseline and variant both channels_last
        log(f"{tag}: {len(joint)} variants re-timed together at CPU batch 1 "
            f"({stage_s[f'{tag}/joint_timing_s']:.0f} s)")

    # Tables grouped by model, each model's baseline first, variants in the grid's order.
    rows, layer_rows = [], []
    for tag, base, info in models:
        rows.append({"model": tag, "variant": "baseline", "family": "baseline", "ranks": "",
                     "layer_ranks": "", "top1_base": info["top1"], "top1_before_raw": info["top1"],
                     "top1_before": info["top1"], "top1_after": info["top1"], "delta_points": 0.0,
                     "params": info["params"], "params_x": 1.0, "macs": info["macs"], "macs_x": 1.0,
                     "finetune_lr": None, "baseline_epochs": prof.epochs, "baseline_lr": prof.lr})
        for v in grid:
            if (tag, v.name) in done_rows:
                row, layers = done_rows[tag, v.name]
                rows.append(row)
                layer_rows += layers
    stage_s["total"] = time.perf_counter() - t0
    write_outputs(rows, layer_rows, skipped, prof, args, data.description, stage_s, controls, argv)
    log(f"wrote {args.out}")


def _decompose_only(prof: Profile, args, plan, models, data, ft_train, test, stage_s: dict, log, progress: bool,
                    argv) -> None:
    """``--decompose-only``: stage (1) of every variant (cached as a full run caches it), the
    variants timed together against their baseline at CPU batch 1, and ``before.{csv,md}``."""
    by_tag = {tag: (base, info) for tag, base, info in models}
    rows, decomposed = [], {}
    for tag, v in tqdm(plan, desc="variants", disable=not progress):
        base, info = by_tag[tag]
        start = time.perf_counter()
        model, dec, cached = decompose_variant(
            base, v, args.cache / tag, train_data=ft_train, test_data=test, device=prof.device,
            bn_batches=prof.bn_batches, min_speedup=prof.min_speedup, progress=progress,
            calibration_images=prof.calibration_images, model_tag=tag)
        stage_s[f"{tag}/{v.name}"] = {"seconds": time.perf_counter() - start, "cached": cached,
                                      "decompose_s": dec["decompose_s"]}
        rows.append(before_row(tag, info, v, dec))
        decomposed.setdefault(tag, {})[v.name] = model
        log(f"{tag} {v.name}: top-1 {100 * dec['top1_before_raw']:.2f}% raw, "
            f"{100 * dec['top1_before']:.2f}% after BN recal., MACs x{rows[-1]['macs_x']:.2f}"
            + (" (cached)" if cached else ""))
    for tag, variants in decomposed.items():
        start = time.perf_counter()
        joint = joint_cpu_b1(by_tag[tag][0], variants, input_hw=32)
        stage_s[f"{tag}/joint_timing_s"] = time.perf_counter() - start
        for row in rows:
            if row["model"] == tag:
                row["cpu_b1_speedup"], row["cpu_b1_joint_rel_iqr"] = (joint[row["variant"]][k] for k in ("speedup", "rel_iqr"))
    stage_s["total"] = sum(v["seconds"] for v in stage_s.values() if isinstance(v, dict) and "seconds" in v)
    write_before(rows, prof, args, data.description, stage_s, argv)
    log(f"wrote {args.out / 'before.csv'}")


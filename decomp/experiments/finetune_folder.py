"""Decompose a torchvision model with the user's weights and fine-tune it on an ImageFolder tree.

    python scripts/finetune_imagefolder.py --data ROOT --model resnet18 --weights w.pt
    torchrun --nproc_per_node 8 scripts/finetune_imagefolder.py --data /data/imagenet --model vgg16 ...

``ROOT`` holds ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``
(:mod:`decomp.experiments.imagefolder`). The steps: build ``--model`` for the data's classes
and load ``--weights`` (a ``state_dict`` file, or a torchvision weights name such as
``ResNet18_Weights.IMAGENET1K_V1``, downloaded by torchvision when online); top-1 / top-5 on
``val/``; decompose (``--method``, ``--rank``: :func:`decomp.decompose`, on rank 0, broadcast);
top-1 / top-5 again; fine-tune (:func:`decomp.experiments.train.train`, resumable, data-parallel
under torchrun); top-1 / top-5 after. Rank 0 writes ``--out``/``imagefolder.{csv,md,json}``,
each with a JSON sidecar; the fine-tuning checkpoint (the final weights under ``"model"``)
and ``records.json`` (to rebuild the architecture: :func:`decomp.build_decomposed`) go to ``--cache``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from decomp.cli._config import ArgumentParser, add_config_arguments, check_output, config_values
from decomp.cli._models import load_weights_, read_state_dict
from decomp.cli._values import parse_method, parse_rank
from decomp.experiments import distributed
from decomp.experiments.imagefolder import image_folders
from decomp.experiments.reproduce import leave_out
from decomp.experiments.runinfo import atomic_write_text, write_sidecar
from decomp.experiments.train import TrainConfig, evaluate, train
from decomp.model import build_decomposed, decompose

__all__ = ["FolderConfig", "parse", "main", "build_model", "load_weights"]


@dataclass(frozen=True)
class FolderConfig:
    """Fine-tuning settings (units in the comments); each is a --flag of the script."""

    size: int = 224          # training crop and evaluation centre crop, pixels (ImageNet: 224)
    epochs: int = 1          # fine-tuning passes over train/
    batch_size: int = 64     # images per step, all processes together (the global batch)
    lr: float = 0.01         # peak lr per 512 images; used: lr * batch_size / 512 (follows the global batch)
    warmup_frac: float = 0.1  # fraction of the steps warming up linearly
    seed: int = 0            # data order, augmentation and dropout
    workers: int = 2         # DataLoader processes per rank
    eval_batch_size: int = 100  # images per evaluation forward, per rank


def parse(argv=None, prog: str | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with train/<class>/ and val/<class>/ images")
    p.add_argument("--model", default="resnet18", help="a torchvision classification model name")
    p.add_argument("--weights", default=None, help="a state_dict file (yours), or a torchvision weights name "
                   "such as ResNet18_Weights.IMAGENET1K_V1 (downloaded when online); default: random init")
    p.add_argument("--new-head", action="store_true", help="the weights' classifier has another number of "
                   "classes: keep everything else and start the last Linear afresh for the data's classes")
    p.add_argument("--method", type=parse_method, default=parse_method("tucker2"),
                   help="decompose()'s method: tucker2, cp, svd or KIND=METHOD,... (default tucker2)")
    p.add_argument("--rank", type=parse_rank, default=parse_rank("1/3"), help="decompose()'s rank (default 1/3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="default results/imagefolder/<model>")
    p.add_argument("--cache", type=Path, default=None, help="checkpoints; default .cache/decomp/imagefolder/<model>")
    p.add_argument("--no-progress", action="store_true")
    add_config_arguments(p, FolderConfig)
    a = p.parse_args(argv)
    a.config = FolderConfig(**config_values(a, FolderConfig))
    for flag, value, low in (("--size", a.size, 8), ("--epochs", a.epochs, 1), ("--batch-size", a.batch_size, 1),
                             ("--workers", a.workers, 0), ("--eval-batch-size", a.eval_batch_size, 1)):
        if value < low:
            p.error(f"argument {flag}: {value}; allowed: an int >= {low}")
    if not a.lr > 0:
        p.error(f"argument --lr: {a.lr}; allowed: a number > 0")
    if not a.data.is_dir() or not all((a.data / s).is_dir() for s in ("train", "val")):
        p.error(f"argument --data: {a.data} has no train/ and val/ folders; allowed: a folder with "
                "train/<class>/*.JPEG and val/<class>/*.JPEG (torchvision ImageFolder layout)")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"argument --device: {a.device}: CUDA is not available; allowed: cpu")
    _check_model_name(p, a.model)
    if a.weights is not None and not Path(a.weights).is_file() and "." not in a.weights:
        p.error(f"argument --weights: {a.weights} is neither a file nor a torchvision weights name; allowed: a "
                "state_dict file, or NAME_Weights.TAG such as ResNet18_Weights.IMAGENET1K_V1")
    procs = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if a.batch_size % procs:
        p.error(f"argument --batch-size: {a.batch_size} is the global batch and must be a multiple of the "
                f"{procs} processes")
    a.out = a.out or Path("results/imagefolder") / a.model
    a.cache = a.cache or Path(".cache/decomp/imagefolder") / a.model
    check_output(p, "--out", a.out, folder=True)
    a.prog, a.parser = prog, p  # _run reports a --weights that does not fit through the parser
    return a


def _check_model_name(parser: argparse.ArgumentParser, name: str) -> None:
    from torchvision import models

    if name not in models.list_models(module=models):
        parser.error(f"argument --model: {name} is not a torchvision classification model; allowed: a name of "
                     "torchvision.models.list_models(module=torchvision.models), e.g. resnet18, resnet50, vgg16")


def build_model(name: str, num_classes: int) -> nn.Module:
    from torchvision import models

    return models.get_model(name, weights=None, num_classes=num_classes)


def _named_weights(spec: str) -> dict[str, torch.Tensor]:
    from torchvision import models

    try:
        weights = models.get_weight(spec)
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"--weights {spec}: not a file and not a torchvision weights name ({e}); allowed: a "
                         "state_dict file, or NAME_Weights.TAG such as ResNet18_Weights.IMAGENET1K_V1") from None
    try:
        return weights.get_state_dict(progress=False)
    except OSError as e:  # offline: urllib's URLError is an OSError
        raise ValueError(f"--weights {spec}: torchvision could not download it ({e}); offline, save the "
                         "weights with torch.save(model.state_dict(), FILE) elsewhere and pass --weights FILE") from None


def load_weights(model: nn.Module, spec: str, new_head: bool = False) -> dict:
    """Load ``spec`` (a file or a torchvision weights name) into ``model``; returns what was done."""
    state = dict(read_state_dict(Path(spec)) if Path(spec).is_file() else _named_weights(spec))
    dropped = []
    if new_head:  # the last Linear is started afresh when its shape differs (ImageNet's 1000 classes)
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        own = model.state_dict()
        dropped = [k for k in (f"{head}.weight", f"{head}.bias") if k in state and state[k].shape != own[k].shape]
        state.update({k: own[k] for k in dropped})
    try:
        load_weights_(model, state, Path(spec))
    except ValueError as e:
        raise ValueError(f"{e}; with another number of classes in the classifier, --new-head starts it afresh") from None
    return {"weights": spec, "new_head": dropped}


def _topk(result: dict) -> dict:
    return {"top1": result["accuracy"], "top5": result.get("top5"), "loss": result["loss"]}


def main(argv=None, prog: str | None = None) -> dict:
    """Run the pipeline; returns the summary (the same on every rank)."""
    args = parse(argv, prog)
    distributed.init_from_env()
    try:
        return _run(args)
    finally:
        distributed.cleanup()


def _run(args: argparse.Namespace) -> dict:
    t0, cfg = time.perf_counter(), args.config
    device = distributed.device_for(args.device)
    progress = not args.no_progress and distributed.is_main()
    train_set, val_set = image_folders(args.data, cfg.size)
    model = build_model(args.model, len(train_set.classes))
    loaded = {"weights": None, "new_head": []}
    if args.weights is not None:  # rank 0 reads (or downloads) them; every rank gets the same tensors
        state = distributed.broadcast_object(_read_on_main(model, args) if distributed.is_main() else None)
        if isinstance(state, Exception):
            args.parser.error(f"argument --weights: {state}")
        loaded = state["info"]
        model.load_state_dict(state["state"])
    model.to(device).eval()
    evaluate_all = lambda m: _topk(evaluate(m, val_set, batch_size=cfg.eval_batch_size, device=device,  # noqa: E731
                                            topk=(1, 5), workers=cfg.workers))
    before = evaluate_all(model)
    # decomposed once, on rank 0, then broadcast: every rank fine-tunes the same model
    start = time.perf_counter()
    shared = None
    if distributed.is_main():
        dec, report = decompose(model, method=args.method.value, rank=args.rank.value, overrides=leave_out(model),
                                input_shape=(1, 3, cfg.size, cfg.size), progress=progress)
        shared = {"records": report.to_records(), "state": {k: v.cpu() for k, v in dec.state_dict().items()},
                  "params": [report.params_before, report.params_after], "macs": [report.macs_before, report.macs_after]}
    shared = distributed.broadcast_object(shared)
    decompose_s = time.perf_counter() - start
    dec = build_decomposed(model, shared["records"]).to(device)
    dec.load_state_dict(shared["state"])
    decomposed = evaluate_all(dec)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, warmup_frac=cfg.warmup_frac,
                       seed=cfg.seed)
    # the checkpoint is valid for these data, these weights (by path, size and time) and this decomposition
    weights_file = Path(args.weights) if args.weights and Path(args.weights).is_file() else None
    stamp = [weights_file.stat().st_size, weights_file.stat().st_mtime_ns] if weights_file else None
    key = hashlib.sha256(json.dumps([str(args.data.resolve()), args.weights, stamp, args.new_head, args.method.text,
                                     args.rank.text, cfg.size], default=str).encode()).hexdigest()[:12]
    cache = args.cache / f"run-{key}"
    if distributed.is_main():
        atomic_write_text(cache / "records.json", json.dumps(shared["records"], indent=1, default=str) + "\n")
    res = train(dec, train_set, tcfg, checkpoint=cache / "finetune.pt", test_data=val_set, device=device,
                model_config={"model": args.model, "method": args.method.text, "rank": args.rank.text,
                              "size": cfg.size, "weights": args.weights},
                progress=progress, workers=cfg.workers, topk=(1, 5))
    summary = {
        "model": args.model, "weights": loaded["weights"], "new_head": loaded["new_head"],
        "method": args.method.text, "rank": args.rank.text, "size": cfg.size, "classes": len(train_set.classes),
        "train_images": len(train_set), "val_images": len(val_set), "processes": distributed.world_size(),
        "params_before": shared["params"][0], "params_after": shared["params"][1],
        "macs_before": shared["macs"][0], "macs_after": shared["macs"][1],
        **{f"{k}_base": v for k, v in before.items()}, **{f"{k}_decomposed": v for k, v in decomposed.items()},
        **{f"{k}_finetuned": v for k, v in _topk(res.test).items()},
        "finetune_epochs": res.epochs_done, "resumed_from_epoch": res.start_epoch, "decompose_s": decompose_s,
        "finetune_s": sum(h["seconds"] for h in res.history), "total_s": time.perf_counter() - t0,
        "checkpoint": str(cache / "finetune.pt"),
    }
    if distributed.is_main():
        _write(summary, args, tcfg)
    return summary


def _read_on_main(model: nn.Module, args: argparse.Namespace):
    try:
        info = load_weights(model, args.weights, args.new_head)
    except ValueError as e:  # handed to every rank, which all raise it
        return e
    return {"info": info, "state": {k: v.cpu() for k, v in model.state_dict().items()}}


_COLUMNS = ("model", "weights", "method", "rank", "size", "processes", "top1_base", "top5_base",
            "top1_decomposed", "top5_decomposed", "top1_finetuned", "top5_finetuned", "params_before",
            "params_after", "macs_before", "macs_after", "finetune_epochs", "finetune_s")


def _write(summary: dict, args: argparse.Namespace, tcfg: TrainConfig) -> None:
    out = args.out
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerow(summary)
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    md = "\n".join([
        f"# {summary['model']} on {args.data.name}: decomposed ({summary['method']} at {summary['rank']}) and fine-tuned",
        "", "| stage | top-1 | top-5 |", "|---|---|---|",
        *(f"| {stage} | {pct(summary[f'top1_{stage}'])} | {pct(summary[f'top5_{stage}'])} |"
          for stage in ("base", "decomposed", "finetuned")),
        "", f"{summary['val_images']} val images, {summary['classes']} classes, {summary['size']} px; "
        f"params {summary['params_before']:,} -> {summary['params_after']:,}; fine-tuned "
        f"{summary['finetune_epochs']} epoch(s) on {summary['train_images']} images with "
        f"{summary['processes']} process(es). The JSON sidecar says how this was made.", ""])
    extra = {"summary": summary, "train_config": asdict(tcfg), "folder_config": asdict(args.config),
             "data": str(args.data.resolve()), "processes": distributed.world_size()}
    for name, text in (("imagefolder.csv", buffer.getvalue()), ("imagefolder.md", md),
                       ("imagefolder.json", json.dumps(summary, indent=1, default=str) + "\n")):
        atomic_write_text(out / name, text)
        write_sidecar(out / name, extra=extra)


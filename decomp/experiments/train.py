"""Training and evaluation: one resumable loop for baselines and for fine-tuning decomposed models.

:func:`train` runs SGD with Nesterov momentum, weight decay on conv/linear weights only, label
smoothing and a per-step schedule (linear warmup, then linear decay), with bf16 autocast on
CUDA only. After every epoch it writes a checkpoint atomically (model, optimizer, scheduler,
epochs done, RNG state, configs, history); called again with the same checkpoint path and
config it resumes where it stopped, and once training is complete it loads the final weights
and returns at once. Data order and augmentation come from :class:`decomp.experiments.data.Loader`,
seeded by ``(config.seed, epoch)``, and dropout from the global RNG saved in the checkpoint,
so an interrupted and resumed run ends with the same weights as an uninterrupted one.

Under ``torchrun`` (a process group from :func:`decomp.experiments.distributed.init_from_env`)
the same call trains data-parallel: the model is wrapped in ``DistributedDataParallel``
(gradients all-reduced; its constructor broadcasts rank 0's weights and buffers, so every rank
starts from the same model), each rank takes its shard of every global batch
(``Loader(shard=...)``, or a ``DistributedSampler`` for a ``Dataset``), batch-norm running
statistics are averaged over the ranks after every epoch (or the batch statistics synchronised
on GPUs with ``sync_batchnorm``), training metrics and :func:`evaluate` are summed over all
ranks, and only rank 0 writes the checkpoint and shows progress; a restarted ``torchrun``
resumes from it (rank 0 reads it and broadcasts it). ``TrainConfig.batch_size`` stays the
*global* batch (``batch_size / world_size`` images per rank per step), so the learning-rate
rule ``lr * batch_size / 512`` is unchanged: the lr follows the global batch.

The library prints nothing: metrics are returned, progress goes through tqdm to stderr.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from decomp.experiments import distributed
from decomp.experiments.data import Loader, Split
from decomp.experiments.runinfo import atomic_torch_save

__all__ = [
    "recalibrate_batchnorm", "cpu_has_native_bf16",
    "TrainConfig", "TrainResult", "DistillLoss", "train", "train_epoch", "evaluate", "make_optimizer",
    "make_scheduler", "lr_factor", "load_checkpoint", "load_trained_model",
]

_CHECKPOINT_FORMAT = 1
_LR_BATCH = 512  # TrainConfig.lr is the learning rate for a batch of this many images


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that changes the trained weights (the checkpoint is valid for exactly these)."""

    epochs: int = 30  # passes over the training set
    batch_size: int = 512  # images per optimizer step (the global batch, over all ranks under torchrun)
    lr: float = 0.4  # peak learning rate per batch of 512 images; used: lr * batch_size / 512
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 coefficient on conv/linear weights; none on BN and biases
    label_smoothing: float = 0.1  # cross-entropy label smoothing (training loss only)
    warmup_frac: float = 0.2  # fraction of all steps warming up linearly from 0 to the peak lr
    final_lr_frac: float = 0.0  # lr at the last step as a fraction of the peak (linear decay)
    seed: int = 0  # data order, augmentation and dropout (not the model's init)
    augment: bool = True  # random crop (4-pixel padding) and horizontal flip of training batches
    pad_mode: str = "reflect"  # crop padding: "reflect" or "zeros" (black)
    channels_last: bool = False  # batches and model in channels_last memory format
    amp: bool = True  # bf16 autocast on CUDA; on CPU only with amp_cpu
    # bf16 autocast on CPU too (training steps only; evaluation stays float32 there). Off by
    # default: measured 2.4x faster training of VGG16-BN w0.5 on an AVX512-BF16 AMD EPYC with
    # channels_last, but a CPU without native bf16 emulates it slowly.
    amp_cpu: bool = False
    distill: float = 0.0  # weight of knowledge distillation from train(teacher=...); 0 = off
    distill_temperature: float = 4.0  # softmax temperature of the distillation term

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1; got {getattr(self, name)!r}")
        if not 0 <= self.warmup_frac <= 1:
            raise ValueError(f"TrainConfig.warmup_frac must be in [0, 1]; got {self.warmup_frac!r}")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"TrainConfig.distill must be in [0, 1]; got {self.distill!r}")
        if not self.distill_temperature > 0:
            raise ValueError(f"TrainConfig.distill_temperature must be > 0; got {self.distill_temperature!r}")
        if self.pad_mode not in ("reflect", "zeros"):
            raise ValueError(f"TrainConfig.pad_mode must be 'reflect' or 'zeros'; got {self.pad_mode!r}")


# TrainConfig fields added after checkpoints were first written: absent from older checkpoints,
# which were made with (the equivalent of) these fields' defaults.
_ADDED_FIELDS = ("distill", "distill_temperature", "amp_cpu")


@dataclass
class TrainResult:
    """What :func:`train` did. ``history`` has one dict per epoch ever trained into the checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, float] | None = None  # evaluate() on test_data after the last epoch
    start_epoch: int = 0  # epochs already done when this call began (> 0: resumed)
    epochs_done: int = 0  # epochs done when this call returned
    complete: bool = False  # epochs_done == config.epochs
    skipped: bool = False  # the checkpoint was complete; nothing was trained
    elapsed_s: float = 0.0  # wall time of this call
    checkpoint: str | None = None


# ----------------------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD; weight decay on tensors with >= 2 dims (conv/linear weights), none on BN and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    lr = config.lr * config.batch_size / _LR_BATCH
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)


def lr_factor(step: int, total_steps: int, warmup_frac: float, final_frac: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: 0 -> 1 over the warmup, then 1 -> ``final_frac``."""
    warmup = round(warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    remaining = max(total_steps - warmup, 1)
    return 1.0 + (final_frac - 1.0) * (step - warmup) / remaining


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Per-step LambdaLR of :func:`lr_factor` over ``config.epochs * steps_per_epoch`` steps."""
    total = config.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, config.warmup_frac, config.final_lr_frac))


class DistillLoss(nn.Module):
    """``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)``.

    Knowledge distillation (Hinton et al. 2015): the student also matches the teacher's
    softened class probabilities at temperature ``T``; ``T^2`` keeps the term's gradient scale
    independent of ``T``. Here the teacher is the network before decomposition, so fine-tuning
    pulls the decomposed network back towards the function it approximates, not only towards
    the labels. The cross-entropy term keeps the label smoothing of the config.
    """

    def __init__(self, alpha: float, temperature: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.temperature = alpha, temperature
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        kl = nn.functional.kl_div(torch.log_softmax(logits / t, 1), torch.log_softmax(teacher_logits / t, 1),
                                  reduction="batchmean", log_target=True)
        return (1 - self.alpha) * self.ce(logits, labels) + self.alpha * t * t * kl


# ----------------------------------------------------------------------------------------
# Loops


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, read from
    ``/proc/cpuinfo``; False where that cannot be read). Without it, bf16 autocast is emulated:
    measured ~50x slower training steps of VGG16-BN w0.5 on a 2-core AVX2-only AMD EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def _autocast(device: torch.device, amp: bool, amp_cpu: bool = False):
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp and amp_cpu)
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def train_epoch(
    model: nn.Module, loader: Loader, optimizer: torch.optim.Optimizer, scheduler,
    criterion: nn.Module, *, amp: bool = True, max_steps: int | None = None,
    progress: bool = True, desc: str = "train", teacher: nn.Module | None = None,
    amp_cpu: bool = False,
) -> dict[str, float]:
    """One pass over ``loader`` (or its first ``max_steps`` batches): mean loss, accuracy, steps, seconds.

    ``teacher``: a model in eval mode whose logits on the same (augmented) batch are passed to
    ``criterion`` as a third argument (:class:`DistillLoss`).
    """
    model.train()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = steps = 0
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="step") as bar:
        for images, labels in loader:
            with _autocast(device, amp, amp_cpu):
                logits = model(images)
                if teacher is None:
                    loss = criterion(logits.float(), labels)
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = criterion(logits.float(), labels, teacher_logits.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            steps += 1
            bar.update()
            if progress and steps % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if steps == total:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if distributed.active():  # the global batch's metrics: sums over every rank's shard
        totals = distributed.all_reduce_sum(torch.stack([loss_sum.double(), correct.double(),
                                                         torch.tensor(float(seen), device=device).double()]))
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
    return {"loss": loss_sum.item() / max(seen, 1), "accuracy": correct.item() / max(seen, 1),
            "steps": steps, "seconds": seconds}


def evaluate(
    model: nn.Module, data, *, batch_size: int = 1000, device: torch.device | str | None = None,
    channels_last: bool = False, amp: bool = True, progress: bool = False,
    topk: tuple[int, ...] = (1,), distributed_eval: bool | None = None, workers: int = 0,
) -> dict[str, float]:
    """Top-1 ``accuracy`` (fraction), mean cross-entropy ``loss`` (no smoothing) and ``count`` on ``data``.

    ``data``: a :class:`Split`, or a map-style ``Dataset`` of (normalised image, label), e.g.
    ``torchvision.datasets.ImageFolder`` (read by :class:`decomp.experiments.imagefolder.DatasetLoader`
    with ``workers`` processes). ``topk``: also ``top5`` etc. for every ``k > 1`` given (a
    fraction; ``k`` is capped at the number of classes). Runs in eval mode under
    ``torch.inference_mode`` on ``device`` (default: the model's) and puts the model back in
    the mode it was in. ``distributed_eval`` (default: whether a process group is active): each
    rank evaluates its contiguous shard and the sums are all-reduced, so every rank gets the
    figures of the whole of ``data``; then every rank must call it.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    shard = (distributed.rank(), distributed.world_size()) if (
        distributed.active() if distributed_eval is None else distributed_eval) else (0, 1)
    loader = _eval_loader(data, batch_size, device, channels_last, shard, workers)
    was_training = model.training
    model.eval()
    ks = sorted({k for k in topk if k > 1})
    loss_sum = torch.zeros((), device=device)  # float32 as it always was: single-process figures unchanged
    hits = torch.zeros(1 + len(ks), device=device, dtype=torch.int64)  # top-1, top-k...
    try:
        with torch.inference_mode():
            for images, labels in tqdm(loader, desc="eval", disable=not progress, leave=False):
                with _autocast(device, amp):
                    logits = model(images).float()
                loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
                hits[0] += (logits.argmax(1) == labels).sum()
                for i, k in enumerate(ks, 1):
                    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k)
                    hits[i] += (top == labels[:, None]).any(1).sum()
    finally:
        model.train(was_training)
    if shard[1] > 1:
        loss_sum, hits = distributed.all_reduce_sum(loss_sum), distributed.all_reduce_sum(hits)
    n = len(data)
    out = {"accuracy": hits[0].item() / n, "loss": loss_sum.item() / n, "count": n}
    return {**out, **{f"top{k}": hits[i].item() / n for i, k in enumerate(ks, 1)}}


def _eval_loader(data, batch_size: int, device: torch.device, channels_last: bool, shard: tuple[int, int],
                 workers: int):
    """Unshuffled batches of this rank's contiguous shard of ``data`` (all of it for ``shard=(0, 1)``)."""
    if isinstance(data, Split):
        lo, hi = distributed.shard_bounds(len(data), *shard)
        part = data if shard[1] == 1 else Split(data.images[lo:hi], data.labels[lo:hi])
        return Loader(part, batch_size, train=False, device=device, channels_last=channels_last)
    from decomp.experiments.imagefolder import DatasetLoader  # torchvision data only when it is used

    return DatasetLoader(data, batch_size, train=False, device=device, shard=shard, workers=workers,
                         channels_last=channels_last)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: Split, *, batches: int = 40, batch_size: int = 256,
    device: torch.device | str | None = None, seed: int = 0,
) -> nn.Module:
    """Re-estimate every batch norm's running mean and variance on ``batches`` batches of ``data``.

    A decomposed conv changes the statistics of its outputs slightly, and the errors of 13
    layers compound through batch norms that still normalise with the original statistics.
    Recomputing the statistics (a forward pass, no gradient, no augmentation) repairs most of
    that before any fine-tuning. Only the batch-norm layers run in training mode (dropout stays
    off); each takes the plain average over the batches (``momentum=None``); modes and momenta
    are restored. Returns ``model``, changed in place.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches < 1:
        return model
    device = torch.device(device) if device is not None else _model_device(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    # shuffled (the splits are stored class by class), not augmented
    loader = Loader(data, batch_size, train=True, augment=False, device=device, seed=seed)
    try:
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                break
            model(images)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    return model


# ----------------------------------------------------------------------------------------
# Checkpoints


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict written by :func:`train` (``torch.load`` with ``weights_only=True``)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"Checkpoint {str(path)!r} cannot be read ({e!r}); delete it to start over") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"Checkpoint {str(path)!r} is not a decomp.experiments.train checkpoint (format {_CHECKPOINT_FORMAT})")
    return ckpt


def load_trained_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model rebuilt from the checkpoint's ``model_config`` with its weights, checkpoint dict)."""
    from decomp.experiments.zoo import ModelConfig  # zoo is only needed to rebuild

    ckpt = load_checkpoint(path)
    if ckpt.get("model_config") is None:
        raise ValueError(f"Checkpoint {str(path)!r} has no model_config; build the model and load ckpt['model']")
    model = ModelConfig.from_dict(ckpt["model_config"]).build()
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def _mismatch(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> list[str]:
    saved, wanted = dict(saved or {}), dict(wanted or {})
    return [f"{k}: checkpoint {saved.get(k)!r} != requested {wanted.get(k)!r}"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------------------
# train()


@contextlib.contextmanager
def _placed(model: nn.Module, teacher: nn.Module | None, device: torch.device, channels_last: bool):
    """Move ``model`` (and ``teacher``, in eval mode) to ``device`` and the training layout; on the
    way out hand both back in the default layout (decomposition reshapes weights) and the
    teacher in its prior mode."""
    nets = [model] + ([teacher] if teacher is not None else [])
    teacher_was_training = teacher is not None and teacher.training
    for net in nets:
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.eval()
    try:
        yield
    finally:
        for net in nets:
            if channels_last:
                net.to(memory_format=torch.contiguous_format)
        if teacher is not None:
            teacher.train(teacher_was_training)


def train(
    model: nn.Module,
    train_data,
    config: TrainConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    test_data=None,
    device: torch.device | str | None = None,
    model_config: Mapping[str, Any] | Any | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    teacher: nn.Module | None = None,
    sync_batchnorm: bool = False,
    workers: int = 0,
    topk: tuple[int, ...] = (1,),
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` with ``config``; resumable through ``checkpoint``.

    (Named ``train`` rather than ``train_`` because training is the point of the call; it
    moves ``model`` to ``device`` -- default: where it is -- and leaves it in its prior mode.)

    ``train_data``, ``test_data``: :class:`Split` s (batched by :class:`Loader`) or map-style
    ``Dataset`` s of (normalised image, label) such as ``torchvision.datasets.ImageFolder``
    (batched by :class:`decomp.experiments.imagefolder.DatasetLoader`, ``workers`` loader
    processes, augmentation by the dataset's transforms).
    ``checkpoint``: file written atomically after every epoch. If it exists, its ``config``
    and ``model_config`` must equal the requested ones (else ``ValueError`` listing the
    differences); a complete one is loaded and returned with ``skipped=True``, an incomplete
    one is resumed. ``model_config`` (a :class:`decomp.experiments.zoo.ModelConfig` or dict) and ``meta``
    (e.g. the data description) are stored in it; ``meta`` is not compared.
    ``test_data``: evaluated after the last epoch (``result.test``; ``topk`` as :func:`evaluate`).
    ``stop_after_epoch``: return once this many epochs are done (for time-boxed runs).
    ``teacher``: the model to distil from, required when ``config.distill > 0`` and refused
    otherwise (:class:`DistillLoss`); it is moved to ``device``, run in eval mode and not
    trained, and handed back in its prior mode.
    ``sync_batchnorm``: under torchrun on GPUs, normalise with the batch statistics of the whole
    global batch (``nn.SyncBatchNorm``, converted back on return); refused on the CPU, where
    PyTorch's SyncBatchNorm does not run. Data-parallel training: see the module docstring.
    """
    if (config.distill > 0) != (teacher is not None):
        raise ValueError(
            f"train(teacher=...) goes with TrainConfig.distill > 0; got distill={config.distill!r} and "
            f"teacher={'None' if teacher is None else type(teacher).__name__}: pass both or neither")
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else _model_device(model)
    shard = (distributed.rank(), distributed.world_size())
    if config.batch_size % shard[1]:
        raise ValueError(f"TrainConfig.batch_size is the global batch and must be a multiple of the "
                         f"{shard[1]} processes; got batch_size={config.batch_size}")
    if sync_batchnorm and device.type != "cuda":
        raise ValueError(f"sync_batchnorm=True needs CUDA (nn.SyncBatchNorm runs on GPUs only); got device={str(device)!r}")
    progress = progress and distributed.is_main()
    with _placed(model, teacher, device, config.channels_last):
        model_cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else (
            dict(model_config) if model_config is not None else None)
        path = Path(checkpoint) if checkpoint is not None else None
        ckpt = _load_matching_on_main(path, config, model_cfg)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            if ckpt["complete"]:
                test = ckpt.get("test") or (evaluate(model, test_data, device=device, amp=config.amp,
                                                     topk=topk, workers=workers)
                                            if test_data is not None else None)
                return TrainResult(ckpt["history"], test, ckpt["epoch"], ckpt["epoch"], True, True,
                                   time.perf_counter() - start_time, str(path))

        loader = _train_loader(train_data, config, device, shard, workers)
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(loader))
        criterion = (DistillLoss(config.distill, config.distill_temperature, config.label_smoothing)
                     if teacher is not None else nn.CrossEntropyLoss(label_smoothing=config.label_smoothing))
        history: list[dict[str, Any]] = list(ckpt["history"]) if ckpt else []
        start_epoch = ckpt["epoch"] if ckpt else 0
        if ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        last = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
        was_training, test = model.training, None
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices), _data_parallel(model, device, sync_batchnorm) as net:
            _seed_rng(ckpt, config, device, start_epoch)  # dropout's RNG, restored for the caller after
            for epoch in range(start_epoch, last):
                loader.set_epoch(epoch)
                stats = train_epoch(net, loader, optimizer, scheduler, criterion, amp=config.amp,
                                    amp_cpu=config.amp_cpu, progress=progress, desc=f"epoch {epoch + 1}/{config.epochs}",
                                    teacher=teacher)
                distributed.average_buffers_(model)  # every rank the same model (no-op in one process)
                if shard[1] > 1:
                    stats["world_size"] = shard[1]
                history.append({"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **stats})
                complete = epoch + 1 == config.epochs
                if complete and test_data is not None:
                    test = evaluate(model, test_data, device=device, channels_last=config.channels_last,
                                    amp=config.amp, progress=progress, topk=topk, workers=workers)
                if path is not None:
                    _save_checkpoint(path, {
                        "format": _CHECKPOINT_FORMAT, "complete": complete, "epoch": epoch + 1,
                        "config": asdict(config), "model_config": model_cfg, "meta": dict(meta or {}),
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": _rng_state(device),
                        "history": history, "test": test,
                    }, device)
        model.train(was_training)
        done = history[-1]["epoch"] if history else 0
        return TrainResult(history, test, start_epoch, done, done == config.epochs, False,
                           time.perf_counter() - start_time, str(path) if path else None)


def _train_loader(train_data, config: TrainConfig, device: torch.device, shard: tuple[int, int], workers: int):
    if isinstance(train_data, Split):
        return Loader(train_data, config.batch_size, train=True, device=device, seed=config.seed,
                      augment=config.augment, pad_mode=config.pad_mode, channels_last=config.channels_last,
                      shard=shard)
    from decomp.experiments.imagefolder import DatasetLoader  # torchvision data only when it is used

    loader = DatasetLoader(train_data, config.batch_size, train=True, device=device, seed=config.seed,
                           shard=shard, workers=workers, channels_last=config.channels_last)
    if len(loader) == 0:
        raise ValueError(f"train_data has {len(train_data)} images, fewer than one batch of "
                         f"TrainConfig.batch_size={config.batch_size}; use a smaller batch_size")
    return loader


@contextlib.contextmanager
def _data_parallel(model: nn.Module, device: torch.device, sync_batchnorm: bool):
    """``model`` itself in one process; under torchrun ``DistributedDataParallel(model)``, whose
    constructor broadcasts rank 0's parameters and buffers (every rank starts from one model)
    and whose backward all-reduces (averages) the gradients. With ``sync_batchnorm`` the batch
    norms become ``nn.SyncBatchNorm`` for the block and plain ones again after it."""
    if not distributed.active():
        yield model
        return
    from torch.nn.parallel import DistributedDataParallel

    converted = _to_sync_batchnorm_(model) if sync_batchnorm else []
    try:
        yield DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    finally:
        for parent, name, bn in converted:
            bn.load_state_dict(getattr(parent, name).state_dict())
            setattr(parent, name, bn)


def _to_sync_batchnorm_(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace each batch norm child of ``model`` by an ``nn.SyncBatchNorm`` sharing its
    parameters; returns (parent, name, original) to put the originals back."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats).to(device=next(child.buffers()).device)
                if child.affine:  # the same Parameter objects: the optimizer keeps training them
                    sync.weight, sync.bias = child.weight, child.bias
                if child.track_running_stats:
                    sync.running_mean, sync.running_var = child.running_mean, child.running_var
                    sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
                swapped.append((parent, name, child))
    return swapped


def _rank_seed(seed: int, rank: int) -> int:
    """Rank 0 (and a single process) keeps ``seed``; the others draw their own dropout masks."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _seed_rng(ckpt: dict | None, config: TrainConfig, device: torch.device, epoch: int) -> None:
    r, size = distributed.rank(), distributed.world_size()
    ranks = (ckpt or {}).get("rng_ranks")
    if ckpt and size > 1 and ranks and len(ranks) == size:
        _set_rng_state(ranks[r], device)
    elif ckpt and r == 0:
        _set_rng_state(ckpt["rng"], device)
    elif ckpt:  # resumed with more processes than the checkpoint had: fresh, reproducible streams
        torch.manual_seed(int(np.random.SeedSequence([config.seed, r, epoch]).generate_state(1)[0]))
    else:
        torch.manual_seed(_rank_seed(config.seed, r))


def _save_checkpoint(path: Path, state: dict[str, Any], device: torch.device) -> None:
    """Rank 0 writes ``state`` (with every rank's RNG state under torchrun); the others wait for it."""
    if distributed.active():
        ranks = distributed.gather_object(_rng_state(device))
        if distributed.is_main():
            state = {**state, "rng_ranks": ranks, "world_size": distributed.world_size()}
    if distributed.is_main():
        atomic_torch_save(state, path)
    distributed.barrier()


def _load_matching_on_main(path: Path | None, config: TrainConfig, model_cfg: dict | None) -> dict | None:
    """:func:`_load_matching` on rank 0, its result (or its error) broadcast to every rank: the
    other ranks need no copy of the file (several nodes need no shared disk)."""
    if not distributed.active():
        return _load_matching(path, config, model_cfg)
    found = error = None
    if distributed.is_main():
        try:
            found = _load_matching(path, config, model_cfg)
        except (ValueError, OSError) as e:
            error = e
    found, error = distributed.broadcast_object((found, error))
    if error is not None:
        raise error
    return found


def _load_matching(path: Path | None, config: TrainConfig, model_cfg: dict | None) -> dict | None:
    """The checkpoint at ``path`` if there is one, after checking it was made with these configs."""
    if path is None or not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    # A field added to TrainConfig after the checkpoint was written had its default then.
    saved = {**{k: v for k, v in asdict(TrainConfig()).items() if k in _ADDED_FIELDS}, **ckpt["config"]}
    diffs = _mismatch(saved, asdict(config)) + [
        f"model_config.{d}" for d in _mismatch(ckpt.get("model_config"), model_cfg)]
    if diffs:
        raise ValueError(
            f"Checkpoint {str(path)!r} was made with other settings ({'; '.join(diffs)}); "
            "pass another checkpoint path or delete it to start over"
        )
    return ckpt

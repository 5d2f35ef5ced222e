"""Training and evaluation: one resumable loop for baselines and for fine-tuning decomposed models.

:func:`train` runs SGD with Nesterov momentum, weight decay on conv/linear weights only, label
smoothing and a per-step schedule (linear warmup, then linear decay), with bf16 autocast on
CUDA only. After every epoch it writes a checkpoint atomically (model, optimizer, scheduler,
epochs done, RNG state, configs, history); called again with the same checkpoint path and
config it resumes where it stopped, and once training is complete it loads the final weights
and returns at once. Data order and augmentation come from :class:`decomp.experiments.data.Loader`,
seeded by ``(config.seed, epoch)``, and dropout from the global RNG saved in the checkpoint,
so an interrupted and resumed run ends with the same weights as an uninterrupted one.

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

import torch
from torch import nn
from tqdm.auto import tqdm

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
    batch_size: int = 512  # images per optimizer step
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
    return {"loss": loss_sum.item() / max(seen, 1), "accuracy": correct.item() / max(seen, 1),
            "steps": steps, "seconds": time.perf_counter() - start}


def evaluate(
    model: nn.Module, data: Split, *, batch_size: int = 1000, device: torch.device | str | None = None,
    channels_last: bool = False, amp: bool = True, progress: bool = False,
) -> dict[str, float]:
    """Top-1 ``accuracy`` (fraction), mean cross-entropy ``loss`` (no smoothing) and ``count`` on ``data``.

    Runs in eval mode under ``torch.inference_mode`` on ``device`` (default: the model's) and
    puts the model back in the mode it was in.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    loader = Loader(data, batch_size, train=False, device=device, channels_last=channels_last)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    try:
        with torch.inference_mode():
            for images, labels in tqdm(loader, desc="eval", disable=not progress, leave=False):
                with _autocast(device, amp):
                    logits = model(images).float()
                loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
                correct += (logits.argmax(1) == labels).sum()
    finally:
        model.train(was_training)
    n = len(data)
    return {"accuracy": correct.item() / n, "loss": loss_sum.item() / n, "count": n}


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
    train_data: Split,
    config: TrainConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    test_data: Split | None = None,
    device: torch.device | str | None = None,
    model_config: Mapping[str, Any] | Any | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` with ``config``; resumable through ``checkpoint``.

    (Named ``train`` rather than ``train_`` because training is the point of the call; it
    moves ``model`` to ``device`` -- default: where it is -- and leaves it in its prior mode.)

    ``checkpoint``: file written atomically after every epoch. If it exists, its ``config``
    and ``model_config`` must equal the requested ones (else ``ValueError`` listing the
    differences); a complete one is loaded and returned with ``skipped=True``, an incomplete
    one is resumed. ``model_config`` (a :class:`decomp.experiments.zoo.ModelConfig` or dict) and ``meta``
    (e.g. the data description) are stored in it; ``meta`` is not compared.
    ``test_data``: evaluated after the last epoch (``result.test``).
    ``stop_after_epoch``: return once this many epochs are done (for time-boxed runs).
    ``teacher``: the model to distil from, required when ``config.distill > 0`` and refused
    otherwise (:class:`DistillLoss`); it is moved to ``device``, run in eval mode and not
    trained, and handed back in its prior mode.
    """
    if (config.distill > 0) != (teacher is not None):
        raise ValueError(
            f"train(teacher=...) goes with TrainConfig.distill > 0; got distill={config.distill!r} and "
            f"teacher={'None' if teacher is None else type(teacher).__name__}: pass both or neither")
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else _model_device(model)
    with _placed(model, teacher, device, config.channels_last):
        model_cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else (
            dict(model_config) if model_config is not None else None)
        path = Path(checkpoint) if checkpoint is not None else None
        ckpt = _load_matching(path, config, model_cfg)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            if ckpt["complete"]:
                test = ckpt.get("test") or (evaluate(model, test_data, device=device, amp=config.amp)
                                            if test_data is not None else None)
                return TrainResult(ckpt["history"], test, ckpt["epoch"], ckpt["epoch"], True, True,
                                   time.perf_counter() - start_time, str(path))

        loader = Loader(train_data, config.batch_size, train=True, device=device, seed=config.seed,
                        augment=config.augment, pad_mode=config.pad_mode, channels_last=config.channels_last)
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
        with torch.random.fork_rng(devices=fork_devices):  # dropout's RNG, restored for the caller after
            if ckpt:
                _set_rng_state(ckpt["rng"], device)
            else:
                torch.manual_seed(config.seed)
            for epoch in range(start_epoch, last):
                loader.set_epoch(epoch)
                stats = train_epoch(model, loader, optimizer, scheduler, criterion, amp=config.amp,
                                    amp_cpu=config.amp_cpu, progress=progress, desc=f"epoch {epoch + 1}/{config.epochs}",
                                    teacher=teacher)
                history.append({"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **stats})
                complete = epoch + 1 == config.epochs
                if complete and test_data is not None:
                    test = evaluate(model, test_data, device=device, channels_last=config.channels_last,
                                    amp=config.amp, progress=progress)
                if path is not None:
                    atomic_torch_save({
                        "format": _CHECKPOINT_FORMAT, "complete": complete, "epoch": epoch + 1,
                        "config": asdict(config), "model_config": model_cfg, "meta": dict(meta or {}),
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": _rng_state(device),
                        "history": history, "test": test,
                    }, path)
        model.train(was_training)
        done = history[-1]["epoch"] if history else 0
        return TrainResult(history, test, start_epoch, done, done == config.epochs, False,
                           time.perf_counter() - start_time, str(path) if path else None)


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

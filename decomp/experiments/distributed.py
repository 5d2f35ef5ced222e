"""Several processes under ``torchrun``: PyTorch's own process group, nothing home-made.

``torchrun --nproc_per_node N script.py`` starts N copies of a script with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env`
turns them into a ``torch.distributed`` process group (gloo on the CPU, NCCL on GPUs, one GPU
per process: ``cuda:LOCAL_RANK``). Run without ``torchrun`` (no ``WORLD_SIZE``, or 1) nothing is
initialised and every helper here is the single-process identity, so the same code runs both ways.

The helpers are the few collective steps the harness needs: :func:`is_main` (only rank 0 writes
files and shows progress), :func:`barrier`, :func:`broadcast_object` (rank 0's value, e.g. a
decomposed model's records and ``state_dict``, on every rank), :func:`all_reduce_sum` (evaluation
counts) and :func:`average_buffers_` (batch-norm running statistics, averaged at the end of an
epoch so every rank holds the same model).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "init_from_env", "cleanup", "active", "rank", "world_size", "local_rank", "is_main", "device_for",
    "barrier", "broadcast_object", "gather_object", "all_reduce_sum", "average_buffers_", "main_first", "shard_bounds",
]

# Rank 0 alone decomposes, times and writes while the others wait in a collective; a long
# data-aware decomposition must not trip the default 30-minute timeout.
_TIMEOUT = datetime.timedelta(hours=4)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; torchrun sets it") from None


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment; True if one is active.

    Nothing happens (False) with ``WORLD_SIZE`` unset or 1. ``backend`` defaults to ``"nccl"``
    when CUDA is available and ``"gloo"`` otherwise; with NCCL the process's current CUDA device
    becomes ``cuda:LOCAL_RANK``. Calling it again once initialised is a no-op.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl'; got backend={backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend, rank=_env_int("RANK", 0), world_size=size, timeout=_TIMEOUT)
    return True


def cleanup() -> None:
    """Destroy the process group if one is active (at the end of a script)."""
    if active():
        dist.destroy_process_group()


def active() -> bool:
    """A process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files, logs and shows progress."""
    return rank() == 0


def device_for(device: str | torch.device) -> torch.device:
    """``device`` with a bare ``"cuda"`` made ``cuda:LOCAL_RANK`` under torchrun (one GPU per process)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: Any = None, src: int = 0) -> Any:
    """``value`` as given on rank ``src``, returned on every rank (pickled; tensors come back on the CPU)."""
    if not active():
        return value
    box = [value if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process)."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def _collective_device() -> torch.device:
    # NCCL moves objects and tensors through the GPU; gloo through the CPU.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device)."""
    if not active():
        return tensor
    out = tensor.detach().clone().to(_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def average_buffers_(model: nn.Module) -> nn.Module:
    """Average every floating-point buffer (batch-norm running mean and variance) over the ranks.

    Each rank's batch norms track the statistics of its own shard; averaging them at the end of
    an epoch (timm's ``distribute_bn(reduce=True)``) gives every rank the same model, estimated
    from all the data, for evaluation and the checkpoint. Integer buffers (``num_batches_tracked``)
    are equal on every rank already.
    """
    if not active():
        return model
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(all_reduce_sum(buffer) / world_size())
    return model


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. decodes the data into the shared cache), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shard_bounds(n: int, part: int | None = None, parts: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of part ``part`` of ``parts`` contiguous, near-equal shards of ``range(n)``
    (default: this rank's of all ranks); the shards cover every index exactly once."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    return n * part // parts, n * (part + 1) // parts

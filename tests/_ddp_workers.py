"""Workers of tests/test_distributed.py, spawned as the ranks of a gloo process group on the CPU.

Each rank sets torchrun's environment variables itself (so :func:`decomp.experiments.distributed.init_from_env`
is what is tested), runs one job and saves what it returns to ``<out>/<job>-rank<R>.pt``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from decomp.experiments import distributed
from decomp.experiments.data import Split
from decomp.experiments.train import TrainConfig, evaluate, train

ONE_STEP = TrainConfig(epochs=1, batch_size=16, lr=0.4, warmup_frac=0.0, label_smoothing=0.0, augment=True)
TWO_EPOCHS = TrainConfig(epochs=2, batch_size=8, lr=0.2, warmup_frac=0.0, seed=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(batchnorm: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm2d(8)] if batchnorm else []
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *norm, nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


def tiny_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def one_step(out: Path) -> dict:
    """One optimizer step on a global batch of 16 (8 per rank), with and without batch norm."""
    result = {}
    for bn in (False, True):
        model = tiny_model(bn)
        res = train(model, tiny_split(16, 1), ONE_STEP, progress=False)
        result[f"bn={bn}"] = {"state": model.state_dict(), "history": res.history,
                              "eval": evaluate(model, tiny_split(11, 2))}  # 11 images: shards of 5 and 6
    if (out / "tree").is_dir():  # the same process group also trains on an ImageFolder
        result["folder"] = folder_step(out)
    return result


def folder_step(out: Path) -> dict:
    """Two steps on an ImageFolder tree (``out/tree``, made by the test): DistributedSampler path."""
    from decomp.experiments.imagefolder import image_folders

    train_set, val_set = image_folders(out / "tree", size=16)
    model = tiny_model(True)
    res = train(model, train_set, TrainConfig(epochs=1, batch_size=10, lr=0.2, warmup_frac=0.0), test_data=val_set,
                progress=False, topk=(1, 5))
    return {"state": model.state_dict(), "test": res.test, "steps": res.history[0]["steps"]}


def interrupted(out: Path) -> dict:
    """Two epochs, the run dying abruptly (no cleanup) once the first epoch's checkpoint is written."""
    train(tiny_model(True), tiny_split(32, 1), TWO_EPOCHS, checkpoint=out / "run.pt", progress=False,
          stop_after_epoch=1)
    os._exit(3)  # as a kill would: no barrier, no destroy_process_group


def resumed(out: Path) -> dict:
    """Restart of :func:`interrupted`, and the same run uninterrupted for reference."""
    model = tiny_model(True)
    res = train(model, tiny_split(32, 1), TWO_EPOCHS, checkpoint=out / "run.pt", progress=False)
    reference = tiny_model(True)
    train(reference, tiny_split(32, 1), TWO_EPOCHS, checkpoint=out / "reference.pt", progress=False)
    return {"start_epoch": res.start_epoch, "epochs_done": res.epochs_done, "state": model.state_dict(),
            "reference": reference.state_dict()}


def run(rank: int, world: int, port: int, job: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init_from_env(), "no process group"
    try:
        result = globals()[job](Path(out))
        torch.save(result, Path(out) / f"{job}-rank{rank}.pt")
    finally:
        distributed.cleanup()

"""ImageNet-style data: ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` read by torchvision.

The layout is ``torchvision.datasets.ImageFolder``'s (one folder per class, labels the sorted
folder names), which is how the full ImageNet ILSVRC-2012 is usually unpacked (1000 ``nXXXXXXXX``
folders of ``*.JPEG`` in each split). :func:`image_folders` builds both splits with torchvision's
standard ImageNet transforms at ``size`` (224 by default: training ``RandomResizedCrop`` + flip,
validation resize to ``size / 0.875`` then a centre crop), normalised with the ImageNet mean and std.

:class:`DatasetLoader` batches any map-style dataset on a device through a ``DataLoader``: for
training a ``DistributedSampler`` (one seeded permutation per epoch, ``set_epoch``, each rank its
strided share, equal counts), for evaluation each rank's contiguous shard without padding, so
summed counts cover every image once. :func:`make_tiny_imagefolder` writes a small tree from the
embedded CIFAR-10 subset, upscaled, so the ImageFolder path is tested without downloads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SPLITS", "image_folders", "train_transform", "val_transform",
           "DatasetLoader", "make_tiny_imagefolder"]

# torchvision's ImageNet normalisation (the statistics its pretrained weights were trained with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")
_RESIZE_RATIO = 0.875  # 224 / 256: torchvision's evaluation resize before the centre crop


def train_transform(size: int = 224):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def val_transform(size: int = 224):
    from torchvision import transforms as T

    return T.Compose([T.Resize(round(size / _RESIZE_RATIO)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folders(root: str | os.PathLike, size: int = 224):
    """(train, val) ``ImageFolder`` s of ``root/train`` and ``root/val`` with the standard transforms.

    Raises ``FileNotFoundError`` naming ``root`` when a split is missing and ``ValueError`` when
    the two splits do not have the same class folders.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"--data {str(root)!r} has no {' or '.join(m + '/' for m in missing)} folder; "
                                "allowed: a folder with train/<class>/*.JPEG and val/<class>/*.JPEG "
                                "(torchvision ImageFolder layout, e.g. ImageNet's ILSVRC-2012 unpacked)")
    try:
        train = ImageFolder(str(root / "train"), transform=train_transform(size))
        val = ImageFolder(str(root / "val"), transform=val_transform(size))
    except (FileNotFoundError, RuntimeError) as e:  # a split without images
        raise FileNotFoundError(f"--data {str(root)!r}: {e}") from None
    if train.classes != val.classes:
        raise ValueError(f"--data {str(root)!r}: train/ has classes {train.classes[:5]}... ({len(train.classes)}) "
                         f"and val/ {val.classes[:5]}... ({len(val.classes)}); allowed: the same class folders in both")
    return train, val


def _shard(n: int, part: int, parts: int) -> range:
    return range(n * part // parts, n * (part + 1) // parts)


class DatasetLoader:
    """Batches of a map-style ``dataset`` of (image tensor, label) on ``device``, sharded by rank.

    ``train=True``: ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` with
    ``shard=(rank, world_size)``, ``batch_size // world_size`` images per rank per step (the
    global ``batch_size`` is the one the lr rule uses), the last partial batch dropped, so every
    rank takes the same number of steps. ``train=False``: this rank's contiguous shard, in order,
    nothing dropped or repeated. The loader processes (``workers``) are seeded from
    ``(seed, epoch, rank)``; with ``workers=0`` the transforms draw from the global RNG, which
    :func:`decomp.experiments.train.train` seeds and checkpoints.
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, device: torch.device | str = "cpu",
                 seed: int = 0, shard: tuple[int, int] = (0, 1), workers: int = 0,
                 channels_last: bool = False) -> None:
        part, parts = shard
        if batch_size < 1 or not (parts >= 1 and 0 <= part < parts):
            raise ValueError(f"batch_size must be >= 1 and shard (part, parts) with 0 <= part < parts; "
                             f"got batch_size={batch_size}, shard={shard!r}")
        if train and batch_size % parts:
            raise ValueError(f"batch_size ({batch_size}) is the global batch and must be a multiple of the "
                             f"{parts} processes")
        if workers < 0:
            raise ValueError(f"workers must be >= 0; got workers={workers}")
        self.dataset, self.batch_size, self.train, self.seed = dataset, batch_size, train, seed
        self.device, self.shard, self.workers = torch.device(device), (part, parts), workers
        self.channels_last, self.epoch = channels_last, 0
        self.per_rank = batch_size // parts if train else batch_size

    def _sampler(self):
        from torch.utils.data import DistributedSampler

        part, parts = self.shard
        if not self.train:
            return _shard(len(self.dataset), part, parts)
        sampler = DistributedSampler(self.dataset, num_replicas=parts, rank=part, shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)  # a new permutation each epoch, the same on every rank
        return sampler

    def __len__(self) -> int:
        n = len(self._sampler())
        return n // self.per_rank if self.train else -(-n // self.per_rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader

        generator = torch.Generator()
        generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, self.shard[0]]).generate_state(1)[0]))
        loader = DataLoader(self.dataset, batch_size=self.per_rank, sampler=self._sampler(), drop_last=self.train,
                            num_workers=self.workers, generator=generator, pin_memory=self.device.type == "cuda")
        self.epoch += 1
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)


def make_tiny_imagefolder(root: str | os.PathLike, *, train_per_class: int = 8, val_per_class: int = 4,
                          size: int = 64, classes: int = 10, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write ``root/{train,val}/<class>/<i>.JPEG`` from the embedded CIFAR-10 subset, upscaled to ``size``.

    ``train/`` takes the first ``train_per_class`` training images of each of the first
    ``classes`` classes, ``val/`` the first ``val_per_class`` test images (bicubic upscaling
    from 32x32, JPEG quality 90). Returns ``root``.
    """
    import io

    from decomp.experiments.data import CIFAR10_CLASSES, load_cifar10
    from decomp.experiments.runinfo import atomic_write_bytes

    if not 1 <= classes <= len(CIFAR10_CLASSES) or min(train_per_class, val_per_class, size) < 1:
        raise ValueError(f"classes must be in [1, 10] and train_per_class, val_per_class, size >= 1; got "
                         f"classes={classes}, train_per_class={train_per_class}, val_per_class={val_per_class}, size={size}")
    data = load_cifar10(None, cache_dir=cache_dir)
    root = Path(root)
    for split, source, per_class in (("train", data.train, train_per_class), ("val", data.test, val_per_class)):
        for label, name in enumerate(CIFAR10_CLASSES[:classes]):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            index = (source.labels == label).nonzero().flatten()[:per_class]
            for i, j in enumerate(index.tolist()):
                array = source.images[j].permute(1, 2, 0).numpy()  # (32, 32, 3) uint8
                image = Image.fromarray(array).resize((size, size), Image.BICUBIC)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                atomic_write_bytes(folder / f"{name}_{i:03d}.JPEG", buffer.getvalue())  # no half-written image
    return root

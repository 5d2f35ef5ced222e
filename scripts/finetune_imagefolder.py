"""Decompose a torchvision model with your weights and fine-tune it on an ImageFolder tree (ImageNet layout).

    .venv/bin/python scripts/finetune_imagefolder.py --data ROOT --model resnet18 --weights w.pt
    .venv/bin/torchrun --nproc_per_node 2 scripts/finetune_imagefolder.py --data ROOT --model resnet18 --weights w.pt

The pipeline is :mod:`decomp.experiments.finetune_folder`; ROOT holds train/<class>/*.JPEG and val/<class>/*.JPEG.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from decomp.experiments.finetune_folder import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/finetune_imagefolder.py")

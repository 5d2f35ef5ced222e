import os

# On a loaded machine, OpenMP threads that spin while waiting make 2-thread torch 10-50x slower
# (measured on the project's 2-core machines); it must be set before torch starts its runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
    return 0


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory):
    """train/<class>/*.JPEG (4 per class) and val/<class>/*.JPEG (2 per class), 32x32, made once per
    session from the embedded CIFAR-10 subset (decoding it is the slow part)."""
    from decomp.experiments.imagefolder import make_tiny_imagefolder

    return make_tiny_imagefolder(tmp_path_factory.mktemp("tiny-imagefolder"), train_per_class=4, val_per_class=2,
                                 size=32, cache_dir=tmp_path_factory.mktemp("cifar10-cache"))

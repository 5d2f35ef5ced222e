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

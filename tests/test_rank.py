import math

import numpy as np
import pytest
import torch

from decomp import VBMF, Energy, Fraction
from decomp.rank import as_policy, resolve_rank


def test_specs_normalise_to_policies():
    assert as_policy(8) == 8
    assert as_policy((3, 4)) == (3, 4)
    assert as_policy(0.25) == Fraction(0.25)
    assert as_policy("vbmf") == VBMF() and as_policy("VBMF") == VBMF()
    assert as_policy(Energy(0.9)) == Energy(0.9)


@pytest.mark.parametrize(
    "spec, error, match",
    [
        (0, ValueError, "rank must be >= 1; got 0"),
        ((0, 3), ValueError, r"ranks must be >= 1; got \(0, 3\)"),
        (1.5, ValueError, r"Fraction value must be a number in \(0, 1\]; got 1.5"),
        (0.0, ValueError, "got 0.0"),
        ("tucker", ValueError, "rank string must be 'vbmf'; got 'tucker'"),
        (True, TypeError, "got True"),
        ([1, 2, 3], TypeError, "pair of ints"),
        (None, TypeError, "got None"),
    ],
)
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        as_policy(spec)


def test_policy_objects_validate():
    with pytest.raises(ValueError, match=r"Energy value must be a number in \(0, 1\]; got 2"):
        Energy(2)
    with pytest.raises(ValueError, match=r"VBMF factor must be a number in \[0, 1\]; got 1.5"):
        VBMF(factor=1.5)
    with pytest.raises(ValueError, match="min_rank must be an int >= 1; got 0"):
        VBMF(min_rank=0)


def test_fraction_per_method():
    conv = torch.randn(64, 32, 3, 3)
    lin = torch.randn(100, 40)
    assert resolve_rank(Fraction(1 / 3), conv, "tucker2") == (math.ceil(32 / 3), math.ceil(64 / 3))
    assert resolve_rank(Fraction(0.25), conv, "cp") == 16
    assert resolve_rank(Fraction(0.25), lin, "svd") == 10


def test_explicit_ranks_per_method():
    conv = torch.randn(8, 6, 3, 3)
    assert resolve_rank(5, conv, "tucker2") == (5, 5)
    assert resolve_rank(5, conv, "cp") == 5
    assert resolve_rank((2, 3), conv, "tucker2") == (2, 3)
    with pytest.raises(TypeError, match="for Tucker-2 only"):
        resolve_rank((2, 3), conv, "cp")
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_rank(2, conv, "qr")


def test_energy_rank_matches_cumulative_spectrum():
    u, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    s = torch.tensor([10.0, 5, 3, 1] + [0.1] * 26, dtype=torch.float64)
    w = u[:, :30] @ torch.diag(s) @ v.T
    energy = (s**2).cumsum(0) / (s**2).sum()
    for e in (0.5, 0.8, 0.95, 0.999, 1.0):
        expected = int((energy < e - 1e-12).sum()) + 1
        assert resolve_rank(Energy(e), w, "svd") == expected


def test_vbmf_ranks_on_planted_tucker_kernel():
    """A kernel with Tucker ranks (R_in, R_out) = (5, 7) plus noise gets those ranks back."""
    g = torch.Generator().manual_seed(0)
    core = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64) * 3
    u_out, _ = torch.linalg.qr(torch.randn(64, 7, generator=g, dtype=torch.float64))
    u_in, _ = torch.linalg.qr(torch.randn(48, 5, generator=g, dtype=torch.float64))
    w = torch.einsum("oihw,to,si->tshw", core, u_out, u_in)
    w = w + 0.01 * torch.randn(w.shape, generator=g, dtype=torch.float64)
    assert resolve_rank(VBMF(), w, "tucker2") == (5, 7)
    assert resolve_rank(VBMF(), w, "cp") == 7
    # MUSCO weakening: factor 0 keeps the full rank, 0.5 lies half way
    assert resolve_rank(VBMF(factor=0.0), w, "tucker2") == (48, 64)
    assert resolve_rank(VBMF(factor=0.5), w, "tucker2") == (int(48 - 0.5 * 43), int(64 - 0.5 * 57))
    assert resolve_rank(VBMF(min_rank=10), w, "tucker2") == (10, 10)


def test_vbmf_on_noise_keeps_the_full_rank_as_musco_does():
    w = torch.from_numpy(np.random.default_rng(0).standard_normal((40, 60)))
    assert resolve_rank(VBMF(), w, "svd") == 40
    assert resolve_rank(VBMF(min_rank=50), torch.randn(30, 80, dtype=torch.float64), "svd") == 30

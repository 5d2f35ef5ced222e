"""pytest-benchmark: CP-ALS against tensorly's parafac, same init and sweeps, per kernel shape.

Each group is one (shape, rank): compare the two rows of a group. The default grid keeps the
two smaller shapes (tensorly needs about a second per sweep at 512 channels on 2 cores);
DECOMP_BENCH_GRID=full adds 256 and 512 channels.
"""

import os

import pytest
import torch

from decomp.cp_als import cp_als, cp_tensorly, svd_init

SWEEPS = 10
FULL = os.environ.get("DECOMP_BENCH_GRID", "representative") == "full"
CHANNELS = (64, 128, 256, 512) if FULL else (64, 128)
CASES = [(c, d) for c in CHANNELS for d in (4, 2)]
ALGORITHMS = {"als": cp_als, "tensorly": cp_tensorly}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("channels, divisor", CASES, ids=[f"{c}x{c}x3x3-r{c // d}" for c, d in CASES])
def test_cp_als(benchmark, channels, divisor, algorithm):
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(channels, channels, 3, 3, generator=g) * (2 / (channels * 9)) ** 0.5
    rank = channels // divisor
    init = svd_init(kernel, rank, seed=0)
    fn = ALGORITHMS[algorithm]
    benchmark.group = f"cp {channels}x{channels}x3x3 rank {rank}"
    result = benchmark.pedantic(fn, args=(kernel, rank), kwargs=dict(max_iter=SWEEPS, tol=0.0, init=init),
                                rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(rank=rank, sweeps=SWEEPS, rel_error=result.rel_error, algorithm=algorithm)

"""pytest-benchmark: the factorizations' own paths. CP-ALS at its defaults (exact-rank hard
configurations and a random VGG16-like kernel), CP layers' two spatial forms (one group per
layer and format: compare separable with merged), and the truncated SVD's randomized path
against the exact one and ``torch.svd_lowrank`` (one group: compare the rows).

The default grid is small; DECOMP_BENCH_GRID=full takes the SVD to VGG16 fc6's size.
"""

import math
import os

import pytest
import torch

from decomp.cp_als import cp_als, cp_to_tensor
from decomp.experiments.catalog import layer_by_id
from decomp.experiments.svd_speed import power_law_matrix
from decomp.layers import cp_layers
from decomp.svd import truncated_svd

FULL = os.environ.get("DECOMP_BENCH_GRID", "representative") == "full"
CP_CASES = [((10, 12, 3, 3), 12, True), ((64, 64, 3, 3), 24, True), ((128, 128, 3, 3), 32, False)]
SPATIAL_LAYERS = ("vgg16.features.2", "vgg16.features.28")
SVD_SHAPE, SVD_RANK = ((4096, 25088), 512) if FULL else ((1024, 6272), 128)


def _kernel(shape, rank, exact):
    gen = torch.Generator().manual_seed(0)
    if not exact:
        return torch.randn(shape, generator=gen) * math.sqrt(2 / (shape[0] * 9))
    factors = [torch.randn(n, rank, generator=gen, dtype=torch.float64) for n in shape]
    return cp_to_tensor(torch.ones(rank, dtype=torch.float64), factors).float()


@pytest.mark.parametrize("shape, rank, exact", CP_CASES,
                         ids=[f"{'exact' if e else 'random'}-{'x'.join(map(str, s))}-r{r}" for s, r, e in CP_CASES])
def test_cp_als_defaults(benchmark, shape, rank, exact):
    x = _kernel(shape, rank, exact)
    benchmark.group = "cp_als defaults"
    res = benchmark.pedantic(cp_als, args=(x, rank), rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(rank=rank, exact=exact, rel_error=res.rel_error, sweeps=res.n_iter,
                                restarts=res.restarts, converged=res.converged, stop=res.stop)


@pytest.mark.parametrize("memory_format", ["nchw", "channels_last"])
@pytest.mark.parametrize("spatial", ["separable", "merged"])
@pytest.mark.parametrize("layer_id", SPATIAL_LAYERS)
def test_cp_spatial_forward(benchmark, layer_id, spatial, memory_format, fixed_threads):
    layer = layer_by_id(layer_id)
    rank = math.ceil(layer.out_channels / 4)
    torch.manual_seed(0)
    module = cp_layers(layer.build(seed=0), rank, spatial=spatial).eval()
    x = torch.randn(layer.batched_shape(1), generator=torch.Generator().manual_seed(0))
    if memory_format == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    benchmark.group = f"cp spatial {layer_id} b1 {memory_format}"
    benchmark.extra_info.update(rank=rank, spatial=spatial, threads=fixed_threads)
    with torch.inference_mode():
        benchmark(module, x)


@pytest.mark.parametrize("method", ["exact", "randomized", "svd_lowrank"])
def test_truncated_svd(benchmark, method):
    w = power_law_matrix(*SVD_SHAPE, 0.5, seed=0)
    benchmark.group = f"truncated svd {SVD_SHAPE[0]}x{SVD_SHAPE[1]} rank {SVD_RANK}"
    if method == "svd_lowrank":
        torch.manual_seed(0)
        benchmark.pedantic(torch.svd_lowrank, args=(w,), kwargs=dict(q=SVD_RANK + 64, niter=2),
                           rounds=3, iterations=1, warmup_rounds=0)
        return
    res = benchmark.pedantic(truncated_svd, args=(w, SVD_RANK), kwargs=dict(algorithm=method),
                             rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(rel_error=res.rel_error, path=res.algorithm)

"""Forward latency of each catalogue case: one benchmark group per layer (batch, format), so
``--benchmark-group-by=group`` puts the original next to its decompositions.

Random weights (seeded): latency depends only on shapes. eval, inference_mode, fixed threads
(conftest), and the same input for every case of a layer.
"""

import pytest
import torch
from _grid import bench_batches, bench_cases

from decomp.measure import count_macs, count_params


def _params():
    out = []
    for case in bench_cases():
        formats = ["nchw", "channels_last"] if case.layer.kind == "conv" else ["nchw"]
        for batch in bench_batches():
            for fmt in formats:
                out.append(pytest.param(case, batch, fmt, id=f"{case.id}-b{batch}-{fmt}"))
    return out


@pytest.mark.parametrize(("case", "batch", "memory_format"), _params())
def test_forward(benchmark, case, batch, memory_format, fixed_threads):
    shape = case.layer.batched_shape(batch)
    module = case.build(seed=0, fit=False)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if memory_format == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    original = case.layer.build(seed=0, device="meta")
    macs = count_macs(module, shape)
    benchmark.group = f"{case.layer.id} b{batch} {memory_format}"
    benchmark.extra_info.update({
        "case": case.id, "layer": case.layer.id, "method": case.method,
        "fraction": str(case.fraction or ""), "ranks": list(case.ranks),
        "input_shape": list(shape), "memory_format": memory_format, "threads": fixed_threads,
        "macs": macs, "params": count_params(module),
        "mac_reduction": count_macs(original, shape) / macs,
        "weights": "random (seeded)",
    })
    with torch.inference_mode():
        benchmark(module, x)

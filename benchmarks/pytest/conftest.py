"""pytest-benchmark suite over ``decomp.experiments.catalog`` (not part of the unit tests: run it by path).

Environment (the same names as the asv suites):
  DECOMP_BENCH_GRID     representative (default) | full
  DECOMP_BENCH_BATCHES  comma-separated batch sizes; default "1" (the catalogue has 1,32)
  DECOMP_BENCH_THREADS  torch intra-op threads, default 1
"""

from __future__ import annotations

import os

import pytest
import torch

from decomp.experiments.runinfo import environment_info

from _grid import bench_threads


@pytest.fixture(scope="session", autouse=True)
def fixed_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(bench_threads())
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def pytest_benchmark_update_machine_info(config, machine_info):
    info = environment_info()
    machine_info["decomp"] = {k: info[k] for k in ("git_sha", "git_dirty", "packages", "cpu", "gpu")}
    machine_info["decomp"]["bench_threads"] = bench_threads()
    machine_info["decomp"]["grid"] = os.environ.get("DECOMP_BENCH_GRID", "representative")

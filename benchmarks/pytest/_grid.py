"""The grid of the pytest-benchmark suite, from the environment (see conftest.py)."""

from __future__ import annotations

import os

import pytest

from decomp.experiments.catalog import cases, representative_cases


def bench_threads() -> int:
    value = os.environ.get("DECOMP_BENCH_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"DECOMP_BENCH_THREADS must be an int >= 1; got {value!r}")
    return int(value)


def bench_cases():
    grid = os.environ.get("DECOMP_BENCH_GRID", "representative")
    if grid not in ("representative", "full"):
        raise pytest.UsageError(f"DECOMP_BENCH_GRID must be representative or full; got {grid!r}")
    return cases() if grid == "full" else representative_cases()


def bench_batches() -> list[int]:
    value = os.environ.get("DECOMP_BENCH_BATCHES", "1")
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise pytest.UsageError(f"DECOMP_BENCH_BATCHES must be ints like '1,32'; got {value!r}") from None
    if not out or min(out) < 1:
        raise pytest.UsageError(f"DECOMP_BENCH_BATCHES must be ints >= 1; got {value!r}")
    return out

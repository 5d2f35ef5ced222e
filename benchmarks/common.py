"""What the asv suites share: the grid (from ``decomp.experiments.catalog``), threads and grad mode.

Grid size comes from ``DECOMP_BENCH_GRID``: ``representative`` (default; the layers of
``decomp.experiments.catalog.REPRESENTATIVE_LAYERS``) or ``full`` (every Conv2d and Linear of VGG16 and
AlexNet). Threads come from ``DECOMP_BENCH_THREADS`` (default 1; asv.conf.json sets it with
OMP_NUM_THREADS), applied with ``torch.set_num_threads`` in every setup and recorded by asv as
part of the environment name.
"""

from __future__ import annotations

import os

import torch

from decomp.experiments.catalog import BATCH_SIZES, Case, case_by_id, cases, representative_cases

GRIDS = ("representative", "full")
MEMORY_FORMATS = ("nchw", "channels_last")


def grid_name() -> str:
    name = os.environ.get("DECOMP_BENCH_GRID", "representative")
    if name not in GRIDS:
        raise ValueError(f"DECOMP_BENCH_GRID must be one of {GRIDS}; got {name!r}")
    return name


def grid() -> tuple[Case, ...]:
    return cases() if grid_name() == "full" else representative_cases()


def case_ids(*, decomposed_only: bool = False) -> list[str]:
    return [c.id for c in grid() if not (decomposed_only and c.method == "original")]


def threads() -> int:
    value = os.environ.get("DECOMP_BENCH_THREADS", "1")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"DECOMP_BENCH_THREADS must be an int >= 1; got {value!r}") from None
    if n < 1:
        raise ValueError(f"DECOMP_BENCH_THREADS must be an int >= 1; got {value!r}")
    return n


def set_threads() -> int:
    n = threads()
    torch.set_num_threads(n)
    return n


class InferenceMode:
    """Enter ``torch.inference_mode`` in ``setup`` and leave it in ``teardown``, so the timed
    body is the bare forward call (asv times the body in the thread that ran setup)."""

    def _enter_inference(self):
        self._inference = torch.inference_mode()
        self._inference.__enter__()

    def teardown(self, *params):
        ctx = getattr(self, "_inference", None)
        if ctx is not None:
            ctx.__exit__(None, None, None)
            self._inference = None


__all__ = ["BATCH_SIZES", "MEMORY_FORMATS", "case_by_id", "case_ids", "grid", "grid_name",
           "set_threads", "threads", "InferenceMode"]

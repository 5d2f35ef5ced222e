"""Measuring layers: parameters, multiply-accumulates (MACs) and forward latency.

Units: a MAC is one multiply-accumulate; FLOPs = 2 * MACs. Every counter here returns MACs.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device: the
count is exact for grouped and depthwise convolutions and costs no arithmetic, so it can be
used inside :func:`decomp.decompose` for every layer of a large model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs"]


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(
            f"input_shape must be a sequence of ints such as (1, 3, 224, 224); got {input_shape!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be non-empty with every entry >= 1; got {input_shape!r}")
    return shape


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on an input of ``input_shape``.

    ``input_shape`` includes the batch dimension, e.g. ``(1, 3, 224, 224)``. The forward runs
    on ``meta`` stand-ins for the weights: no arithmetic, and the module itself is not touched.
    """
    shape = _check_shape(input_shape)
    # Stand-in meta tensors for every parameter and buffer: no copy of the real weights.
    meta_state = {
        name: torch.empty(t.shape, dtype=t.dtype, device="meta")
        for name, t in [*module.named_parameters(), *module.named_buffers()]
    }
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    x = torch.empty(shape, device="meta", dtype=dtype)
    with FlopCounterMode(display=False) as counter:
        functional_call(module, meta_state, (x,))
    flops = counter.get_total_flops()
    return flops // 2

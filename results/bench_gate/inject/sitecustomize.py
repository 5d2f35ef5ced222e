"""Injected slowdown for the gate's evidence (results/bench_gate/README.md): with this folder on
PYTHONPATH and DECOMP_GATE_SLOWDOWN=F (e.g. 1.3), every forward of a 1x1 conv or a depthwise conv
(groups == in_channels > 1) -- the layers Tucker-2 and CP build -- burns (F - 1) times its own
thread CPU time after it runs, so it costs F times as much on the gate's clock. Dense k x k convs,
Linears and everything else are untouched. Nothing happens without the variable, or when it
is not a number > 1 (then a line on stderr says so).

It patches torch.nn.Conv2d.forward from outside the code under test; decomp is not imported.
"""
import os
import sys
import time

_factor_text = os.environ.get("DECOMP_GATE_SLOWDOWN")


def _install(factor: float) -> None:
    import torch.nn as nn

    forward = nn.Conv2d.forward

    def slowed(self, x):
        t0 = time.thread_time()
        out = forward(self, x)
        if self.kernel_size == (1, 1) or (self.groups > 1 and self.groups == self.in_channels):
            until = t0 + factor * (time.thread_time() - t0)
            while time.thread_time() < until:
                pass
        return out

    nn.Conv2d.forward = slowed


if _factor_text:
    try:
        _factor = float(_factor_text)
    except ValueError:
        _factor = 0.0
    if _factor > 1:
        _install(_factor)
    else:
        print(f"sitecustomize: DECOMP_GATE_SLOWDOWN must be a number > 1; got {_factor_text!r}, "
              "no slowdown injected", file=sys.stderr)

"""Time to decompose one layer with the library's default settings (CPU).

The layer has random (seeded) weights, so the iteration counts of CP-ALS / HOOI until
convergence are those of a random tensor, usually more than for a trained layer.
Layers with more than ``MAX_WEIGHT`` weights (the big Linears of VGG16 and AlexNet, whose
float64 SVD takes minutes on one thread) are left out of the grid.
"""

import math

from .common import case_by_id, case_ids, set_threads

MAX_WEIGHT = 2**23  # weights (S * T * kh * kw) of the largest layer decomposed here


def _small(case_id: str) -> bool:
    layer = case_by_id(case_id).layer
    return layer.in_channels * layer.out_channels * math.prod(layer.kernel_size) <= MAX_WEIGHT


class Decompose:
    params = [[c for c in case_ids(decomposed_only=True) if _small(c)]]
    param_names = ["case"]
    timeout = 900
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0

    def setup(self, case_id):
        from decomp import cp_conv2d, svd_conv1x1, svd_linear, tucker2_conv2d

        set_threads()
        self.case = case_by_id(case_id)
        self.layer = self.case.layer.build(seed=0)
        method, kind, ranks = self.case.method, self.case.layer.kind, self.case.ranks
        if method == "tucker2":
            self.fn, self.rank = tucker2_conv2d, ranks
        elif method == "cp":
            self.fn, self.rank = cp_conv2d, ranks[0]
        else:
            self.fn, self.rank = (svd_linear if kind == "linear" else svd_conv1x1), ranks[0]

    def time_decompose(self, case_id):
        self.fn(self.layer, self.rank)

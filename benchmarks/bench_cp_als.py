"""CP-ALS against tensorly's ``parafac`` on VGG16 kernel shapes, same init, same sweeps (CPU).

The grid is the one of ``scripts/cp_speed.py`` (``results/cp_als/``): (T, T, 3, 3) kernels at
ranks T/4 and T/2, both algorithms started from the same ``svd_init`` and run for exactly
``SWEEPS`` sweeps (tol=0), so time and final error compare like for like. Random kernels
(seeded): the errors are those of random tensors, not of trained layers.
"""

import torch

from .common import set_threads

SWEEPS = 10
CHANNELS = (64, 128, 256, 512)
RANK_DIVISORS = (4, 2)
ALGORITHMS = ("als", "tensorly")


class CPALS:
    params = [list(CHANNELS), list(RANK_DIVISORS), list(ALGORITHMS)]
    param_names = ["channels", "rank_divisor", "algorithm"]
    timeout = 1200
    number = 1
    repeat = (1, 3, 120.0)
    warmup_time = 0

    def setup(self, channels, rank_divisor, algorithm):
        from decomp.cp_als import cp_als, cp_tensorly, svd_init

        set_threads()
        g = torch.Generator().manual_seed(0)
        self.kernel = torch.randn(channels, channels, 3, 3, generator=g) * (2 / (channels * 9)) ** 0.5
        self.rank = channels // rank_divisor
        self.init = svd_init(self.kernel, self.rank, seed=0)
        self.fn = cp_als if algorithm == "als" else cp_tensorly

    def _run(self):
        return self.fn(self.kernel, self.rank, max_iter=SWEEPS, tol=0.0, init=self.init)

    def time_cp(self, channels, rank_divisor, algorithm):
        self._run()

    def track_rel_error(self, channels, rank_divisor, algorithm):
        return self._run().rel_error

    track_rel_error.unit = "relative error"

"""The factorizations' own paths (CPU): CP-ALS at its defaults, CP layers' two spatial forms,
and the truncated SVD's randomized path against the exact one and ``torch.svd_lowrank``.

The committed measurements are ``results/cp_als/recovery*``, ``results/layers/vgg16_cp_spatial_*``
and ``results/svd/``; these suites track the same paths across commits, at sizes that fit a
benchmark run. Weights are seeded random tensors; correctness lives in ``tests/``.
"""

import math

import torch

from .common import InferenceMode, set_threads

# CP-ALS at its defaults on exact-rank kernels (the hard configurations of results/cp_als) and a
# VGG16-like random kernel at R = T/4 (no exact fit: the relative rule stops it).
CP_CASES = {"exact 10x12x3x3 r12": ((10, 12, 3, 3), 12, True),
            "exact 64x64x3x3 r24": ((64, 64, 3, 3), 24, True),
            "random 128x128x3x3 r32": ((128, 128, 3, 3), 32, False)}
SPATIAL_LAYERS = ("vgg16.features.2", "vgg16.features.14", "vgg16.features.28")
SVD_SHAPE, SVD_RANK = (2048, 12544), 256  # half of VGG16 fc6 on each side, rank 512 / 2
SVD_METHODS = ("exact", "randomized", "svd_lowrank")


def _cp_kernel(name):
    from decomp.cp_als import cp_to_tensor

    shape, rank, exact = CP_CASES[name]
    gen = torch.Generator().manual_seed(0)
    if not exact:
        return torch.randn(shape, generator=gen) * math.sqrt(2 / (shape[0] * 9)), rank
    factors = [torch.randn(n, rank, generator=gen, dtype=torch.float64) for n in shape]
    return cp_to_tensor(torch.ones(rank, dtype=torch.float64), factors).float(), rank


class CPALSDefaults:
    params = [list(CP_CASES)]
    param_names = ["kernel"]
    timeout = 600
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0

    def setup(self, kernel):
        set_threads()
        self.x, self.rank = _cp_kernel(kernel)

    def _run(self):
        from decomp.cp_als import cp_als

        return cp_als(self.x, self.rank)

    def time_cp_als(self, kernel):
        self._run()

    def track_rel_error(self, kernel):
        return self._run().rel_error

    track_rel_error.unit = "relative error"

    def track_sweeps(self, kernel):
        return self._run().n_iter

    track_sweeps.unit = "sweeps"


class CPSpatialForward(InferenceMode):
    params = [list(SPATIAL_LAYERS), ["separable", "merged"], ["nchw", "channels_last"]]
    param_names = ["layer", "spatial", "memory_format"]
    timeout = 300
    repeat = (2, 10, 10.0)
    warmup_time = 0.1

    def setup(self, layer_id, spatial, memory_format):
        from decomp.experiments.catalog import layer_by_id
        from decomp.layers import cp_layers

        set_threads()
        layer = layer_by_id(layer_id)
        rank = math.ceil(layer.out_channels / 4)
        torch.manual_seed(0)
        self.module = cp_layers(layer.build(seed=0), rank, spatial=spatial).eval()
        x = torch.randn(layer.batched_shape(1), generator=torch.Generator().manual_seed(0))
        if memory_format == "channels_last":
            self.module = self.module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x
        self._enter_inference()
        self.module(self.x)  # first call: oneDNN picks its kernels

    def time_forward(self, layer_id, spatial, memory_format):
        self.module(self.x)


class TruncatedSVD:
    params = [list(SVD_METHODS)]
    param_names = ["method"]
    timeout = 900
    number = 1
    repeat = (1, 3, 120.0)
    warmup_time = 0

    def setup(self, method):
        from decomp.experiments.svd_speed import power_law_matrix

        set_threads()
        self.w = power_law_matrix(*SVD_SHAPE, 0.5, seed=0)

    def _run(self, method):
        from decomp.svd import truncated_svd

        if method == "svd_lowrank":
            torch.manual_seed(0)
            return torch.svd_lowrank(self.w, q=SVD_RANK + 64, niter=2)
        return truncated_svd(self.w, SVD_RANK, algorithm=method)

    def time_truncated_svd(self, method):
        self._run(method)

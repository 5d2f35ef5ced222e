"""CP decomposition of convolution kernels (Lebedev et al. 2014, arXiv 1412.6553).

The kernel ``W (T, S, kh, kw)`` is approximated by ``R`` rank-one terms
``sum_r a_r (x) b_r (x) c_r (x) d_r`` with ``a (T, R)``, ``b (S, R)``, ``c (kh, R)``, ``d (kw, R)``.
The layer becomes cheap convolutions: a 1x1 conv S -> R (``b^T``), the spatial part, and a 1x1
conv R -> T (``a``, with the original bias). The spatial part is either a (kh x 1) depthwise
conv (``c``) then a (1 x kw) depthwise conv (``d``) (``spatial="separable"``, Lebedev's four
layers) or one (kh x kw) depthwise conv with filters ``c_r d_r^T`` (``spatial="merged"``).

The factors come from :func:`decomp.cp_als.cp_als` (default) or tensorly's ``parafac``
(``algorithm="tensorly"``), then :func:`decomp.cp_als.balance_cp` spreads each component's
norm evenly over the four factors so that no layer carries huge or tiny weights, which keeps
fine-tuning stable; the layer's function is unchanged by the balancing.
"""

from __future__ import annotations

import torch
from torch import nn

from .cp_als import balance_cp, cp_als, cp_tensorly
from .layers import CP_SPATIAL_DEFAULT, check_conv2d, check_rank, check_spatial, cp_layers, cp_max_rank, fill_

__all__ = ["cp_conv2d"]

ALGORITHMS = {"als": cp_als, "tensorly": cp_tensorly}
_ALS_ONLY = {"floor": None, "line_search": True, "restarts": 2}  # cp_als options tensorly lacks, defaults


def _cp_conv2d(layer: nn.Conv2d, rank: int, *, algorithm: str = "als", spatial: str = CP_SPATIAL_DEFAULT,
               max_iter: int = 3000, tol: float = 1e-5, floor: float | None = None, line_search: bool = True,
               restarts: int = 2, init="svd", seed: int = 0) -> tuple[nn.Sequential, dict]:
    check_conv2d(layer)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}; got {algorithm!r}.")
    check_spatial(spatial)
    check_rank(rank, cp_max_rank(tuple(layer.weight.shape)), layer=f"Conv2d({layer.extra_repr()})")
    als = {"floor": floor, "line_search": line_search, "restarts": restarts}
    if algorithm == "tensorly":
        changed = sorted(k for k, v in als.items() if v != _ALS_ONLY[k])
        if changed:
            raise ValueError(f"Got {', '.join(f'{k}={als[k]!r}' for k in changed)} with algorithm='tensorly'. "
                             f"However, {', '.join(_ALS_ONLY)} apply to algorithm='als' only.")
        als = {}
    weight = layer.weight.detach()
    if weight.dtype not in (torch.float32, torch.float64):  # half/bfloat16: fit in float32
        weight = weight.float()
    result = ALGORITHMS[algorithm](weight, rank, max_iter=max_iter, tol=tol, init=init, seed=seed, **als)
    a, b, c, d = balance_cp(result)  # (T, R), (S, R), (kh, R), (kw, R)
    if spatial == "merged":
        spatial_weights = [c.T[:, :, None] * d.T[:, None, :]]  # (R, kh, kw): filter r = c_r d_r^T
    else:
        spatial_weights = [c.T, d.T]  # (R, kh), (R, kw)
    weights = [b.T, *spatial_weights, a]  # (R, S), spatial, (T, R): conv weight layouts
    layers = fill_(cp_layers(layer, rank, device="meta", spatial=spatial), weights, layer)
    info = {"rel_error": result.rel_error, "converged": result.converged, "n_iter": result.n_iter,
            "restarts": result.restarts, "stop": result.stop, "algorithm": algorithm, "spatial": spatial}
    return layers, info


def cp_conv2d(layer: nn.Conv2d, rank: int, *, algorithm: str = "als", spatial: str = CP_SPATIAL_DEFAULT,
              max_iter: int = 3000, tol: float = 1e-5, floor: float | None = None, line_search: bool = True,
              restarts: int = 2, init="svd", seed: int = 0) -> nn.Sequential:
    """Replace ``layer`` by 1x1 -> spatial depthwise conv(s) -> 1x1 convolutions (CP).

    The default ``spatial="merged"`` (since issue 14; before, always the separable form) gives
    three layers; ``spatial="separable"`` Lebedev's four.

    ``rank`` is the number of CP components (channels between the convs), in
    ``[1, T*S*kh*kw / max(T, S, kh, kw)]``. ``spatial="separable"``: a (kh x 1) then a (1 x kw)
    depthwise conv; the vertical one takes stride (sh, 1), padding (ph, 0) and dilation
    (dh, 1), the horizontal one the w parts. ``spatial="merged"``: one (kh x kw) depthwise conv
    with the layer's stride, padding and dilation; the default, measured faster on CPU at batch 1
    on most VGG16 convs (``results/layers/vgg16_cp_spatial_cpu_b1_t1.md``). Both keep the padding
    mode and give the same function for the same factors. ``algorithm`` is ``"als"`` (this package's CP-ALS) or
    ``"tensorly"`` (``tensorly.decomposition.parafac``); ``max_iter``, ``tol``, ``init`` and
    ``seed`` go to it, ``floor``, ``line_search`` and ``restarts`` to ``"als"`` only (see
    :func:`decomp.cp_als.cp_als`; ``tol`` here is its relative rule). ``cp_als`` warns
    (:class:`~decomp.cp_als.CPConvergenceWarning`) when it stops unconverged. dtype and device
    follow ``layer``.
    """
    return _cp_conv2d(layer, rank, algorithm=algorithm, spatial=spatial, max_iter=max_iter, tol=tol,
                      floor=floor, line_search=line_search, restarts=restarts, init=init, seed=seed)[0]

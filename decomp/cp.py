"""CP decomposition of convolution kernels (Lebedev et al. 2014, arXiv 1412.6553).

The kernel ``W (T, S, kh, kw)`` is approximated by ``R`` rank-one terms
``sum_r a_r (x) b_r (x) c_r (x) d_r`` with ``a (T, R)``, ``b (S, R)``, ``c (kh, R)``, ``d (kw, R)``.
The layer becomes four cheap convolutions: a 1x1 conv S -> R (``b^T``), a (kh x 1) depthwise conv
(``c``), a (1 x kw) depthwise conv (``d``) and a 1x1 conv R -> T (``a``, with the original bias).

The factors come from :func:`decomp.cp_als.cp_als` (default) or tensorly's ``parafac``
(``algorithm="tensorly"``), then :func:`decomp.cp_als.balance_cp` spreads each component's
norm evenly over the four factors so that no layer carries huge or tiny weights, which keeps
fine-tuning stable; the layer's function is unchanged by the balancing.
"""

from __future__ import annotations

import torch
from torch import nn

from .cp_als import balance_cp, cp_als, cp_tensorly
from .layers import check_conv2d, check_rank, cp_layers, cp_max_rank, fill_

__all__ = ["cp_conv2d"]

ALGORITHMS = {"als": cp_als, "tensorly": cp_tensorly}


def _cp_conv2d(layer: nn.Conv2d, rank: int, *, algorithm: str = "als", max_iter: int = 100,
               tol: float = 1e-6, init="svd", seed: int = 0) -> tuple[nn.Sequential, dict]:
    check_conv2d(layer)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}; got {algorithm!r}.")
    check_rank(rank, cp_max_rank(tuple(layer.weight.shape)), layer=f"Conv2d({layer.extra_repr()})")
    weight = layer.weight.detach()
    if weight.dtype not in (torch.float32, torch.float64):  # half/bfloat16: fit in float32
        weight = weight.float()
    result = ALGORITHMS[algorithm](weight, rank, max_iter=max_iter, tol=tol, init=init, seed=seed)
    a, b, c, d = balance_cp(result)  # (T, R), (S, R), (kh, R), (kw, R)
    weights = [b.T, c.T, d.T, a]     # (R, S), (R, kh), (R, kw), (T, R): conv weight layouts
    layers = fill_(cp_layers(layer, rank, device="meta"), weights, layer)
    info = {"rel_error": result.rel_error, "n_iter": result.n_iter, "converged": result.converged,
            "algorithm": algorithm}
    return layers, info


def cp_conv2d(layer: nn.Conv2d, rank: int, *, algorithm: str = "als", max_iter: int = 100,
              tol: float = 1e-6, init="svd", seed: int = 0) -> nn.Sequential:
    """Replace ``layer`` by 1x1 -> (kh x 1) depthwise -> (1 x kw) depthwise -> 1x1 convolutions.

    ``rank`` is the number of CP components (channels between the four convs), in
    ``[1, T*S*kh*kw / max(T, S, kh, kw)]``. The vertical depthwise conv takes stride (sh, 1),
    padding (ph, 0) and dilation (dh, 1), the horizontal one the w parts; the padding mode is
    kept on both. ``algorithm`` is ``"als"`` (this package's CP-ALS) or ``"tensorly"``
    (``tensorly.decomposition.parafac``); ``max_iter``, ``tol``, ``init`` and ``seed`` go to it.
    dtype and device follow ``layer``.
    """
    return _cp_conv2d(layer, rank, algorithm=algorithm, max_iter=max_iter, tol=tol, init=init,
                      seed=seed)[0]

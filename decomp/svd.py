"""Truncated SVD of fully connected layers (Girshick, Fast R-CNN, 2015, section 3.1).

``W (out x in) ~ U_r S_r V_r^T``: the layer becomes ``Linear(in -> r)`` with weights
``S_r V_r^T`` and no bias, then ``Linear(r -> out)`` with weights ``U_r`` and the original bias.
MACs per sample fall from ``out * in`` to ``r * (in + out)``. A 1x1 convolution is the same
matrix product at every pixel and is decomposed the same way into two 1x1 convolutions.

Two algorithms (:func:`truncated_svd`): ``"exact"``, the float64 eigendecomposition of the
smaller Gram matrix (:func:`decomp.linalg.gram_svd`, the Eckart-Young optimum), and
``"randomized"``, a randomized range finder with power iterations
(:func:`decomp.linalg.randomized_svd`), whose passes cost ``(2 n_iter + 2) m n q`` against the
Gram path's ``min(m, n)^2 max(m, n)`` in float64. ``"auto"`` takes the randomized one where it
is several times cheaper: ``q = rank + oversample`` (default ``max(64, rank // 2)`` extra) at
most a quarter of ``min(m, n)`` and ``min(m, n) >= 1024``; ``results/svd/`` measures time and error of both on an fc6-sized layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .linalg import default_oversample, gram_svd, randomized_svd, squared_norm
from .layers import check_conv2d, check_linear, check_rank, fill_, svd_conv1x1_layers, svd_linear_layers

__all__ = ["svd_linear", "svd_conv1x1", "truncated_svd", "SVD_ALGORITHMS"]

SVD_ALGORITHMS = ("auto", "exact", "randomized")
_AUTO_MIN_SIDE = 1024  # "auto": below this the exact Gram path takes well under a second
_AUTO_MAX_SHARE = 4    # "auto": randomized when rank + oversample <= min(m, n) / this


@dataclass(frozen=True)
class SVDFactors:
    left: torch.Tensor   # (out, r): U_r
    right: torch.Tensor  # (r, in): S_r V_r^T
    rel_error: float     # ||W - W_r||_F / ||W||_F of these factors
    algorithm: str       # "exact" or "randomized": the path that ran
    optimal_rel_error: float | None = None  # the Eckart-Young optimum, where known (exact path)


def _check_algorithm(algorithm: object, oversample: object, n_iter: object) -> None:
    if algorithm not in SVD_ALGORITHMS:
        raise ValueError(f"Got algorithm={algorithm!r}. However, the possible choices are "
                         f"{', '.join(repr(a) for a in SVD_ALGORITHMS)}.")
    for name, value, low in (("oversample", oversample, 0), ("n_iter", n_iter, 0)):
        if name == "oversample" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"Got {name}={value!r}. However, {name} must be an int >= {low}"
                             + (" or None (the default, max(64, rank // 2))." if name == "oversample" else "."))


def resolve_algorithm(shape: tuple[int, int], rank: int, algorithm: str = "auto", oversample: int | None = None) -> str:
    """The path ``algorithm`` takes for a ``shape`` matrix at ``rank``: ``"exact"`` or ``"randomized"``."""
    if algorithm != "auto":
        return algorithm
    short = min(shape)
    q = rank + (default_oversample(rank) if oversample is None else oversample)
    return "randomized" if short >= _AUTO_MIN_SIDE and _AUTO_MAX_SHARE * q <= short else "exact"


def truncated_svd(matrix: torch.Tensor, rank: int, *, algorithm: str = "auto", oversample: int | None = None,
                  n_iter: int = 2, seed: int = 0) -> SVDFactors:
    """Rank-``rank`` approximation of a 2-D ``matrix``: the best one (``"exact"``, Eckart-Young,
    float64) or a randomized one (``oversample`` extra columns, ``n_iter`` power iterations,
    ``seed``); ``"auto"`` picks by size (:func:`resolve_algorithm`). ``rel_error`` is exact for
    the returned factors either way; ``optimal_rel_error`` is filled on the exact path only."""
    _check_algorithm(algorithm, oversample, n_iter)
    path = resolve_algorithm(tuple(matrix.shape), rank, algorithm, oversample)
    if path == "exact":
        u, s, vh = gram_svd(matrix, rank)
        s_r = s[:rank]
        total, tail = float((s**2).sum()), float((s[rank:] ** 2).sum())  # the tail without cancellation
    else:
        u, s_r, vh = randomized_svd(matrix, rank, oversample=oversample, n_iter=n_iter, seed=seed)
        total = squared_norm(matrix)
        tail = max(total - float((s_r**2).sum()), 0.0)  # the factors are a projection (see randomized_svd)
    rel_error = (tail / total) ** 0.5 if total > 0 else 0.0
    return SVDFactors(left=u, right=s_r[:, None] * vh, rel_error=rel_error, algorithm=path,
                      optimal_rel_error=rel_error if path == "exact" else None)


def _info(f: SVDFactors) -> dict:
    info = {"rel_error": f.rel_error, "svd_algorithm": f.algorithm}
    if f.optimal_rel_error is not None:
        info["optimal_rel_error"] = f.optimal_rel_error
    return info


def _svd_linear(layer: nn.Linear, rank: int, *, algorithm: str = "auto", oversample: int | None = None,
                n_iter: int = 2, seed: int = 0) -> tuple[nn.Sequential, dict]:
    check_linear(layer)
    check_rank(rank, min(layer.in_features, layer.out_features), layer=_name(layer))
    f = truncated_svd(layer.weight, rank, algorithm=algorithm, oversample=oversample, n_iter=n_iter, seed=seed)
    layers = fill_(svd_linear_layers(layer, rank, device="meta"), [f.right, f.left], layer)
    return layers, _info(f)


def _svd_conv1x1(layer: nn.Conv2d, rank: int, *, algorithm: str = "auto", oversample: int | None = None,
                 n_iter: int = 2, seed: int = 0) -> tuple[nn.Sequential, dict]:
    check_conv2d(layer)
    if tuple(layer.kernel_size) != (1, 1):
        raise ValueError(
            f"svd_conv1x1 needs a 1x1 convolution; got kernel_size={tuple(layer.kernel_size)}. "
            "Use tucker2_conv2d or cp_conv2d for larger kernels."
        )
    check_rank(rank, min(layer.in_channels, layer.out_channels), layer=_name(layer))
    f = truncated_svd(layer.weight.flatten(1), rank, algorithm=algorithm, oversample=oversample,
                      n_iter=n_iter, seed=seed)  # (T, S)
    layers = fill_(svd_conv1x1_layers(layer, rank, device="meta"), [f.right, f.left], layer)
    return layers, _info(f)


def _name(layer: nn.Module) -> str:
    return f"{type(layer).__name__}({layer.extra_repr()})"


def svd_linear(layer: nn.Linear, rank: int, *, algorithm: str = "auto", oversample: int | None = None,
               n_iter: int = 2, seed: int = 0) -> nn.Sequential:
    """Replace ``layer`` by two Linear layers through a rank-``rank`` bottleneck.

    Returns ``Sequential(Linear(in, rank, bias=False), Linear(rank, out))``; the first holds
    ``S_r V_r^T``, the second ``U_r`` and the original bias (if any). dtype and device follow
    ``layer``. ``rank`` must be in ``[1, min(in_features, out_features)]``.

    ``algorithm``: ``"exact"`` (float64 Gram eigendecomposition: the optimum), ``"randomized"``
    (range finder with ``oversample`` extra columns, ``None``: ``max(64, rank // 2)``, and
    ``n_iter`` power iterations, seeded by ``seed``; within 0.5% of the optimal error on an fc6-sized layer at rank 512, see
    ``results/svd/``) or ``"auto"`` (randomized for large matrices at small ranks, see
    :func:`resolve_algorithm`).
    """
    return _svd_linear(layer, rank, algorithm=algorithm, oversample=oversample, n_iter=n_iter, seed=seed)[0]


def svd_conv1x1(layer: nn.Conv2d, rank: int, *, algorithm: str = "auto", oversample: int | None = None,
                n_iter: int = 2, seed: int = 0) -> nn.Sequential:
    """Replace a 1x1 ``nn.Conv2d`` by two 1x1 convs through ``rank`` channels (truncated SVD).

    The first conv keeps the layer's stride, padding, dilation and padding mode; the second
    carries the bias. ``rank`` must be in ``[1, min(in_channels, out_channels)]``.
    ``algorithm``, ``oversample``, ``n_iter`` and ``seed`` as in :func:`svd_linear`.
    """
    return _svd_conv1x1(layer, rank, algorithm=algorithm, oversample=oversample, n_iter=n_iter, seed=seed)[0]

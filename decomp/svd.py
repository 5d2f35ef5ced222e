"""Truncated SVD of fully connected layers (Girshick, Fast R-CNN, 2015, section 3.1).

``W (out x in) ~ U_r S_r V_r^T``: the layer becomes ``Linear(in -> r)`` with weights
``S_r V_r^T`` and no bias, then ``Linear(r -> out)`` with weights ``U_r`` and the original bias.
MACs per sample fall from ``out * in`` to ``r * (in + out)``. A 1x1 convolution is the same
matrix product at every pixel and is decomposed the same way into two 1x1 convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .linalg import gram_svd
from .layers import check_conv2d, check_linear, check_rank, fill_, svd_conv1x1_layers, svd_linear_layers

__all__ = ["svd_linear", "svd_conv1x1", "truncated_svd"]


@dataclass(frozen=True)
class SVDFactors:
    left: torch.Tensor   # (out, r): U_r
    right: torch.Tensor  # (r, in): S_r V_r^T
    rel_error: float     # ||W - W_r||_F / ||W||_F = sqrt(sum of discarded s_i^2 / sum of all s_i^2)


def truncated_svd(matrix: torch.Tensor, rank: int) -> SVDFactors:
    """Best rank-``rank`` approximation of a 2-D ``matrix`` (Eckart-Young), computed in float64."""
    u, s, vh = gram_svd(matrix, rank)
    total = float((s**2).sum())
    tail = float((s[rank:] ** 2).sum())
    rel_error = (tail / total) ** 0.5 if total > 0 else 0.0
    return SVDFactors(left=u, right=s[:rank, None] * vh, rel_error=rel_error)


def _svd_linear(layer: nn.Linear, rank: int) -> tuple[nn.Sequential, dict]:
    check_linear(layer)
    check_rank(rank, min(layer.in_features, layer.out_features), layer=_name(layer))
    f = truncated_svd(layer.weight, rank)
    layers = fill_(svd_linear_layers(layer, rank, device="meta"), [f.right, f.left], layer)
    return layers, {"rel_error": f.rel_error}


def _svd_conv1x1(layer: nn.Conv2d, rank: int) -> tuple[nn.Sequential, dict]:
    check_conv2d(layer)
    if tuple(layer.kernel_size) != (1, 1):
        raise ValueError(
            f"svd_conv1x1 needs a 1x1 convolution; got kernel_size={tuple(layer.kernel_size)}. "
            "Use tucker2_conv2d or cp_conv2d for larger kernels."
        )
    check_rank(rank, min(layer.in_channels, layer.out_channels), layer=_name(layer))
    f = truncated_svd(layer.weight.flatten(1), rank)  # (T, S)
    layers = fill_(svd_conv1x1_layers(layer, rank, device="meta"), [f.right, f.left], layer)
    return layers, {"rel_error": f.rel_error}


def _name(layer: nn.Module) -> str:
    return f"{type(layer).__name__}({layer.extra_repr()})"


def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Replace ``layer`` by two Linear layers through a rank-``rank`` bottleneck.

    Returns ``Sequential(Linear(in, rank, bias=False), Linear(rank, out))``; the first holds
    ``S_r V_r^T``, the second ``U_r`` and the original bias (if any). dtype and device follow
    ``layer``. ``rank`` must be in ``[1, min(in_features, out_features)]``.
    """
    return _svd_linear(layer, rank)[0]


def svd_conv1x1(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """Replace a 1x1 ``nn.Conv2d`` by two 1x1 convs through ``rank`` channels (truncated SVD).

    The first conv keeps the layer's stride, padding, dilation and padding mode; the second
    carries the bias. ``rank`` must be in ``[1, min(in_channels, out_channels)]``.
    """
    return _svd_conv1x1(layer, rank)[0]

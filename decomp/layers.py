"""Checking source layers and assembling the factorized layers, without computing any factors.

The builders here only create the architecture of each decomposition (stock ``nn.Conv2d`` and
``nn.Linear`` inside an ``nn.Sequential``, every setting copied from the source layer). The
factorization modules (``svd``, ``cp``, ``tucker``) fill the weights; :func:`decomp.build_decomposed`
uses the same builders to rebuild an architecture into which a saved ``state_dict`` loads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "check_conv2d",
    "check_linear",
    "check_finite",
    "check_rank",
    "svd_linear_layers",
    "svd_conv1x1_layers",
    "cp_layers",
    "CP_SPATIAL",
    "CP_SPATIAL_DEFAULT",
    "tucker2_layers",
    "fill_",
]


# --- input checks -------------------------------------------------------------------------


def _describe(layer: nn.Module) -> str:
    return f"{type(layer).__name__} {layer.extra_repr()}"


def check_conv2d(layer: nn.Module, argument: str = "layer") -> nn.Conv2d:
    """Accept a plain, initialised, ungrouped ``nn.Conv2d``; anything else is a clear error."""
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(
            f"{argument} must be a torch.nn.Conv2d; got {type(layer).__name__}. "
            "Conv1d, Conv3d and ConvTranspose layers are not supported."
        )
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{argument} is a lazy Conv2d that has not been initialised; run one forward pass first.")
    if layer.groups != 1:
        raise ValueError(
            f"{argument} has groups={layer.groups}; only groups=1 convolutions can be decomposed "
            f"(got {_describe(layer)})."
        )
    check_finite(layer, argument)
    return layer


def check_linear(layer: nn.Module, argument: str = "layer") -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{argument} must be a torch.nn.Linear; got {type(layer).__name__}.")
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{argument} is a lazy Linear that has not been initialised; run one forward pass first.")
    check_finite(layer, argument)
    return layer


def check_finite(layer: nn.Module, argument: str = "layer") -> None:
    for pname in ("weight", "bias"):
        t = getattr(layer, pname, None)
        if t is not None and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{argument}.{pname} has {bad} NaN/Inf value(s) out of {t.numel()}; "
                "only finite weights can be decomposed."
            )


def check_rank(rank: object, maximum: int, argument: str = "rank", layer: str = "layer") -> int:
    """``rank`` must be an int in [1, maximum]."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{argument} for {layer} must be an int; got {rank!r} ({type(rank).__name__}).")
    if not 1 <= rank <= maximum:
        raise ValueError(f"{argument} for {layer} must be in [1, {maximum}]; got {rank}.")
    return rank


def cp_max_rank(shape: tuple[int, ...]) -> int:
    """Generic upper bound on the CP rank of a tensor: the product of all but its largest mode."""
    return math.prod(shape) // max(shape)


# --- assembling layers ----------------------------------------------------------------------


def _conv(layer: nn.Conv2d, in_ch: int, out_ch: int, kernel, *, stride=1, padding=0,
          dilation=1, groups=1, bias=False, padding_mode="zeros", device=None) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias=bias, padding_mode=padding_mode, device=device, dtype=layer.weight.dtype,
    )


def svd_linear_layers(layer: nn.Linear, rank: int, device=None) -> nn.Sequential:
    """``Linear(in -> rank, no bias)`` then ``Linear(rank -> out)`` with the layer's bias."""
    dtype = layer.weight.dtype
    return nn.Sequential(
        nn.Linear(layer.in_features, rank, bias=False, device=device, dtype=dtype),
        nn.Linear(rank, layer.out_features, bias=layer.bias is not None, device=device, dtype=dtype),
    )


def svd_conv1x1_layers(layer: nn.Conv2d, rank: int, device=None) -> nn.Sequential:
    """Two 1x1 convs. The first carries the layer's stride, padding and padding mode: a 1x1
    channel mix commutes with any padding (zeros stay zero without a bias, copied pixels stay
    copies), so the output is exactly the original's, border included."""
    return nn.Sequential(
        _conv(layer, layer.in_channels, rank, layer.kernel_size, stride=layer.stride,
              padding=layer.padding, dilation=layer.dilation, padding_mode=layer.padding_mode,
              device=device),
        _conv(layer, rank, layer.out_channels, 1, bias=layer.bias is not None, device=device),
    )


def tucker2_layers(layer: nn.Conv2d, ranks: tuple[int, int], device=None) -> nn.Sequential:
    """1x1 conv S -> R_in, kh x kw core R_in -> R_out with the layer's geometry, 1x1 R_out -> T.

    Padding moves to the core: it comes after a 1x1 channel mix without bias, which commutes
    with every ``padding_mode``.
    """
    r_in, r_out = ranks
    return nn.Sequential(
        _conv(layer, layer.in_channels, r_in, 1, device=device),
        _conv(layer, r_in, r_out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
              dilation=layer.dilation, padding_mode=layer.padding_mode, device=device),
        _conv(layer, r_out, layer.out_channels, 1, bias=layer.bias is not None, device=device),
    )


def _vertical_horizontal(value, neutral):
    """Split a 2-tuple setting into the vertical layer's (v, neutral) and horizontal (neutral, h)."""
    if isinstance(value, str):  # padding='same' / 'valid' keeps its meaning on each 1-D layer
        return value, value
    return (value[0], neutral), (neutral, value[1])


CP_SPATIAL = ("separable", "merged")  # cp_layers(spatial=...): the two forms of the spatial convs
# The default form: merged. On CPU at batch 1 and R = T/4 it ran faster than the separable form on
# 11 of VGG16's 13 3x3 convs in NCHW (geometric mean x1.07) and on 9 of 13 in channels_last
# (x1.03), and at most 7% slower on the others (results/layers/vgg16_cp_spatial_cpu_b1_t1.md):
# one pass over the R-channel map fewer outweighs 9 instead of 6 MACs per pixel and channel.
CP_SPATIAL_DEFAULT = "merged"


def check_spatial(spatial: object) -> str:
    if spatial not in CP_SPATIAL:
        raise ValueError(f"Got spatial={spatial!r}. However, the possible choices are "
                         f"{' and '.join(repr(v) for v in CP_SPATIAL)}.")
    return spatial


def cp_layers(layer: nn.Conv2d, rank: int, device=None, spatial: str = CP_SPATIAL_DEFAULT) -> nn.Sequential:
    """Lebedev et al. 2014: 1x1 S -> R, (kh x 1) depthwise, (1 x kw) depthwise, 1x1 R -> T.

    ``spatial="separable"`` (that form): the geometry is split between the two depthwise
    layers: the vertical one takes stride (sh, 1), padding (ph, 0), dilation (dh, 1); the
    horizontal one the w parts. The separable kernel c[y] d[x] applied this way equals the 2-D
    kernel for every ``padding_mode``, because padding indexes rows and columns independently.

    ``spatial="merged"``: 1x1 S -> R, one (kh x kw) depthwise conv with the layer's whole
    geometry (its filter r the outer product c_r d_r^T), 1x1 R -> T. kh*kw instead of kh+kw
    MACs per pixel and channel in the middle, but one layer (one pass over the R-channel map)
    fewer; ``results/layers/vgg16_cp_spatial_*`` measures the two (the default,
    :data:`CP_SPATIAL_DEFAULT`, is ``"merged"`` from that measurement).
    """
    check_spatial(spatial)
    if spatial == "merged":
        middle = [_conv(layer, rank, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                        dilation=layer.dilation, groups=rank, padding_mode=layer.padding_mode, device=device)]
    else:
        kh, kw = layer.kernel_size
        stride_v, stride_h = _vertical_horizontal(layer.stride, 1)
        pad_v, pad_h = _vertical_horizontal(layer.padding, 0)
        dil_v, dil_h = _vertical_horizontal(layer.dilation, 1)
        middle = [
            _conv(layer, rank, rank, (kh, 1), stride=stride_v, padding=pad_v, dilation=dil_v,
                  groups=rank, padding_mode=layer.padding_mode, device=device),
            _conv(layer, rank, rank, (1, kw), stride=stride_h, padding=pad_h, dilation=dil_h,
                  groups=rank, padding_mode=layer.padding_mode, device=device),
        ]
    return nn.Sequential(
        _conv(layer, layer.in_channels, rank, 1, device=device),
        *middle,
        _conv(layer, rank, layer.out_channels, 1, bias=layer.bias is not None, device=device),
    )


@torch.no_grad()
def fill_(layers: nn.Sequential, weights: list[torch.Tensor], source: nn.Module) -> nn.Sequential:
    """Materialise ``layers`` on the source layer's device, copy ``weights`` in order and the
    source's bias into the last layer. Returns ``layers``."""
    target = source.weight
    layers.to_empty(device=target.device)
    for module, weight in zip(layers, weights, strict=True):
        module.weight.copy_(weight.reshape(module.weight.shape).to(target.dtype))
    if source.bias is not None:
        layers[-1].bias.copy_(source.bias)
    return layers

"""Tucker-2 and CP layers against nn.Conv2d over every geometry a user can build."""

import pytest
import torch
from torch import nn

from conftest import rel_err
from decomp import cp_conv2d, tucker2_conv2d

GEOMETRIES = {
    "3x3": dict(kernel_size=3, padding=1),
    "3x3-nopad": dict(kernel_size=3),
    "stride-asym": dict(kernel_size=3, stride=(2, 1), padding=(1, 0)),
    "5x5-s2": dict(kernel_size=5, stride=2, padding=2),
    "1x3": dict(kernel_size=(1, 3), padding=(0, 1)),
    "3x1-stride": dict(kernel_size=(3, 1), padding=(1, 0), stride=(1, 2)),
    "dilation-asym": dict(kernel_size=3, dilation=(2, 1), padding=(2, 1)),
    "same": dict(kernel_size=3, padding="same"),
    "same-even-dilated": dict(kernel_size=(2, 4), padding="same", dilation=(1, 2)),
    "valid-stride": dict(kernel_size=3, padding="valid", stride=(3, 2)),
    "reflect": dict(kernel_size=3, padding=(1, 2), padding_mode="reflect"),
    "replicate-stride": dict(kernel_size=(3, 5), padding=2, stride=(2, 1), padding_mode="replicate"),
    "circular-dilated": dict(kernel_size=3, padding=(2, 1), dilation=(2, 1), padding_mode="circular"),
    "same-reflect": dict(kernel_size=(3, 5), padding="same", padding_mode="reflect"),
    "no-bias": dict(kernel_size=3, padding=1, bias=False),
    "1x1": dict(kernel_size=1, stride=2),
}

S, T = 10, 8


def _conv(geometry, dtype=torch.float64, device="cpu"):
    return nn.Conv2d(S, T, dtype=dtype, device=device, **geometry)


def _x(dtype=torch.float64, device="cpu"):
    return torch.randn(2, S, 13, 11, dtype=dtype, device=device)


def _set_weight(layer, w):
    with torch.no_grad():
        layer.weight.copy_(w)


def exact_tucker2_weight(shape, r_in, r_out):
    t, s, kh, kw = shape
    core = torch.randn(r_out, r_in, kh, kw, dtype=torch.float64)
    u_out, u_in = torch.randn(t, r_out, dtype=torch.float64), torch.randn(s, r_in, dtype=torch.float64)
    return torch.einsum("oihw,to,si->tshw", core, u_out, u_in)


def exact_cp_weight(shape, rank):
    a, b, c, d = (torch.randn(n, rank, dtype=torch.float64) for n in shape)
    return torch.einsum("tr,sr,hr,wr->tshw", a, b, c, d)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_tucker2_exact_rank_is_recovered(name):
    layer = _conv(GEOMETRIES[name])
    ranks = (4, 3)
    _set_weight(layer, exact_tucker2_weight(layer.weight.shape, *ranks))
    seq = tucker2_conv2d(layer, ranks)
    x = _x()
    y = layer(x)
    assert seq(x).shape == y.shape
    assert rel_err(seq(x), y) <= 1e-4


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_tucker2_full_rank_reproduces_random_layer(name):
    layer = _conv(GEOMETRIES[name])
    seq = tucker2_conv2d(layer, (S, T))
    x = _x()
    assert rel_err(seq(x), layer(x)) <= 1e-10


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_cp_exact_rank_is_recovered(name):
    layer = _conv(GEOMETRIES[name])
    rank = 4
    _set_weight(layer, exact_cp_weight(layer.weight.shape, rank))
    seq = cp_conv2d(layer, rank)
    x = _x()
    y = layer(x)
    assert seq(x).shape == y.shape
    assert rel_err(seq(x), y) <= 1e-3


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_cp_merged_and_separable_give_the_same_function(name):
    layer = _conv(GEOMETRIES[name])
    _set_weight(layer, exact_cp_weight(layer.weight.shape, 4))
    separable = cp_conv2d(layer, 4, spatial="separable")  # same layer, same seed: the same factors
    merged = cp_conv2d(layer, 4, spatial="merged")
    assert len(separable) == 4 and len(merged) == 3
    x = _x()
    y = layer(x)
    assert merged(x).shape == y.shape
    assert rel_err(merged(x), separable(x)) <= 1e-12
    assert rel_err(merged(x), y) <= 1e-3


def test_cp_merged_structure_keeps_the_whole_geometry():
    layer = nn.Conv2d(S, T, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), padding_mode="reflect")
    first, middle, last = cp_conv2d(layer, 6, spatial="merged", max_iter=20)
    assert (first.in_channels, first.out_channels, first.kernel_size, first.bias) == (S, 6, (1, 1), None)
    assert (middle.kernel_size, middle.stride, middle.padding, middle.dilation, middle.groups) == (
        (3, 5), (2, 3), (1, 2), (2, 1), 6)
    assert middle.padding_mode == "reflect" and middle.bias is None
    assert (last.in_channels, last.out_channels) == (6, T) and torch.equal(last.bias, layer.bias)


def test_cp_default_form_is_merged():
    assert len(cp_conv2d(nn.Conv2d(S, T, 3, padding=1), 4, max_iter=20)) == 3


def test_cp_options_are_checked():
    layer = nn.Conv2d(6, 5, 3)
    with pytest.raises(ValueError, match=r"spatial='fused'.*'separable' and 'merged'"):
        cp_conv2d(layer, 2, spatial="fused")
    with pytest.raises(ValueError, match=r"restarts=0 with algorithm='tensorly'.*'als' only"):
        cp_conv2d(layer, 2, algorithm="tensorly", restarts=0)


def test_tucker2_structure_and_settings():
    layer = _conv(GEOMETRIES["circular-dilated"])
    seq = tucker2_conv2d(layer, (4, 3))
    first, core, last = seq
    assert (first.in_channels, first.out_channels, first.kernel_size) == (S, 4, (1, 1))
    assert first.bias is None and core.bias is None and last.bias is not None
    assert (core.in_channels, core.out_channels, core.kernel_size) == (4, 3, (3, 3))
    assert (core.stride, core.padding, core.dilation, core.padding_mode) == (
        layer.stride, layer.padding, layer.dilation, layer.padding_mode)
    assert (last.in_channels, last.out_channels, last.kernel_size) == (3, T, (1, 1))
    assert torch.equal(last.bias, layer.bias)


def test_cp_structure_splits_geometry_between_depthwise_layers():
    layer = nn.Conv2d(S, T, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), padding_mode="reflect")
    first, vertical, horizontal, last = cp_conv2d(layer, 6, spatial="separable")
    assert (first.in_channels, first.out_channels, first.kernel_size, first.bias) == (S, 6, (1, 1), None)
    assert (vertical.kernel_size, vertical.stride, vertical.padding, vertical.dilation) == ((3, 1), (2, 1), (1, 0), (2, 1))
    assert (horizontal.kernel_size, horizontal.stride, horizontal.padding, horizontal.dilation) == ((1, 5), (1, 3), (0, 2), (1, 1))
    assert vertical.groups == horizontal.groups == 6
    assert vertical.padding_mode == horizontal.padding_mode == "reflect"
    assert (last.in_channels, last.out_channels) == (6, T) and last.bias is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_preserved(dtype, device):
    layer = nn.Conv2d(S, T, 3, padding=1, dtype=dtype, device=device)
    x = torch.randn(1, S, 8, 8, dtype=dtype, device=device)
    for seq in (tucker2_conv2d(layer, (S, T)), cp_conv2d(layer, 5)):
        for p in seq.parameters():
            assert p.dtype == dtype and p.device.type == device.type
        assert seq(x).dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert rel_err(tucker2_conv2d(layer, (S, T))(x), layer(x)) <= tol


def test_float32_exact_rank():
    layer = _conv(GEOMETRIES["stride-asym"], dtype=torch.float32)
    _set_weight(layer, exact_tucker2_weight(layer.weight.shape, 3, 5).float())
    x = _x(dtype=torch.float32)
    assert rel_err(tucker2_conv2d(layer, (3, 5))(x), layer(x)) <= 1e-4


@pytest.mark.parametrize("build", [tucker2_conv2d, cp_conv2d])
@pytest.mark.parametrize("layer", [nn.Conv1d(4, 4, 3), nn.Conv3d(4, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Linear(4, 4)])
def test_other_layer_types_raise_type_error(build, layer):
    ranks = (2, 2) if build is tucker2_conv2d else 2
    with pytest.raises(TypeError, match=f"must be a torch.nn.Conv2d; got {type(layer).__name__}"):
        build(layer, ranks)


@pytest.mark.parametrize("build", [tucker2_conv2d, cp_conv2d])
def test_grouped_conv_raises_value_error(build):
    layer = nn.Conv2d(8, 8, 3, groups=2)
    ranks = (2, 2) if build is tucker2_conv2d else 2
    with pytest.raises(ValueError, match="groups=2; only groups=1"):
        build(layer, ranks)


def test_rank_errors_name_value_and_range():
    layer = nn.Conv2d(6, 5, 3)
    with pytest.raises(ValueError, match=r"input rank\) .* must be in \[1, 6\]; got 7"):
        tucker2_conv2d(layer, (7, 2))
    with pytest.raises(ValueError, match=r"output rank\) .* must be in \[1, 5\]; got 0"):
        tucker2_conv2d(layer, (2, 0))
    with pytest.raises(TypeError, match="pair"):
        tucker2_conv2d(layer, 3)
    with pytest.raises(ValueError, match=r"must be in \[1, 45\]; got 46"):
        cp_conv2d(layer, 46)
    with pytest.raises(ValueError, match=r"got 0"):
        cp_conv2d(layer, 0)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cp_conv2d(layer, 2, algorithm="magic")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_raise(bad):
    layer = nn.Conv2d(4, 4, 3)
    with torch.no_grad():
        layer.weight[1, 2, 0, 0] = bad
    for build, ranks in ((tucker2_conv2d, (2, 2)), (cp_conv2d, 2)):
        with pytest.raises(ValueError, match="1 NaN/Inf value"):
            build(layer, ranks)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layers_keep_their_dtype(dtype):
    layer = nn.Conv2d(S, T, 3, padding=1).to(dtype)
    for seq in (tucker2_conv2d(layer, (4, 4)), cp_conv2d(layer, 4, max_iter=5)):
        assert all(p.dtype == dtype for p in seq.parameters())

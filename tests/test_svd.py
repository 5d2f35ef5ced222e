import pytest
import torch
from torch import nn

from conftest import rel_err
from decomp import svd_conv1x1, svd_linear


def _rank_r_matrix(out_f, in_f, r, dtype=torch.float64):
    return torch.randn(out_f, r, dtype=dtype) @ torch.randn(r, in_f, dtype=dtype)


@pytest.mark.parametrize("shape", [(20, 30), (30, 20), (64, 64), (10, 200)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_rank_linear_is_recovered(shape, bias, dtype, device):
    out_f, in_f = shape
    r = 5
    layer = nn.Linear(in_f, out_f, bias=bias, dtype=dtype, device=device)
    with torch.no_grad():
        layer.weight.copy_(_rank_r_matrix(out_f, in_f, r))
    seq = svd_linear(layer, r)
    x = torch.randn(7, in_f, dtype=dtype, device=device)
    assert rel_err(seq(x), layer(x)) <= 1e-4
    assert seq[0].weight.dtype == dtype and seq[0].weight.device.type == device.type
    assert seq[0].bias is None and (seq[1].bias is not None) == bias


def test_structure_is_s_vt_then_u():
    layer = nn.Linear(40, 25)
    seq = svd_linear(layer, 10)
    assert [type(m) for m in seq] == [nn.Linear, nn.Linear]
    assert (seq[0].in_features, seq[0].out_features, seq[1].out_features) == (40, 10, 25)
    s = torch.linalg.svdvals(layer.weight.detach().double())[:10]
    # first layer = S V^T: orthogonal rows whose norms are the singular values
    row_norms = seq[0].weight.detach().double().norm(dim=1)
    torch.testing.assert_close(row_norms, s, rtol=1e-4, atol=1e-6)
    # second layer = U: orthonormal columns, and it carries the original bias
    u = seq[1].weight.detach().double()
    torch.testing.assert_close(u.T @ u, torch.eye(10, dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.equal(seq[1].bias, layer.bias)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_full_rank_reproduces_random_layer(shape):
    layer = nn.Linear(shape[1], shape[0], dtype=torch.float64)
    seq = svd_linear(layer, min(shape))
    x = torch.randn(4, shape[1], dtype=torch.float64)
    assert rel_err(seq(x), layer(x)) < 1e-10


@pytest.mark.parametrize("rank", [1, 7, 19])
def test_weight_error_is_the_discarded_tail(rank):
    """Eckart-Young: ||W - W_r||_F^2 equals the sum of the discarded s_i^2."""
    layer = nn.Linear(32, 24, dtype=torch.float64)
    w = layer.weight.detach()
    seq = svd_linear(layer, rank)
    w_r = seq[1].weight.detach() @ seq[0].weight.detach()
    s = torch.linalg.svdvals(w)
    torch.testing.assert_close((w - w_r).norm() ** 2, (s[rank:] ** 2).sum(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "geometry",
    [
        dict(),
        dict(stride=2),
        dict(stride=(2, 1), padding=(1, 0)),
        dict(padding=1, padding_mode="reflect"),
        dict(padding=(2, 1), padding_mode="replicate", stride=(1, 3)),
        dict(padding=1, padding_mode="circular"),
        dict(padding="same"),
        dict(bias=False, padding="valid"),
    ],
)
def test_conv1x1_exact_rank(geometry):
    layer = nn.Conv2d(12, 10, 1, dtype=torch.float64, **geometry)
    with torch.no_grad():
        layer.weight.copy_(_rank_r_matrix(10, 12, 4).reshape(10, 12, 1, 1))
    seq = svd_conv1x1(layer, 4)
    x = torch.randn(2, 12, 9, 7, dtype=torch.float64)
    y = layer(x)
    assert seq(x).shape == y.shape
    assert rel_err(seq(x), y) <= 1e-4


def test_svd_linear_errors():
    layer = nn.Linear(8, 6)
    with pytest.raises(ValueError, match=r"rank .* must be in \[1, 6\]; got 0"):
        svd_linear(layer, 0)
    with pytest.raises(ValueError, match=r"\[1, 6\]; got 7"):
        svd_linear(layer, 7)
    with pytest.raises(TypeError, match="must be an int; got 2.5"):
        svd_linear(layer, 2.5)
    with pytest.raises(TypeError, match="must be an int; got True"):
        svd_linear(layer, True)
    with pytest.raises(TypeError, match="must be a torch.nn.Linear; got Conv2d"):
        svd_linear(nn.Conv2d(3, 3, 1), 1)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        svd_linear(layer, 2)


def test_svd_conv1x1_rejects_larger_kernels():
    with pytest.raises(ValueError, match="needs a 1x1 convolution; got kernel_size=\\(3, 3\\)"):
        svd_conv1x1(nn.Conv2d(4, 4, 3), 2)

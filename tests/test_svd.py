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


# ----------------------------------------------------------------------------- randomized path

from decomp.linalg import randomized_svd  # noqa: E402
from decomp.svd import _svd_linear, resolve_algorithm, truncated_svd  # noqa: E402


def _power_law(rows, cols, alpha, seed=0, dtype=torch.float32):
    """G1 diag(i^-alpha) G2 from seeded Gaussians: a slowly decaying, trained-like spectrum."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    sigma = torch.arange(1, k + 1, dtype=torch.float64) ** -alpha
    w = (torch.randn(rows, k, generator=g, dtype=torch.float64) * sigma) @ torch.randn(k, cols, generator=g, dtype=torch.float64)
    return w.to(dtype)


@pytest.mark.parametrize("shape", [(256, 1500), (1500, 256)])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_randomized_error_within_half_a_percent_of_the_optimum(shape, alpha):
    w = _power_law(*shape, alpha)
    exact = truncated_svd(w, 48, algorithm="exact")
    fast = truncated_svd(w, 48, algorithm="randomized")
    assert fast.algorithm == "randomized" and exact.optimal_rel_error == exact.rel_error
    # Eckart-Young below (up to the float32 passes' rounding of the error, ~1e-6), the 0.5% target above
    assert exact.rel_error * (1 - 1e-5) <= fast.rel_error <= 1.005 * exact.rel_error
    # the reported error is the error of the returned factors
    actual = float((w.double() - fast.left @ fast.right).norm() / w.double().norm())
    assert fast.rel_error == pytest.approx(actual, rel=1e-4)


def test_randomized_recovers_an_exact_low_rank_matrix_and_has_orthonormal_factors():
    w = _rank_r_matrix(300, 700, 20)
    u, s, vh = randomized_svd(w, 20)
    assert float(((u * s) @ vh - w).norm() / w.norm()) <= 1e-10
    torch.testing.assert_close(u.T @ u, torch.eye(20, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(vh @ vh.T, torch.eye(20, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(s, torch.linalg.svdvals(w)[:20], rtol=1e-10, atol=0)


def test_randomized_is_deterministic_for_a_seed():
    w = _power_law(200, 900, 0.7)
    a, b = truncated_svd(w, 30, algorithm="randomized", seed=1), truncated_svd(w, 30, algorithm="randomized", seed=1)
    c = truncated_svd(w, 30, algorithm="randomized", seed=2)
    assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right) and a.rel_error == b.rel_error
    assert not torch.equal(a.left, c.left)


def test_more_power_iterations_do_not_hurt():
    w = _power_law(300, 1200, 0.5)
    errors = [truncated_svd(w, 40, algorithm="randomized", oversample=8, n_iter=q).rel_error for q in (0, 1, 3)]
    assert errors[0] >= errors[1] >= errors[2]


def test_auto_takes_the_randomized_path_only_for_large_matrices_at_small_ranks():
    assert resolve_algorithm((4096, 25088), 512) == "randomized"   # VGG16 fc6 at rank 512
    assert resolve_algorithm((4096, 4096), 1024) == "exact"        # q = 1536 > 4096 / 4
    assert resolve_algorithm((512, 4608), 64) == "exact"           # short side < 1024
    assert resolve_algorithm((64, 64), 8, "randomized") == "randomized"


def test_layers_report_the_path_and_the_optimum_where_known():
    layer = nn.Linear(300, 200)
    _, info = _svd_linear(layer, 20)
    assert info["svd_algorithm"] == "exact" and info["optimal_rel_error"] == info["rel_error"]
    seq, info = _svd_linear(layer, 20, algorithm="randomized")
    assert info["svd_algorithm"] == "randomized" and "optimal_rel_error" not in info
    w_hat = seq[1].weight.detach().double() @ seq[0].weight.detach().double()
    w = layer.weight.detach().double()
    assert float((w - w_hat).norm() / w.norm()) == pytest.approx(info["rel_error"], rel=1e-4)
    conv = nn.Conv2d(300, 200, 1)
    with torch.no_grad():
        conv.weight.copy_(layer.weight[:, :, None, None])
    x = torch.randn(2, 300, 5, 5)
    out = svd_conv1x1(conv, 20, algorithm="randomized")(x)
    assert out.shape == (2, 200, 5, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(algorithm="fast"), r"algorithm='fast'.*'auto', 'exact', 'randomized'"),
     (dict(oversample=-1), r"oversample=-1.*int >= 0 or None"),
     (dict(n_iter=1.5), r"n_iter=1.5.*int >= 0")],
)
def test_svd_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        svd_linear(nn.Linear(8, 6), 2, **kwargs)

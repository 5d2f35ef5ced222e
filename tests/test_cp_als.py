"""Tests for decomp.cp_als: exact recovery, agreement with tensorly's parafac, balancing,
determinism, dtypes/devices and input validation. The whole file runs in seconds on 2 cores."""

from __future__ import annotations

import math

import pytest
import torch

from decomp.cp_als import CPConvergenceWarning, CPResult, _Layouts, _sweep, balance_cp, cp_als, cp_tensorly, cp_to_tensor, svd_init

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def exact_cp_tensor(shape, rank, seed, dtype=torch.float64):
    """A tensor of CP rank ``rank`` whose model is well conditioned.

    Factors of modes with at least ``rank`` rows have orthonormal columns; smaller modes (the
    ones the rank exceeds) get Gaussian columns. Kruskal's condition sum_n k(A_n) >= 2R + 3
    holds for every case below, so the CP model is unique, and the orthonormal modes keep it far
    from the collinear "swamps" where plain ALS needs thousands of sweeps (Kolda & Bader 2009,
    sec. 3.4): on ill-conditioned random draws both this ALS and tensorly's stall at the same
    error, which is a property of ALS, not what this test is about.
    """
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for n in shape:
        f = torch.randn(n, rank, generator=gen, dtype=torch.float64)
        factors.append(torch.linalg.qr(f).Q if n >= rank else f)
    weights = 1.0 + torch.rand(rank, generator=gen, dtype=torch.float64)  # in [1, 2)
    return cp_to_tensor(weights, factors).to(dtype)


def random_kernel(shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


# ----------------------------------------------------------------------------- correctness


@pytest.mark.parametrize(
    "shape, rank",
    [((8, 6, 3, 3), 4), ((8, 6, 3, 3), 6), ((16, 16, 3, 1), 5), ((12, 10, 1, 5), 4), ((12, 10, 1, 5), 3)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_cp_rank_is_recovered(shape, rank, seed):
    x = exact_cp_tensor(shape, rank, seed)
    res = cp_als(x, rank, max_iter=500, tol=1e-10)
    assert res.rel_error <= 1e-3
    assert [tuple(f.shape) for f in res.factors] == [(n, rank) for n in shape]


def test_exact_recovery_float32():
    x = exact_cp_tensor((8, 6, 3, 3), 4, seed=3, dtype=torch.float32)
    res = cp_als(x, 4, max_iter=500, tol=1e-7)
    assert res.weights.dtype == torch.float32 and all(f.dtype == torch.float32 for f in res.factors)
    assert res.rel_error <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_tensorly_from_same_init(dtype):
    x = random_kernel((16, 12, 3, 3), seed=0, dtype=dtype)
    init = svd_init(x, 8, seed=0)
    ours = cp_als(x, 8, max_iter=30, tol=0, init=init, line_search=False, restarts=0)
    ref = cp_tensorly(x, 8, max_iter=30, tol=0, init=init)
    assert ours.n_iter == ref.n_iter == 30
    assert not ours.converged and not ref.converged
    assert ours.rel_error <= ref.rel_error * 1.01
    assert abs(ours.rel_error - ref.rel_error) <= 0.01 * ref.rel_error
    if dtype == torch.float64:  # same iterates in exact arithmetic: the models agree too
        assert torch.allclose(ours.reconstruct(), ref.reconstruct(), rtol=0, atol=1e-6)


def test_cheap_error_formula_equals_full_reconstruction():
    x = random_kernel((10, 8, 3, 3), seed=1, dtype=torch.float64)
    _, factors = svd_init(x, 6, seed=0)
    new, weights, inner, norm_hat2 = _sweep(_Layouts(x), factors, eps=torch.finfo(x.dtype).eps)
    x_hat = cp_to_tensor(weights, new)
    assert inner == pytest.approx(float((x * x_hat).sum()), rel=1e-10)
    assert norm_hat2 == pytest.approx(float((x_hat**2).sum()), rel=1e-10)


def test_tolerance_stops_early_and_reports_it():
    x = exact_cp_tensor((8, 6, 3, 3), 4, seed=0)
    res = cp_als(x, 4, max_iter=500, tol=1e-8)
    assert res.converged and res.n_iter < 500 and res.restarts == 0
    with pytest.warns(CPConvergenceWarning, match="stopped unconverged"):
        capped = cp_als(random_kernel((8, 6, 3, 3), seed=0), 4, max_iter=1, tol=1e-8, restarts=0)
    assert capped.n_iter == 1 and not capped.converged and capped.stop == "max_iter"


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs:UserWarning")  # tensorly, rank > 3
def test_tensorly_backend_counts_iterations_and_restores_backend():
    import tensorly as tl

    before = tl.get_backend()
    x = exact_cp_tensor((8, 6, 3, 3), 4, seed=0)
    res = cp_tensorly(x, 4, max_iter=200, tol=1e-8, init="svd", seed=0)
    assert tl.get_backend() == before
    assert isinstance(res, CPResult) and res.converged and 1 <= res.n_iter < 200
    assert res.rel_error <= 1e-3


def test_result_is_normalised_and_sorted():
    x = random_kernel((12, 10, 3, 3), seed=2)
    res = cp_als(x, 7, max_iter=10)
    for f in res.factors:
        assert torch.allclose(torch.linalg.vector_norm(f, dim=0), torch.ones(7), atol=1e-5)
    assert torch.all(res.weights[:-1] >= res.weights[1:]) and torch.all(res.weights >= 0)
    assert res.rel_error == pytest.approx(float((res.reconstruct() - x).norm() / x.norm()), rel=1e-5)


# ----------------------------------------------------------------------------- balancing


def _check_balanced(result: CPResult) -> None:
    factors = balance_cp(result)
    ones = torch.ones(result.rank, dtype=result.weights.dtype)
    assert torch.allclose(cp_to_tensor(ones, factors), result.reconstruct(), rtol=1e-5, atol=1e-6)
    norms = torch.stack([torch.linalg.vector_norm(f, dim=0) for f in factors])  # (4, R)
    expected = (result.weights.abs() * torch.stack([torch.linalg.vector_norm(f, dim=0) for f in result.factors]).prod(0)) ** 0.25
    assert torch.allclose(norms, expected.expand_as(norms), rtol=1e-5)


def test_balance_keeps_tensor_and_equalises_column_norms():
    x = random_kernel((16, 8, 3, 3), seed=4, dtype=torch.float64)
    res = cp_als(x, 12, max_iter=20)
    _check_balanced(res)
    for f in balance_cp(res):  # with unit-norm factors, every column has norm lambda_r^(1/4)
        assert torch.allclose(torch.linalg.vector_norm(f, dim=0), res.weights**0.25)


def test_balance_handles_negative_weights_unnormalised_factors_and_zero_components():
    gen = torch.Generator().manual_seed(5)
    factors = [torch.randn(n, 5, generator=gen, dtype=torch.float64) * s for n, s in zip((6, 4, 3, 3), (1e3, 1.0, 1e-3, 7.0))]
    factors[2][:, 4] = 0.0
    weights = torch.tensor([2.0, -3.0, 0.5, -1e-2, 1.0], dtype=torch.float64)
    _check_balanced(CPResult(weights, factors, rel_error=0.0, n_iter=0, converged=False))


# ----------------------------------------------------------------------------- determinism, dtypes, devices


@pytest.mark.filterwarnings("ignore::decomp.cp_als.CPConvergenceWarning")  # max_iter=15 on purpose
def test_deterministic_for_a_seed_and_global_rng_untouched():
    x = random_kernel((16, 12, 3, 3), seed=6)
    state = torch.random.get_rng_state()
    a = cp_als(x, 10, max_iter=15, seed=3)
    b = cp_als(x, 10, max_iter=15, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.weights, b.weights) and all(torch.equal(f, g) for f, g in zip(a.factors, b.factors))
    assert (a.rel_error, a.n_iter, a.restarts) == (b.rel_error, b.n_iter, b.restarts)
    assert a.restarts >= 1  # unconverged after 15 sweeps: restarted, from the same random starts both times
    c = cp_als(x, 10, max_iter=15, seed=4)  # rank 10 > 3: the seed fills the spatial modes' extra columns
    assert not torch.equal(a.factors[2], c.factors[2])


def test_svd_init_fills_small_modes_with_unit_columns():
    x = random_kernel((8, 6, 3, 3), seed=7)
    weights, factors = svd_init(x, 5, seed=0)
    assert torch.equal(weights, torch.ones(5))
    for n, f in enumerate(factors):
        assert f.shape == (x.shape[n], 5)
        assert torch.allclose(torch.linalg.vector_norm(f, dim=0), torch.ones(5), atol=1e-6)
    u = torch.linalg.svd(x.reshape(8, -1).double(), full_matrices=False).U[:, :5]
    assert torch.allclose((u.T @ factors[0].double()).abs(), torch.eye(5, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_input(device, dtype):
    x = random_kernel((12, 8, 3, 3), seed=8, dtype=dtype).to(device)
    res = cp_als(x, 6, max_iter=5, restarts=0, tol=0)
    for t in (res.weights, *res.factors, res.reconstruct(), *balance_cp(res)):
        assert t.dtype == dtype and t.device.type == device
    assert 0.0 < res.rel_error < 1.0 and res.n_iter == 5


def test_accepts_a_previous_result_as_init():
    x = random_kernel((12, 8, 3, 3), seed=9)
    first = cp_als(x, 6, max_iter=10, tol=0)
    more = cp_als(x, 6, max_iter=10, tol=0, init=first)
    assert more.rel_error <= first.rel_error + 1e-6


# ----------------------------------------------------------------------------- validation

X = random_kernel((4, 4, 3, 3), seed=0)


@pytest.mark.parametrize("fn", [cp_als, cp_tensorly])
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tensor=[[1.0]]), TypeError, "tensor of type list"),
        (dict(tensor=torch.ones(4, 4, 3)), ValueError, "4-D"),
        (dict(tensor=torch.ones(4, 4, 3, 3, dtype=torch.int64)), TypeError, "torch.int64"),
        (dict(tensor=torch.ones(4, 4, 3, 3, dtype=torch.float16)), TypeError, "torch.float16"),
        (dict(tensor=torch.full((4, 4, 3, 3), math.nan)), ValueError, "NaN or Inf"),
        (dict(tensor=torch.zeros(4, 4, 3, 3)), ValueError, "all-zero"),
        (dict(rank=0), ValueError, "rank=0"),
        (dict(rank=2.0), TypeError, "rank=2.0"),
        (dict(rank=True), TypeError, "rank=True"),
        (dict(max_iter=0), ValueError, "max_iter=0"),
        (dict(tol=-1e-3), ValueError, "tol=-0.001"),
        (dict(tol=math.inf), ValueError, "tol=inf"),
        (dict(tol="1e-6"), TypeError, "tol='1e-6'"),
        (dict(seed=-1), ValueError, "seed=-1"),
        (dict(init="random"), ValueError, "init='random'"),
        (dict(init=42), ValueError, "init=42"),
        (dict(init=(None, [torch.ones(4, 2)] * 3)), ValueError, "4 factor matrices"),
        (dict(init=(None, [torch.ones(4, 3)] * 4)), ValueError, r"factors\[0\] with shape \(4, 3\)"),
        (dict(init=(torch.ones(3), [torch.ones(n, 2) for n in (4, 4, 3, 3)])), ValueError, "weights with shape"),
        (dict(init=(None, [torch.full((n, 2), math.inf) for n in (4, 4, 3, 3)])), ValueError, "NaN or Inf"),
    ],
)
def test_invalid_arguments_are_named(fn, kwargs, error, match):
    args = dict(tensor=X, rank=2)
    args.update(kwargs)
    tensor, rank = args.pop("tensor"), args.pop("rank")
    with pytest.raises(error, match=match):
        fn(tensor, rank, **args)


def test_balance_rejects_non_results():
    with pytest.raises(TypeError, match="CPResult"):
        balance_cp([torch.ones(2, 2)])


# ----------------------------------------------------------------------------- stopping rule, restarts


def exact_gaussian_cp_tensor(shape, rank, seed, dtype=torch.float32):
    """Exactly CP rank ``rank`` with i.i.d. standard normal factors: the draws of
    ``results/cp_als/recovery``, ill-conditioned ones included."""
    gen = torch.Generator().manual_seed(seed)
    factors = [torch.randn(n, rank, generator=gen, dtype=torch.float64) for n in shape]
    return cp_to_tensor(torch.ones(rank, dtype=torch.float64), factors).to(dtype)


@pytest.mark.parametrize("shape, rank", [((10, 12, 3, 3), 12), ((32, 16, 3, 3), 8), ((8, 8, 5, 5), 6), ((12, 10, 3, 5), 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defaults_recover_exact_cp_rank_float32(shape, rank, seed):
    x = exact_gaussian_cp_tensor(shape, rank, seed)
    res = cp_als(x, rank)
    assert res.rel_error <= 1e-3 and res.converged and res.stop == "floor"


def test_relative_rule_is_scale_invariant_and_stops_a_plateau():
    x = random_kernel((16, 12, 3, 3), seed=2, dtype=torch.float64)
    a = cp_als(x, 6, restarts=0)
    b = cp_als(x * 1e4, 6, restarts=0)
    assert a.stop == b.stop == "tol" and a.converged and 10 < a.n_iter < 3000
    assert a.n_iter == b.n_iter and a.rel_error == pytest.approx(b.rel_error, rel=1e-9)
    # a finer tol runs longer and ends no worse
    fine = cp_als(x, 6, restarts=0, tol=1e-8)
    assert fine.n_iter > a.n_iter and fine.rel_error <= a.rel_error + 1e-12


def test_floor_stops_exact_fits_and_zero_floor_and_tol_run_every_sweep():
    x = exact_gaussian_cp_tensor((8, 6, 3, 3), 4, seed=0, dtype=torch.float64)
    res = cp_als(x, 4, restarts=0)
    assert res.stop == "floor" and res.rel_error <= 1e-9
    loose = cp_als(x, 4, restarts=0, floor=1e-2)
    assert loose.stop == "floor" and loose.n_iter < res.n_iter and loose.rel_error <= 1e-2
    fixed = cp_als(x, 4, restarts=0, tol=0, floor=0, max_iter=40)
    assert fixed.n_iter == 40 and fixed.stop == "max_iter"


def test_line_search_takes_fewer_sweeps_on_a_swamp():
    x = exact_gaussian_cp_tensor((10, 12, 3, 3), 12, seed=0)
    plain = cp_als(x, 12, line_search=False, restarts=0)
    fast = cp_als(x, 12, restarts=0)
    assert fast.rel_error <= 1e-3 and plain.rel_error <= 1e-3
    assert fast.n_iter < plain.n_iter


def test_restarts_only_when_a_run_stalls_and_are_deterministic():
    easy = cp_als(exact_gaussian_cp_tensor((16, 16, 3, 3), 6, seed=1), 6)
    assert easy.restarts == 0 and easy.stop == "floor"
    far = cp_als(random_kernel((12, 10, 3, 3), seed=3), 5)  # no fit near exact: converged, not stalled
    assert far.restarts == 0 and far.stop == "tol" and far.rel_error > 0.1
    # exact rank plus noise of relative size 1e-2: a plateau near an exact fit, above the floor
    x = exact_gaussian_cp_tensor((12, 10, 3, 3), 5, seed=3, dtype=torch.float64)
    x = x + 1e-2 * x.norm() / x.numel() ** 0.5 * random_kernel(x.shape, seed=4, dtype=torch.float64)
    a, b = cp_als(x, 5, seed=7), cp_als(x, 5, seed=7)
    assert a.restarts >= 1 and a.stop == "tol" and a.rel_error < 0.1
    assert (a.restarts, a.n_iter, a.rel_error) == (b.restarts, b.n_iter, b.rel_error)
    assert all(torch.equal(f, g) for f, g in zip(a.factors, b.factors))
    single = cp_als(x, 5, seed=7, restarts=0)
    assert a.rel_error <= single.rel_error + 1e-9 and a.n_iter > single.n_iter


def test_unconverged_warns_and_says_so():
    x = exact_gaussian_cp_tensor((10, 12, 3, 3), 12, seed=0)
    with pytest.warns(CPConvergenceWarning, match=r"max_iter.*3 run\(s\)"):
        res = cp_als(x, 12, max_iter=5)
    assert not res.converged and res.stop == "max_iter" and res.restarts == 2 and res.n_iter == 15


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(floor=-1e-3), ValueError, "floor=-0.001"),
        (dict(floor=1.0), ValueError, r"floor=1.0.*\[0, 1\)"),
        (dict(floor="0"), TypeError, "floor='0'"),
        (dict(restarts=-1), ValueError, "restarts=-1"),
        (dict(restarts=1.5), TypeError, "restarts=1.5"),
        (dict(line_search=1), TypeError, "line_search=1"),
    ],
)
def test_invalid_als_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        cp_als(X, 2, **kwargs)

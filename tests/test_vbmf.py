import numpy as np
import pytest
import torch

from decomp import evbmf


def planted(rows, cols, rank, noise=0.1, seed=0):
    """Low-rank signal whose singular values sit well above the noise edge, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, rank)))
    edge = noise * (np.sqrt(rows) + np.sqrt(cols))  # largest singular value of the noise alone
    s = edge * np.linspace(6, 3, rank)
    return (u * s) @ v.T + noise * rng.standard_normal((rows, cols))


SHAPES = [(40, 60), (60, 40), (100, 300), (300, 100), (64, 576), (128, 128), (20, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 5, 12])
def test_recovers_planted_rank(shape, rank):
    result = evbmf(planted(*shape, rank))
    assert result.rank == rank
    # The noise variance (0.1^2) is an estimate: the kept components' shrinkage leaves some
    # signal in the residual, more so when the signal fills a large share of the rows.
    assert result.sigma2 == pytest.approx(0.01, rel=0.25)


@pytest.mark.parametrize("shape", [(50, 90), (90, 50)])
def test_orientation_and_input_type_do_not_matter(shape):
    y = planted(*shape, 6, seed=3)
    a, b = evbmf(y), evbmf(y.T)
    c = evbmf(torch.from_numpy(y).float())
    assert a.rank == b.rank == c.rank == 6
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-9)
    assert a.sigma2 == pytest.approx(c.sigma2, rel=1e-4)
    assert a.shape == shape and b.shape == shape[::-1]


def test_pure_noise_has_rank_zero():
    rng = np.random.default_rng(1)
    assert evbmf(rng.standard_normal((80, 120))).rank == 0


def test_threshold_separates_kept_values_and_estimates_shrink():
    result = evbmf(planted(60, 90, 4))
    s = result.singular_values
    assert (s[: result.rank] > result.threshold).all() and (s[result.rank:] <= result.threshold).all()
    assert result.estimates.shape == (4,)
    assert (result.estimates < s[:4]).all() and (result.estimates > 0).all()


def test_known_sigma2_is_used():
    y = planted(40, 70, 3)
    assert evbmf(y, sigma2=0.01).sigma2 == 0.01
    assert evbmf(y, sigma2=1e3).rank == 0  # noise that loud hides everything


def test_zero_matrix_and_degenerate_shapes():
    assert evbmf(np.zeros((5, 8))).rank == 0
    assert evbmf(np.ones((1, 30))).rank in (0, 1)


def test_never_prints(capsys):
    evbmf(planted(30, 50, 2))
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros(5), ValueError, "2-D"),
        (np.zeros((0, 4)), ValueError, "non-empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, "NaN/Inf"),
        ("matrix", TypeError, "2-D torch tensor or numpy array; got str"),
    ],
)
def test_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        evbmf(bad)


def test_bad_sigma2():
    with pytest.raises(ValueError, match="sigma2 must be a positive finite float"):
        evbmf(np.eye(4), sigma2=-1.0)


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (10, 300)])
def test_exactly_low_rank_without_noise(shape):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((shape[0], 5)) @ rng.standard_normal((5, shape[1]))
    assert evbmf(y).rank == 5

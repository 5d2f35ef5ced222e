"""Empirical variational Bayesian matrix factorization (EVBMF) for rank selection.

Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic solution of fully-observed
variational Bayesian matrix factorization", JMLR 14 (2013). For an L x M observation
``V = U B A^T + noise`` (L <= M, alpha = L / M) with unknown noise variance sigma^2, the
empirical VB solution keeps exactly the singular values above

    gamma_bar = sqrt(M * sigma^2 * (1 + tau_bar) * (1 + alpha / tau_bar))

where tau_bar is the zero of Xi(tau; alpha) = Phi(tau) + Phi(tau / alpha), with
Phi(x) = log(x + 1) / x - 1/2, which the paper gives as tau_bar ~ 2.5129 * sqrt(alpha); sigma^2
itself minimises the free energy over the
bounds [lower, upper] given in the paper. Kim et al. (2015)
use the number of kept singular values of a kernel's unfoldings as Tucker-2 ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from .linalg import singular_values

__all__ = ["evbmf", "evbmf_spectrum", "VBMFResult"]

TAU_BAR_COEFF = 2.5129  # tau_bar = 2.5129 * sqrt(alpha) (Nakajima et al. 2013)


@dataclass(frozen=True)
class VBMFResult:
    rank: int                      # number of singular values above the EVB threshold
    sigma2: float                  # estimated noise variance
    threshold: float               # gamma_bar: the singular value cut-off
    singular_values: np.ndarray    # all singular values of the input, descending
    estimates: np.ndarray          # EVB posterior singular values of the kept components (rank,)
    shape: tuple[int, int]         # shape of the input as given (before any transpose)


def _as_matrix(matrix) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().to("cpu", torch.float64).numpy()
    try:
        y = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"matrix must be a 2-D torch tensor or numpy array; got {type(matrix).__name__}.") from None
    if y.ndim != 2 or min(y.shape) < 1:
        raise ValueError(f"matrix must be 2-D and non-empty; got shape {y.shape}.")
    if not np.isfinite(y).all():
        raise ValueError("matrix has NaN/Inf entries; EVBMF needs finite values.")
    return y


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """tau(x; alpha): the positive root relating x = gamma^2 / (M sigma^2) to tau."""
    b = x - (1 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))


def _free_energy(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, x_bar: float) -> float:
    """The sigma^2-dependent part of 2 * free energy / M."""
    H = s.size
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1 = x[x > x_bar]
    z2 = x[x <= x_bar]
    tau_z1 = _tau(z1, alpha)
    # eps keeps log finite for exactly zero singular values (rank-deficient input)
    term1 = np.sum(z2 - np.log(z2 + np.finfo(np.float64).eps))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log((tau_z1 + 1) / z1))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    return float(term1 + term2 + term3 + term4 + residual / (M * sigma2) + (L - H) * np.log(sigma2))


def evbmf(matrix, sigma2: float | None = None) -> VBMFResult:
    """Analytic empirical VBMF of a 2-D ``matrix`` (torch tensor or numpy array, any orientation).

    Returns the estimated rank (how many components rise above the noise), the noise variance
    ``sigma2`` (estimated unless given) and the threshold. A matrix with more rows than columns
    is transposed first, as the solution is derived for L <= M. Computed in float64 on the CPU.
    """
    y = _as_matrix(matrix)
    return evbmf_spectrum(singular_values(torch.from_numpy(y)).numpy(), y.shape, sigma2)


def evbmf_spectrum(singular_values_, shape: tuple[int, int], sigma2: float | None = None) -> VBMFResult:
    """:func:`evbmf` from the singular values of a matrix of ``shape``, without the matrix.

    For spectra that are not those of a stored matrix: the whitened (data-aware) problem of
    :mod:`decomp.calibration`, whose singular values come from second moments of a layer's
    responses while the noise model keeps the weight's shape.
    """
    shape = tuple(int(n) for n in shape)
    L, M = sorted(shape)
    s = np.sort(np.asarray(singular_values_, dtype=np.float64))[::-1][:L]
    s = np.concatenate([s, np.zeros(L - len(s))])
    alpha = L / M
    tau_bar = TAU_BAR_COEFF * np.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)  # threshold on x = gamma^2 / (M sigma^2)
    total = float(np.sum(s**2))
    if total == 0.0:
        return VBMFResult(0, 0.0, 0.0, s, np.zeros(0), shape)
    residual = 0.0  # all H = L singular values are kept in s, so nothing lies outside them

    if sigma2 is None:
        # Bounds on sigma^2 from the paper (as in the authors' reference implementation).
        eH_ub = int(min(np.ceil(L / (1 + alpha)) - 1, L)) - 1
        upper = (np.sum(s**2) + residual) / (L * M)
        lower = max(s[eH_ub + 1] ** 2 / (M * x_bar), np.mean(s[eH_ub + 1:] ** 2) / M)
        # Exactly rank-deficient input makes the lower bound 0; keep it strictly positive.
        lower = max(lower, upper * 1e-12)
        if lower >= upper:
            sigma2 = upper
        else:
            opt = minimize_scalar(_free_energy, args=(L, M, s, residual, x_bar),
                                  bounds=(lower, upper), method="bounded")
            sigma2 = float(opt.x)
    elif not (np.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"sigma2 must be a positive finite float or None; got {sigma2!r}.")

    threshold = float(np.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar)))
    rank = int(np.sum(s > threshold))
    kept = s[:rank]
    # Posterior mean singular values of the kept components.
    ratio = (L + M) * sigma2 / kept**2
    estimates = kept / 2 * (1 - ratio + np.sqrt(np.maximum((1 - ratio) ** 2 - 4 * L * M * sigma2**2 / kept**4, 0)))
    return VBMFResult(rank, float(sigma2), threshold, s, estimates, shape)

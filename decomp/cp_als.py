"""CP (CANDECOMP/PARAFAC) decomposition of 4-way conv kernels by alternating least squares.

A conv weight ``X`` of shape ``(T, S, kh, kw)`` is approximated by ``R`` rank-one terms,

    X[t, s, k, l] ~ sum_r  lambda_r * A0[t, r] * A1[s, r] * A2[k, r] * A3[l, r],

the form that turns one conv into four cheap ones (Lebedev et al. 2015, arXiv:1412.6553).

:func:`cp_als` is a plain CP-ALS (Kolda & Bader 2009, SIAM Review 51(3), sec. 3.4) written for
this shape. Each factor update solves the normal equations
``A_n = M_n V_n^{-1}`` with ``M_n = X_(n) (Khatri-Rao of the other factors)`` (the MTTKRP) and
``V_n`` the Hadamard product of the other factors' Gram matrices (ibid.). One
sweep costs three GEMMs of ``T*S*kh*kw*R`` multiply-adds on layouts of ``X`` prepared once, the
Khatri-Rao product of the large modes is never formed, and the error of the sweep comes from
quantities the sweep already has (no reconstruction).

:func:`cp_tensorly` runs ``tensorly.decomposition.parafac`` (pytorch backend, set only inside a
``backend_context``) and returns the same :class:`CPResult`, so the two can be compared from the
same initialisation (:func:`svd_init`). :func:`balance_cp` spreads each component's weight evenly
over the four factors, the form to load into conv layers and fine-tune.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

__all__ = ["CPResult", "CPConvergenceWarning", "cp_als", "cp_tensorly", "svd_init", "balance_cp", "cp_to_tensor"]

_NDIM = 4
_DTYPES = (torch.float32, torch.float64)
_FLOOR = {torch.float32: 1e-5, torch.float64: 1e-10}  # default floor: an exact fit, per dtype
_EXACT_BELOW = 1e5  # errors e with e^2 < this * eps come from the reconstruction (see _Problem)
_WINDOW = 10  # sweeps over which the relative rule averages the error's decrease
_LS_START, _LS_GROW, _LS_MAX = 1.5, 1.25, 8.0  # line-search step: first, growth per kept push, cap
_SAME_OPTIMUM = 1e-3  # two runs whose errors differ by less than this (relative) found one optimum
# A run stopped by the relative rule is restarted only below this error: a near-exact fit that
# stalled (a swamp; the unrecovered exact-rank kernels of results/cp_als/recovery* stop at 5e-3
# to 5e-2). Far from an exact fit, runs from other starts end at about the same error (VGG16's
# random kernels at R = T/4: 0.9431 against 0.9431) for twice the time.
_PLATEAU_BELOW = 0.1
_RESTART_SEED_STRIDE = 1_000_003  # restart r draws from seed + stride * (r + 1), apart from svd_init's


class CPConvergenceWarning(UserWarning):
    """CP-ALS stopped at ``max_iter`` sweeps in every run without meeting its stopping rule."""


@dataclass(frozen=True)
class CPResult:
    """A rank-R CP model of a 4-way tensor and how it was reached.

    ``factors[n]`` has shape ``(tensor.shape[n], R)`` with unit-norm columns, ``weights`` (R,)
    holds the components' scales (sorted in decreasing order), ``rel_error`` is
    ``||X - X_hat|| / ||X||`` computed from the full reconstruction once at the end,
    ``n_iter`` the ALS sweeps run (all runs together), ``converged`` whether the kept run
    stopped by the floor or the relative rule rather than ``max_iter``, ``restarts`` the runs
    from random starts after the first and ``stop`` why the kept run stopped (``"floor"``,
    ``"tol"`` or ``"max_iter"``; ``""`` where not known).
    """

    weights: torch.Tensor
    factors: list[torch.Tensor]
    rel_error: float
    n_iter: int
    converged: bool
    restarts: int = 0
    stop: str = ""

    @property
    def rank(self) -> int:
        return int(self.weights.shape[0])

    def reconstruct(self) -> torch.Tensor:
        """The full tensor ``sum_r w_r a0_r o a1_r o a2_r o a3_r``, shape ``(I0, I1, I2, I3)``."""
        return cp_to_tensor(self.weights, self.factors)


InitArg = Union[str, CPResult, tuple, list]


# ----------------------------------------------------------------------------- validation


def _check_tensor(tensor: Any) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Got tensor of type {type(tensor).__name__}. However, tensor must be a torch.Tensor.")
    if tensor.ndim != _NDIM:
        raise ValueError(
            f"Got tensor with shape {tuple(tensor.shape)} ({tensor.ndim}-D). However, tensor must be "
            "4-D, a conv weight of shape (out_channels, in_channels, kh, kw)."
        )
    if tensor.dtype not in _DTYPES:
        raise TypeError(
            f"Got tensor of dtype {tensor.dtype}. However, the possible choices are torch.float32 and "
            "torch.float64 (convert with .float() or .double())."
        )
    if tensor.numel() == 0:
        raise ValueError(f"Got tensor with shape {tuple(tensor.shape)}. However, tensor must not be empty.")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("Got tensor with NaN or Inf entries. However, tensor must be finite.")
    if not bool(tensor.ne(0).any()):
        raise ValueError("Got an all-zero tensor. However, its relative error is undefined; tensor must be nonzero.")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Got {name}={value!r} of type {type(value).__name__}. However, {name} must be an int.")
    if value < minimum:
        raise ValueError(f"Got {name}={value}. However, {name} must be an int >= {minimum}.")


def _check_tol(tol: Any) -> None:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"Got tol={tol!r} of type {type(tol).__name__}. However, tol must be a real number.")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"Got tol={tol}. However, tol must be a finite number >= 0 (0 runs exactly max_iter sweeps).")


def _check_floor(floor: Any, dtype: torch.dtype) -> float:
    if floor is None:
        return _FLOOR[dtype]
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real):
        raise TypeError(f"Got floor={floor!r} of type {type(floor).__name__}. However, floor must be a real number or None.")
    if not (math.isfinite(floor) and 0 <= floor < 1):
        raise ValueError(f"Got floor={floor}. However, floor must be a number in [0, 1) or None (the dtype's default).")
    return float(floor)


def _check_args(tensor: Any, rank: Any, max_iter: Any, tol: Any, seed: Any) -> None:
    _check_tensor(tensor)
    _check_int("rank", rank, 1)
    _check_int("max_iter", max_iter, 1)
    _check_tol(tol)
    _check_int("seed", seed, 0)


_INIT_CHOICES = "'svd', a CPResult, or a (weights, factors) pair with factors[n] of shape (tensor.shape[n], rank)"


def _unpack_init(init: Any, tensor: torch.Tensor, rank: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Check a user-given initial CP model; return ``(weights (R,), factors)`` on the tensor's device/dtype."""
    if hasattr(init, "weights") and hasattr(init, "factors"):  # CPResult or tensorly's CPTensor
        weights, factors = init.weights, init.factors
    elif isinstance(init, (tuple, list)) and len(init) == 2:
        weights, factors = init
    else:
        raise ValueError(f"Got init={init!r}. However, the possible choices are {_INIT_CHOICES}.")
    if not isinstance(factors, Sequence) or len(factors) != _NDIM:
        raise ValueError(f"Got init with {type(factors).__name__} factors. However, init needs {_NDIM} factor matrices.")
    expected = [(n, rank) for n in tensor.shape]
    for n, f in enumerate(factors):
        if not isinstance(f, torch.Tensor) or tuple(f.shape) != expected[n]:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"Got init factors[{n}] with shape {got}. However, it must have shape {expected[n]}.")
    if weights is None:
        weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (rank,):
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"Got init weights with shape {got}. However, they must have shape ({rank},) or be None.")
    to = dict(dtype=tensor.dtype, device=tensor.device)
    weights, factors = weights.detach().to(**to), [f.detach().to(**to) for f in factors]
    if not all(bool(torch.isfinite(t).all()) for t in (weights, *factors)):
        raise ValueError("Got init with NaN or Inf entries. However, the initial factors must be finite.")
    return weights, factors


def _resolve_init(init: Any, tensor: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if isinstance(init, str):
        if init != "svd":
            raise ValueError(f"Got init={init!r}. However, the possible choices are {_INIT_CHOICES}.")
        return svd_init(tensor, rank, seed=seed)
    return _unpack_init(init, tensor, rank)


# ----------------------------------------------------------------------------- small helpers


def khatri_rao(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product: (I, R), (J, R) -> (I*J, R), row index i*J + j."""
    return (a[:, None, :] * b[None, :, :]).reshape(a.shape[0] * b.shape[0], a.shape[1])


def cp_to_tensor(weights: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Full tensor of a 4-way CP model: (I0, R) @ (R, I1*I2*I3) -> (I0, I1, I2, I3)."""
    rest = khatri_rao(factors[1], khatri_rao(factors[2], factors[3]))  # (I1*I2*I3, R)
    full = (factors[0] * weights) @ rest.T
    return full.reshape(*(f.shape[0] for f in factors))


def _relative_error(tensor: torch.Tensor, weights: torch.Tensor, factors: Sequence[torch.Tensor]) -> float:
    """||X - X_hat|| / ||X|| from the full reconstruction (norms accumulated in float64)."""
    diff = tensor - cp_to_tensor(weights, factors)
    num = torch.linalg.vector_norm(diff, dtype=torch.float64)
    return float(num / torch.linalg.vector_norm(tensor, dtype=torch.float64))


def _normalize(factors: list[torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Unit-norm columns, scales moved into the weights; zero columns stay zero with weight 0."""
    weights = weights.clone()
    out = []
    for f in factors:
        norms = torch.linalg.vector_norm(f, dim=0)  # (R,)
        weights = weights * norms
        out.append(f / torch.where(norms > 0, norms, torch.ones_like(norms)))
    return weights, out


def _sorted_by_weight(weights: torch.Tensor, factors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Flip negative weights into factor 0 and order the components by decreasing weight."""
    sign = torch.where(weights < 0, -torch.ones_like(weights), torch.ones_like(weights))
    factors = [factors[0] * sign, *factors[1:]]
    order = torch.argsort(weights.abs(), descending=True, stable=True)
    return weights.abs()[order], [f[:, order].contiguous() for f in factors]


def _fix_signs(u: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive, so eigenvectors agree across devices."""
    idx = u.abs().argmax(dim=0)  # (k,)
    sign = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    return u * torch.where(sign == 0, torch.ones_like(sign), sign)


# ----------------------------------------------------------------------------- initialisation


def svd_init(tensor: torch.Tensor, rank: int, *, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SVD initialisation (De Lathauwer et al. 2000 style): ``(weights (R,), factors)``.

    ``factors[n][:, :k]`` with ``k = min(rank, I_n)`` are the ``k`` leading left singular vectors
    of the mode-n unfolding ``X_(n)`` (eigenvectors of the ``I_n x I_n`` Gram ``X_(n) X_(n)^T``,
    taken in float64, signs fixed so the largest entry of each is positive). A mode with fewer
    columns than the rank, such as the 3-wide spatial modes of a 3x3 kernel at rank 128, has only
    ``I_n`` singular vectors: its remaining ``rank - I_n`` columns are filled with independent
    standard normal vectors of unit norm drawn from ``torch.Generator().manual_seed(seed)`` (on
    the CPU, then moved, so the result is the same on every device). All columns have unit norm
    and the weights are ones; their scale does not matter to ALS, whose first update rewrites
    factor 0 from the other three.
    """
    _check_tensor(tensor)
    _check_int("rank", rank, 1)
    _check_int("seed", seed, 0)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    factors = []
    for mode, size in enumerate(tensor.shape):
        unfold = torch.movedim(tensor, mode, 0).reshape(size, -1)  # (I_n, prod of the others)
        gram = (unfold @ unfold.T).to(torch.float64)  # (I_n, I_n)
        _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
        k = min(rank, size)
        lead = _fix_signs(vecs[:, -k:].flip(1))  # (I_n, k), leading first
        fill = torch.randn(size, rank - k, generator=gen, dtype=torch.float64)
        fill = fill / torch.linalg.vector_norm(fill, dim=0).clamp_min(torch.finfo(torch.float64).tiny)
        factor = torch.cat([lead, fill.to(lead.device)], dim=1)
        factors.append(factor.to(tensor.dtype))
    weights = torch.ones(rank, dtype=tensor.dtype, device=tensor.device)
    return weights, factors


# ----------------------------------------------------------------------------- the ALS sweep


class _Layouts:
    """Three views of X (I0, I1, I2, I3) laid out so each MTTKRP is one GEMM with a contiguous K.

    Two permuted copies (2x the kernel's memory) are made once per decomposition, not per sweep.
    """

    def __init__(self, x: torch.Tensor):
        i0, i1, i2, i3 = x.shape
        self.shape = (i0, i1, i2, i3)
        x = x.contiguous()
        self.flat = x.reshape(i0, i1 * i2 * i3)  # (I0, I1*I2*I3): contract mode 0 (modes 2, 3)
        self.s_inner = x.permute(0, 2, 3, 1).reshape(i0 * i2 * i3, i1).contiguous()  # contract mode 1 (mode 0)
        self.t_inner = x.permute(1, 2, 3, 0).reshape(i1 * i2 * i3, i0).contiguous()  # contract mode 0 (mode 1)


def _gram(f: torch.Tensor) -> torch.Tensor:
    """(I, R) -> (R, R) Gram in float64, the precision every R x R quantity is kept in."""
    f = f.to(torch.float64)
    return f.T @ f


def _solve_normal(mttkrp: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Least-squares factor update ``A = M V^{-1}`` (float64) for M (I, R) and symmetric PSD V (R, R).

    V (the Hadamard product of Gram matrices) is nearly singular when components become
    collinear, the CP "degeneracy" that makes ALS stall; a float32 solve would fail or return
    noise once cond(V) passes ~1e7. So the R x R system is solved in float64 (negligible next to
    the MTTKRP) with a ridge ``eps * trace(V) / R``, ``eps`` the machine epsilon of the input
    dtype: below that level M (computed in the input dtype) carries only rounding noise, so
    damping there loses no information and stops noise from being amplified into huge columns.
    The solve is a Cholesky factorisation (V + ridge is positive definite); if that
    fails (V with NaN, or of rank 0 such as all-zero columns), fall back to the eigenvalue-cut
    pseudo-inverse. Not ``torch.linalg.solve``: MKL's threaded LU stalled ~200 ms per call
    for R >= 192 on the loaded 2-core machine, against ~1 ms for Cholesky (measured).
    """
    r = v.shape[0]
    ridge = torch.diagonal(v).sum() * (eps / r)  # a 0-d tensor: no device sync
    vr = v + ridge * torch.eye(r, dtype=v.dtype, device=v.device)
    m64 = mttkrp.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(vr)
    if int(info) == 0:
        sol = torch.cholesky_solve(m64.T, chol).T  # (I, R): solves V A^T = M^T
    else:
        sol = m64 @ torch.linalg.pinv(vr, hermitian=True)
    return sol


def _update(mttkrp: torch.Tensor, v: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve for one factor and split it into unit columns and scales, staying in float64 for
    the R x R work: (factor with unit columns in M's dtype, its Gram (R, R) float64, column
    norms (R,) float64). A zero column stays zero (Gram diagonal 0, norm 0)."""
    sol = _solve_normal(mttkrp, v, eps)  # (I, R) float64
    norms = torch.linalg.vector_norm(sol, dim=0)
    unit = sol / torch.where(norms > 0, norms, torch.ones_like(norms))
    return unit.to(mttkrp.dtype), unit.T @ unit, norms


def _mode0(x: _Layouts, a1: torch.Tensor, kr23: torch.Tensor, v: torch.Tensor, eps: float):
    """Update factor 0 from the other three: (unit factor 0, its Gram, its scales, M0).

    M0[t,r] = sum_{s,k,l} X[t,s,k,l] A1[s,r] A2[k,r] A3[l,r], ``kr23`` the Khatri-Rao of A2, A3.
    """
    i0, _, i2, i3 = x.shape
    q = (x.s_inner @ a1).view(i0, i2 * i3, -1)  # (I0, I2*I3, R), sum over s
    m0 = (q * kr23).sum(1)
    a0, g0, w0 = _update(m0, v, eps)
    return a0, g0, w0, m0


def _modes123(x: _Layouts, a0, g0, a1, kr23, g2, g3, a3, eps):
    """The rest of a sweep after factor 0: modes 1, 2, 3 in turn (see :func:`_sweep`)."""
    i0, i1, i2, i3 = x.shape
    # mode 1: M1[s,r] = sum_{t,k,l} X[t,s,k,l] A0[t,r] A2[k,r] A3[l,r]
    q = (x.t_inner @ a0).view(i1, i2 * i3, -1)  # (I1, I2*I3, R), sum over t
    a1, g1, _ = _update((q * kr23).sum(1), g0 * g2 * g3, eps)
    # modes 2 and 3 share Y[r,k,l] = sum_{t,s} X[t,s,k,l] A0[t,r] A1[s,r]
    z = (a0.T @ x.flat).view(-1, i1, i2 * i3)  # (R, I1, I2*I3), sum over t
    # Elementwise products and sums, not bmm/einsum: a batch of R tiny (1 x I1) @ (I1 x I2*I3)
    # products runs hundreds of times slower under a loaded OpenMP pool (measured on 2 cores).
    y = (z * a1.T[:, :, None]).sum(1).view(-1, i2, i3)  # (R, I2, I3), sum over s
    m2 = (y * a3.T[:, None, :]).sum(2).T  # (I2, R), sum over l
    a2, g2, _ = _update(m2, g0 * g1 * g3, eps)
    m3 = (y * a2.T[:, :, None]).sum(1).T  # (I3, R), sum over k
    a3, g3, weights = _update(m3, g0 * g1 * g2, eps)  # the last update carries the scales
    # With A3 = unit3 * w: <X, X_hat> = sum_{l,r} M3[l,r] A3[l,r] and
    # ||X_hat||^2 = sum(G0 * G1 * G2 * (w w^T * G3)) (Kolda & Bader 2009, sec. 3.4)
    inner = float((m3.to(torch.float64) * a3.to(torch.float64) * weights).sum())
    norm_hat2 = float((g0 * g1 * g2 * g3 * torch.outer(weights, weights)).sum())
    return [a0, a1, a2, a3], weights.to(a3.dtype), inner, norm_hat2


def _sweep(x: _Layouts, factors: list[torch.Tensor], eps: float) -> tuple[list[torch.Tensor], torch.Tensor, float, float]:
    """One plain ALS sweep over modes 0..3. ``factors`` have unit columns in and out.

    Returns the new factors, the weights (the scales of the last update), and <X, X_hat> and
    ||X_hat||^2 of the new model in float64 (for the error formula, no reconstruction).
    """
    _, a1, a2, a3 = factors
    g1, g2, g3 = _gram(a1), _gram(a2), _gram(a3)
    kr23 = khatri_rao(a2, a3)  # (I2*I3, R): the only Khatri-Rao formed, I2*I3 rows (9 for 3x3)
    a0, g0, _, _ = _mode0(x, a1, kr23, g1 * g2 * g3, eps)
    return _modes123(x, a0, g0, a1, kr23, g2, g3, a3, eps)


# ----------------------------------------------------------------------------- one ALS run


@dataclass
class _Run:
    """Where one ALS run (from one init) ended: unit-column factors, weights, relative error,
    sweeps, and why it stopped: ``"floor"`` (exact fit), ``"tol"`` (the relative rule) or
    ``"max_iter"`` (unconverged)."""

    weights: torch.Tensor
    factors: list[torch.Tensor]
    error: float
    n_iter: int
    stop: str


class _Problem:
    """The tensor of one decomposition with what every run shares: its layouts, ||X||^2 and
    the error level below which the cheap error formula is replaced by a reconstruction."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.x = _Layouts(tensor)
        self.eps = torch.finfo(tensor.dtype).eps
        self.norm_x2 = float(torch.linalg.vector_norm(tensor, dtype=torch.float64) ** 2)
        # ||X||^2 - 2<X, X_hat> + ||X_hat||^2 carries an absolute error of order eps * ||X||^2
        # (<X, X_hat> comes from an MTTKRP in the input dtype), so a relative error e is known
        # only to about eps / e^2 relative: below e^2 = 1e5 * eps (float32: e ~ 0.11) that noise
        # reaches the relative rule's default 1e-5 per sweep, so the error is taken from the full
        # reconstruction there instead (one more GEMM of the sweep's size).
        self.exact_below2 = _EXACT_BELOW * self.eps

    def error(self, inner: float, norm_hat2: float, weights: torch.Tensor, factors: list[torch.Tensor]) -> float:
        """||X - X_hat|| / ||X|| of the model, from the cheap formula or, near exact fits, exactly."""
        err2 = (self.norm_x2 - 2.0 * inner + norm_hat2) / self.norm_x2
        if not math.isfinite(err2):
            return err2
        if err2 >= self.exact_below2:
            return math.sqrt(err2)
        return _relative_error(self.tensor, weights, factors)


def _extrapolate(new: torch.Tensor, old: torch.Tensor, step: float) -> torch.Tensor:
    """``old + step * (new - old)`` with unit columns again (both have unit columns)."""
    f = old + step * (new - old)
    norms = torch.linalg.vector_norm(f, dim=0)
    return f / torch.where(norms > 0, norms, torch.ones_like(norms))


def _als_run(p: _Problem, weights: torch.Tensor, factors: list[torch.Tensor], *, max_iter: int, tol: float,
             floor: float, line_search: bool) -> _Run:
    """ALS sweeps from one starting model until the floor, the relative rule or ``max_iter``.

    Line search (Bro 1998, sec. 4.5; Rajih, Comon & Harshman 2008): before each sweep, factors
    1..3 are pushed along their change over the last sweep, ``F_{k-1} + s (F_k - F_{k-1})``, and
    factor 0 is solved for the pushed factors. That solve is the sweep's own first update, so
    the attempt costs nothing when it is kept; it is kept only when the error after it is below
    the error of the last sweep, so the error never increases. The step ``s`` grows by
    ``_LS_GROW`` after each kept push (up to ``_LS_MAX``) and falls back to ``_LS_START`` after a
    refused one, which then costs one MTTKRP (a third of a sweep).
    """
    x, eps = p.x, p.eps
    errors: list[float] = []
    prev, step = None, _LS_START
    stop, n_iter = "max_iter", 0
    for n_iter in range(1, max_iter + 1):
        _, a1, a2, a3 = factors
        pushed = None
        if line_search and prev is not None:
            e1, e2, e3 = (_extrapolate(f, g, step) for f, g in zip(factors[1:], prev[1:]))
            kr = khatri_rao(e2, e3)
            ge = [_gram(e) for e in (e1, e2, e3)]
            b0, gb0, wb0, m0 = _mode0(x, e1, kr, ge[0] * ge[1] * ge[2], eps)
            # At the least-squares optimum of factor 0, <X, X_hat> = ||X_hat||^2 = <M0, A0>.
            inner = float((m0.to(torch.float64) * b0.to(torch.float64) * wb0).sum())
            err_pushed = p.error(inner, inner, wb0.to(b0.dtype), [b0, e1, e2, e3])
            if err_pushed < errors[-1]:
                pushed = (b0, gb0, e1, kr, ge[1], ge[2], e3)
                step = min(step * _LS_GROW, _LS_MAX)
            else:
                step = _LS_START
        if pushed is None:
            g1, g2, g3 = _gram(a1), _gram(a2), _gram(a3)
            kr23 = khatri_rao(a2, a3)
            a0, g0, _, _ = _mode0(x, a1, kr23, g1 * g2 * g3, eps)
            pushed = (a0, g0, a1, kr23, g2, g3, a3)
        prev = factors
        factors, weights, inner, norm_hat2 = _modes123(x, *pushed, eps)
        err = p.error(inner, norm_hat2, weights, factors)
        if not math.isfinite(err):
            raise FloatingPointError(f"CP-ALS diverged at sweep {n_iter} (error {err}); check the input scale.")
        errors.append(err)
        if err <= floor:
            stop = "floor"
            break
        if tol > 0 and n_iter > _WINDOW and errors[-1 - _WINDOW] - err < _WINDOW * tol * err:
            stop = "tol"
            break
    return _Run(weights, factors, errors[-1], n_iter, stop)


def _stalled(run: _Run) -> bool:
    """Whether a run is worth restarting: unconverged, or stopped on a plateau near an exact fit."""
    return run.stop == "max_iter" or (run.stop == "tol" and run.error < _PLATEAU_BELOW)


def _random_init(tensor: torch.Tensor, rank: int, seed: int, restart: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Independent standard normal factors with unit columns for restart number ``restart``,
    from a CPU generator seeded by ``(seed, restart)``: the same on every device and run."""
    gen = torch.Generator(device="cpu").manual_seed(_RESTART_SEED_STRIDE * (restart + 1) + int(seed))
    factors = []
    for size in tensor.shape:
        f = torch.randn(size, rank, generator=gen, dtype=torch.float64)
        f = f / torch.linalg.vector_norm(f, dim=0).clamp_min(torch.finfo(torch.float64).tiny)
        factors.append(f.to(device=tensor.device, dtype=tensor.dtype))
    return torch.ones(rank, dtype=tensor.dtype, device=tensor.device), factors


# ----------------------------------------------------------------------------- CP-ALS


def cp_als(
    tensor: torch.Tensor,
    rank: int,
    *,
    max_iter: int = 3000,
    tol: float = 1e-5,
    floor: float | None = None,
    line_search: bool = True,
    restarts: int = 2,
    init: InitArg = "svd",
    seed: int = 0,
) -> CPResult:
    """Rank-``rank`` CP decomposition of a 4-D float tensor by alternating least squares.

    A run of ALS sweeps (each updates all four factors once, with line search) stops when the
    error reaches ``floor`` (an exact fit), when it has stopped improving (``tol``), or after
    ``max_iter`` sweeps (unconverged). A run that stops unconverged, or on a plateau near an
    exact fit (the relative rule at an error below ``_PLATEAU_BELOW`` = 0.1, a swamp), is
    followed by up to ``restarts`` runs from random starts, and the lowest-error run is kept; the restarts end early once one finds the best error again (within
    ``_SAME_OPTIMUM`` relative): the same optimum reached from two starts (Bro 1997, "multiple
    starts"). A kept run that is unconverged gives a :class:`CPConvergenceWarning` (not with
    ``tol=0``, which asks for a fixed number of sweeps).

    Args:
        tensor: (I0, I1, I2, I3), float32 or float64, finite, on any device; the work runs there.
        rank: number of rank-one components R >= 1 (may exceed some mode sizes).
        max_iter: most ALS sweeps of one run.
        tol: relative stopping rule: a run stops when its relative error ``e = ||X - X_hat|| / ||X||``
            fell by less than ``tol * e`` per sweep on average over the last ``_WINDOW`` sweeps
            (relative to the error itself, so a plateau at a small error is not mistaken for
            convergence, unlike tensorly's absolute ``abs_rec_error``); 0 turns the rule off.
        floor: a run stops, converged, once ``e <= floor``; ``None``: ``_FLOOR[dtype]`` (1e-5 for
            float32, 1e-10 for float64: far below the 1e-3 of a recovered kernel, above rounding
            level); 0 turns it off. With ``tol=0`` and ``floor=0`` a run is exactly ``max_iter`` sweeps.
        line_search: extrapolate factors between sweeps (see ``_als_run``); ``False`` is plain ALS,
            the iterates of tensorly's ``parafac`` from the same init.
        restarts: most extra runs from random starts (0: one run only).
        init: ``"svd"`` (:func:`svd_init` with ``seed``), or a starting model: a :class:`CPResult`,
            a tensorly ``CPTensor`` or a ``(weights, factors)`` pair; restarts start at random.
        seed: seeds the local generators of the SVD init's extra columns and of the restarts;
            the global RNG is never touched, and equal inputs and seed give equal results.

    The per-sweep error uses ``||X||^2 - 2<X, X_hat> + ||X_hat||^2`` with ``<X, X_hat>`` from the
    last MTTKRP and ``||X_hat||^2`` from the Gram matrices; where cancellation would blur it
    (below ``e ~ sqrt(1e5 eps)``, about 0.11 in float32) it is taken from the reconstruction.

    Returns:
        :class:`CPResult` with unit-norm factor columns, weights sorted decreasingly, the
        relative error of the kept model from its full reconstruction, the sweeps of all runs,
        the restarts run and whether the kept run converged.
    """
    _check_args(tensor, rank, max_iter, tol, seed)
    _check_int("restarts", restarts, 0)
    if not isinstance(line_search, bool):
        raise TypeError(f"Got line_search={line_search!r}. However, line_search must be True or False.")
    floor = _check_floor(floor, tensor.dtype)
    weights, factors = _resolve_init(init, tensor, rank, seed)
    run_opts = dict(max_iter=max_iter, tol=tol, floor=floor, line_search=line_search)
    with torch.no_grad():
        p = _Problem(tensor.detach())
        best = _als_run(p, *_normalize(factors, weights), **run_opts)
        sweeps, n_restarts = best.n_iter, 0
        while n_restarts < restarts and _stalled(best):
            n_restarts += 1
            run = _als_run(p, *_random_init(tensor, rank, seed, n_restarts), **run_opts)
            sweeps += run.n_iter
            same = abs(run.error - best.error) <= _SAME_OPTIMUM * best.error
            if run.error < best.error:
                best = run
            if same:
                break
        weights, factors = _sorted_by_weight(best.weights, best.factors)
        rel = _relative_error(tensor.detach(), weights, factors)
    converged = best.stop != "max_iter"
    if not converged and tol > 0:  # tol=0 asks for exactly max_iter sweeps: nothing to warn about
        warnings.warn(CPConvergenceWarning(
            f"CP-ALS at rank {rank} on a tensor of shape {tuple(tensor.shape)} stopped unconverged: "
            f"{max_iter} sweeps (max_iter) in each of {n_restarts + 1} run(s), relative error {rel:.3g}; "
            "raise max_iter or restarts, or lower the rank."), stacklevel=2)
    return CPResult(weights=weights, factors=factors, rel_error=rel, n_iter=sweeps, converged=converged,
                    restarts=n_restarts, stop=best.stop)


# ----------------------------------------------------------------------------- tensorly reference


def cp_tensorly(
    tensor: torch.Tensor,
    rank: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    init: InitArg = "svd",
    seed: int = 0,
) -> CPResult:
    """``tensorly.decomposition.parafac`` behind the same interface and result as :func:`cp_als`.

    Runs with the pytorch backend set only inside ``tensorly.backend_context`` (thread-local),
    ``normalize_factors=False`` and tensorly's stopping rule on the absolute change of the
    relative error (``tol``; 0 runs exactly ``max_iter`` sweeps). ``init="svd"`` is *tensorly's*
    SVD initialisation (``random_state=seed``; its extra columns for small modes are uniform in
    [0, 1)); pass ``init=svd_init(tensor, rank, seed=seed)`` to start from the same point as
    :func:`cp_als`. The result is normalised and sorted like :func:`cp_als`'s and its
    ``rel_error`` is computed by the same full reconstruction.
    """
    import tensorly as tl
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import parafac

    _check_args(tensor, rank, max_iter, tol, seed)
    if isinstance(init, str):
        if init != "svd":
            raise ValueError(f"Got init={init!r}. However, the possible choices are {_INIT_CHOICES}.")
        tl_init: Any = "svd"
    else:
        tl_init = CPTensor(_unpack_init(init, tensor, rank))
    errors: list[float] = []

    def _record(_cp, err):  # called once before the sweeps and once after each (only when tol > 0)
        errors.append(float(err))

    with torch.no_grad(), tl.backend_context("pytorch", local_threadsafe=True):
        cp = parafac(
            tensor.detach(), rank, n_iter_max=max_iter, init=tl_init, tol=tol,
            random_state=seed, normalize_factors=False, callback=_record if tol > 0 else None,
        )
    weights, factors = cp.weights, list(cp.factors)
    n_iter = len(errors) - 1 if tol > 0 else max_iter
    converged = tol > 0 and n_iter >= 2 and abs(errors[-2] - errors[-1]) < tol
    with torch.no_grad():
        weights, factors = _sorted_by_weight(*_normalize(factors, weights))
        rel = _relative_error(tensor.detach(), weights, factors)
    return CPResult(weights=weights, factors=factors, rel_error=rel, n_iter=n_iter, converged=converged)


# ----------------------------------------------------------------------------- balancing


def balance_cp(result: CPResult) -> list[torch.Tensor]:
    """The four factors with the weights absorbed and each component's scale spread evenly.

    For component r with weight w_r and columns a_{n,r}, let s_r = w_r * prod_n ||a_{n,r}||.
    Every returned column has norm |s_r|^(1/4) (= lambda_r^(1/4) for unit-norm factors), the
    sign of s_r goes to factor 0, and ``cp_to_tensor(ones, balance_cp(result))`` equals
    ``result.reconstruct()`` up to rounding. With equal scales in every factor, no conv of the
    decomposed layer carries huge or tiny weights, which keeps fine-tuning well conditioned.
    A zero component gives zero columns.
    """
    if not (hasattr(result, "weights") and hasattr(result, "factors")):
        raise TypeError(f"Got result of type {type(result).__name__}. However, result must be a CPResult.")
    weights, unit = _normalize(list(result.factors), result.weights)  # weights = s_r, unit columns
    scale = weights.abs() ** (1.0 / _NDIM)  # (R,)
    sign = torch.where(weights < 0, -torch.ones_like(weights), torch.ones_like(weights))
    balanced = [f * scale for f in unit]
    balanced[0] = balanced[0] * sign
    return balanced

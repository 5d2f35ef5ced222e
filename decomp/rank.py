"""Rank policies, resolved in one place.

A rank specification says how many components each decomposed layer keeps:

=====================  ====================================================================
``int``                explicit rank: SVD and CP rank; Tucker-2 ``(r, r)``
``(r_in, r_out)``      explicit Tucker-2 ranks (input, output)
``float`` in (0, 1]    :class:`Fraction` of the channels (or features) of each mode
``Fraction(f)``        SVD: ceil(f * min(in, out)); Tucker-2: (ceil(f * S), ceil(f * T));
                       CP: ceil(f * T) (T = output channels)
``Energy(e)``          smallest rank keeping a fraction ``e`` of the squared singular values
``"vbmf"`` / ``VBMF``  empirical VBMF rank (Nakajima et al. 2013) as in Kim et al. 2015, with
                       MUSCO's optional weakening toward the full rank and a minimum rank
=====================  ====================================================================

Tucker-2 applies ``Energy`` and ``VBMF`` to the input-channel unfolding (S x T*kh*kw) for
``R_in`` and to the output-channel unfolding (T x S*kh*kw) for ``R_out``; CP, which has one
rank, takes the larger of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from .linalg import singular_values
from .vbmf import evbmf, evbmf_spectrum

__all__ = ["Fraction", "Energy", "VBMF", "RankSpec", "as_policy", "resolve_rank", "rank_from_spectrum"]

METHODS = ("svd", "cp", "tucker2")


@dataclass(frozen=True)
class Fraction:
    """Keep ``ceil(value * n)`` components of a mode with ``n`` channels, ``0 < value <= 1``."""

    value: float

    def __post_init__(self):
        _check_unit_interval("Fraction", self.value)


@dataclass(frozen=True)
class Energy:
    """Keep the fewest components whose squared singular values reach ``value`` of the total."""

    value: float

    def __post_init__(self):
        _check_unit_interval("Energy", self.value)


@dataclass(frozen=True)
class VBMF:
    """Empirical VBMF rank, optionally weakened (Gusak et al. 2019, MUSCO).

    ``factor`` in [0, 1] moves the rank from the full rank ``n`` toward the VBMF rank ``v``:
    ``rank = n - factor * (n - v)``; ``factor=1`` (default) is plain VBMF. As in MUSCO, the
    result is at least ``min_rank``, a mode with ``n <= min_rank`` keeps its full rank, and so
    does a mode where VBMF finds no component above the noise (``v = 0``): with no estimate,
    nothing is cut (the never-worse guard of ``decompose`` then leaves such a layer as it is).
    """

    factor: float = 1.0
    min_rank: int = 1

    def __post_init__(self):
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not 0 <= self.factor <= 1:
            raise ValueError(f"VBMF factor must be a number in [0, 1]; got {self.factor!r}.")
        if isinstance(self.min_rank, bool) or not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ValueError(f"VBMF min_rank must be an int >= 1; got {self.min_rank!r}.")


Policy = Union[int, tuple, Fraction, Energy, VBMF]
RankSpec = Union[int, tuple, float, str, Fraction, Energy, VBMF]


def _check_unit_interval(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} value must be a number in (0, 1]; got {value!r}.")


def as_policy(spec: RankSpec) -> Policy:
    """Normalise a user's rank specification, or raise naming what is allowed."""
    if isinstance(spec, (Fraction, Energy, VBMF)):
        return spec
    if isinstance(spec, bool):
        pass  # bool is an int subclass, and never a sensible rank
    elif isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"rank must be >= 1; got {spec}.")
        return spec
    elif isinstance(spec, float):
        return Fraction(spec)
    elif isinstance(spec, str):
        if spec.lower() == "vbmf":
            return VBMF()
        raise ValueError(f"rank string must be 'vbmf'; got {spec!r}.")
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(
        isinstance(r, int) and not isinstance(r, bool) for r in spec
    ):
        if min(spec) < 1:
            raise ValueError(f"ranks must be >= 1; got {tuple(spec)}.")
        return tuple(spec)
    raise TypeError(
        f"rank must be an int, a pair of ints (Tucker-2), a float in (0, 1], 'vbmf', "
        f"or decomp.Fraction / decomp.Energy / decomp.VBMF; got {spec!r}."
    )


def _energy_rank(s: torch.Tensor, value: float) -> int:
    energy = torch.cumsum(s.double() ** 2, 0)
    if float(energy[-1]) == 0:
        return 1
    # Small tolerance so value=1.0 is reached despite rounding in the cumulative sum.
    return int(torch.searchsorted(energy / energy[-1], torch.tensor(value - 1e-12, dtype=torch.float64))) + 1


def _mode_rank(policy: Policy, unfolding: torch.Tensor) -> int:
    """Rank of one matrix (a mode unfolding, rows = the channels being compressed)."""
    if isinstance(policy, Fraction):
        return rank_from_spectrum(policy, None, tuple(unfolding.shape))
    if isinstance(policy, Energy):
        return rank_from_spectrum(policy, singular_values(unfolding), tuple(unfolding.shape))
    if isinstance(policy, VBMF):
        return _vbmf_rank(policy, evbmf(unfolding).rank, min(unfolding.shape))
    raise TypeError(f"unexpected policy {policy!r}")  # pragma: no cover - as_policy filters


def rank_from_spectrum(policy: Policy, s: torch.Tensor | None, shape: tuple[int, int]) -> int:
    """Rank of a mode from the singular values ``s`` of a matrix of ``shape`` (rows = the
    channels being compressed), without the matrix: the data-aware spectra of
    :mod:`decomp.calibration` (``Fraction`` needs no spectrum)."""
    n, full = shape[0], min(shape)
    if isinstance(policy, Fraction):
        return min(n, math.ceil(policy.value * n))
    if isinstance(policy, Energy):
        return min(_energy_rank(torch.as_tensor(s), policy.value), full)
    if isinstance(policy, VBMF):
        return _vbmf_rank(policy, evbmf_spectrum(torch.as_tensor(s).cpu().double().numpy(), shape).rank, full)
    raise TypeError(f"unexpected policy {policy!r}")  # pragma: no cover - as_policy filters


def _vbmf_rank(policy: VBMF, v: int, full: int) -> int:
    """MUSCO's weakened VBMF rank; the full rank where VBMF sees nothing above the noise."""
    if full <= policy.min_rank or v == 0:
        return full
    return max(int(full - policy.factor * (full - v)), policy.min_rank)


def resolve_rank(policy: Policy, weight: torch.Tensor, method: str, layer: str = "layer"):
    """Rank(s) for ``method`` on a layer with ``weight`` (Linear: (out, in); Conv2d: (T, S, kh, kw)).

    Returns an int (SVD, CP) or ``(r_in, r_out)`` (Tucker-2). Bounds are checked by the
    decomposition itself; this only translates the policy.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if isinstance(policy, tuple):
        if method != "tucker2":
            raise TypeError(f"a pair of ranks {policy} is for Tucker-2 only; {layer} uses {method}: give an int.")
        return policy
    if isinstance(policy, int):
        return (policy, policy) if method == "tucker2" else policy
    w = weight.detach()
    if method == "svd":
        matrix = w.flatten(1)                                  # (out, in)
        if isinstance(policy, Fraction):
            return math.ceil(policy.value * min(matrix.shape))
        return _mode_rank(policy, matrix)
    out_unfold = w.flatten(1)                                  # (T, S*kh*kw)
    in_unfold = w.transpose(0, 1).flatten(1)                   # (S, T*kh*kw)
    if method == "cp" and isinstance(policy, Fraction):
        return min(math.ceil(policy.value * w.shape[0]), math.prod(w.shape) // max(w.shape))
    r_in, r_out = _mode_rank(policy, in_unfold), _mode_rank(policy, out_unfold)
    return (r_in, r_out) if method == "tucker2" else max(r_in, r_out)

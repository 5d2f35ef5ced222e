"""Tucker-2 decomposition of convolution kernels (Kim et al. 2015, arXiv 1511.06530).

The kernel ``W (T, S, kh, kw)`` is approximated as ``G x_0 U_out x_1 U_in`` with a core
``G (R_out, R_in, kh, kw)`` and orthonormal factors ``U_out (T, R_out)``, ``U_in (S, R_in)``:
only the two channel modes are compressed (the spatial modes are tiny). The layer becomes a
1x1 conv S -> R_in (``U_in^T``), a kh x kw conv R_in -> R_out (``G``, with the original stride,
padding and dilation) and a 1x1 conv R_out -> T (``U_out``, with the original bias).

Factors come from the truncated HOSVD refined by HOOI (higher-order orthogonal iteration,
De Lathauwer et al. 2000), which alternates the two channel modes and never increases the
error. With orthonormal factors the error needs no reconstruction:
``||W - W_hat||^2 = ||W||^2 - ||G||^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import check_conv2d, check_rank, fill_, tucker2_layers

__all__ = ["tucker2_conv2d", "tucker2"]


@dataclass(frozen=True)
class Tucker2Factors:
    core: torch.Tensor   # (R_out, R_in, kh, kw)
    u_in: torch.Tensor   # (S, R_in), orthonormal columns
    u_out: torch.Tensor  # (T, R_out), orthonormal columns
    rel_error: float
    n_iter: int


def _leading_left_vectors(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` left singular vectors of a mode unfolding (n channels x m), always ``rank``
    orthonormal columns.

    Wide unfoldings use the eigenvectors of the n x n Gram matrix. Inside HOOI the projected
    unfolding can be narrower than ``rank`` (m < n, e.g. 1x1 kernels or small ranks): its thin
    SVD is then cheaper, and a complete QR basis fills the missing directions, which carry no
    energy, so any orthonormal completion is as good as another.
    """
    n, m = unfolded.shape
    if m >= n:
        _, vecs = torch.linalg.eigh(unfolded @ unfolded.T)  # ascending eigenvalues
        return vecs[:, -rank:].flip(-1)
    u = torch.linalg.svd(unfolded, full_matrices=False)[0]  # (n, m)
    if rank <= m:
        return u[:, :rank]
    return torch.linalg.qr(u, mode="complete").Q[:, :rank]  # first m columns span u


def _project(weight: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    return torch.einsum("tshw,to,si->oihw", weight, u_out, u_in)  # (R_out, R_in, kh, kw)


def tucker2(weight: torch.Tensor, ranks: tuple[int, int], *, max_iter: int = 10,
            tol: float = 1e-7) -> Tucker2Factors:
    """Tucker-2 of a 4-D kernel on its two channel modes, in float64.

    ``ranks = (R_in, R_out)``. HOSVD initialisation, then HOOI sweeps until the relative
    error improves by less than ``tol`` or ``max_iter`` sweeps ran (``max_iter=0``: HOSVD only).
    """
    w = weight.detach().to(torch.float64)
    t, s = w.shape[:2]
    r_in, r_out = ranks
    norm2 = float((w**2).sum())
    u_out = _leading_left_vectors(w.reshape(t, -1), r_out)
    u_in = _leading_left_vectors(w.transpose(0, 1).reshape(s, -1), r_in)
    core = _project(w, u_out, u_in)
    err = _rel_error(norm2, core)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        y = torch.einsum("tshw,si->tihw", w, u_in)      # (T, R_in, kh, kw)
        u_out = _leading_left_vectors(y.reshape(t, -1), r_out)
        z = torch.einsum("tshw,to->oshw", w, u_out)     # (R_out, S, kh, kw)
        u_in = _leading_left_vectors(z.transpose(0, 1).reshape(s, -1), r_in)
        core = _project(w, u_out, u_in)
        new_err = _rel_error(norm2, core)
        improved = err - new_err
        err = new_err
        if improved < tol:
            break
    return Tucker2Factors(core=core, u_in=u_in, u_out=u_out, rel_error=err, n_iter=n_iter)


def _rel_error(norm2: float, core: torch.Tensor) -> float:
    if norm2 == 0:
        return 0.0
    return max(norm2 - float((core**2).sum()), 0.0) ** 0.5 / norm2**0.5


def _check_ranks(layer: nn.Conv2d, ranks) -> tuple[int, int]:
    if not (isinstance(ranks, (tuple, list)) and len(ranks) == 2):
        raise TypeError(f"ranks must be a pair (input_rank, output_rank) of ints; got {ranks!r}.")
    name = f"Conv2d({layer.extra_repr()})"
    r_in = check_rank(ranks[0], layer.in_channels, "ranks[0] (input rank)", name)
    r_out = check_rank(ranks[1], layer.out_channels, "ranks[1] (output rank)", name)
    return r_in, r_out


def _tucker2_conv2d(layer: nn.Conv2d, ranks, **options) -> tuple[nn.Sequential, dict]:
    check_conv2d(layer)
    ranks = _check_ranks(layer, ranks)
    f = tucker2(layer.weight, ranks, **options)
    weights = [f.u_in.T, f.core, f.u_out]  # (R_in, S), (R_out, R_in, kh, kw), (T, R_out)
    layers = fill_(tucker2_layers(layer, ranks, device="meta"), weights, layer)
    return layers, {"rel_error": f.rel_error, "n_iter": f.n_iter}


def tucker2_conv2d(layer: nn.Conv2d, ranks: tuple[int, int], *, max_iter: int = 10,
                   tol: float = 1e-7) -> nn.Sequential:
    """Replace ``layer`` by its Tucker-2 decomposition: 1x1 conv, kh x kw core conv, 1x1 conv.

    ``ranks = (input_rank, output_rank)`` with ``1 <= input_rank <= in_channels`` and
    ``1 <= output_rank <= out_channels``. The core keeps the layer's stride, padding (int,
    tuple, 'same', 'valid'), dilation and padding mode; the last conv carries the bias. dtype
    and device follow ``layer``. ``max_iter``/``tol`` control the HOOI refinement.
    """
    return _tucker2_conv2d(layer, ranks, max_iter=max_iter, tol=tol)[0]

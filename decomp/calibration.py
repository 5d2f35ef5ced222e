"""Data-aware factors: fit each low-rank layer to its responses on calibration data.

A weight-only decomposition minimises ``||W - W'||``; what matters is the layer's output on
real inputs. Following Zhang et al. 2015 ("Accelerating Very Deep Convolutional Networks for
Classification and Detection"), each decomposed layer is fitted, in forward order, so that
the *decomposed* network's response at that layer matches the *original* network's:

    min over rank-r M   E || y - M y_hat ||^2,   y = W x + b,   y_hat = W x_hat + b

where ``x`` is the layer's input in the original network and ``x_hat`` its input in the network
whose earlier layers are already decomposed (asymmetric reconstruction: errors do not pile
up layer after layer). With ``S = E[y_hat y_hat^T]`` and ``X = E[y y_hat^T]`` the optimum is
closed form (generalised SVD): ``M = U_r U_r^T X S^+`` with ``U_r`` the leading left singular
vectors of ``X S^-1/2``. The new layer is ``M W``: ``(U_r^T X S^+ W)`` to ``r`` channels, then
``U_r``, the bias becoming ``M b``. With ``x_hat = x`` this is exactly the whitened SVD
``[W C^1/2]_r C^-1/2`` (``C = E[x x^T]``), the optimum of ``E||(W - W')x||^2``, but it needs
only output-channel statistics (``out x out``), so fc6 of an ImageNet VGG16 (25088 inputs)
costs no 25088^2 covariance.

- SVD (``Linear``, 1x1 convs): the output fit above.
- Tucker-2: the input factor from the input-channel covariance ``C`` of ``x_hat``: the leading
  left singular vectors ``V_r`` of ``C^1/2 W_(in)`` (the input-mode unfolding, whitened), the
  1x1 input conv ``V_r^T C^-1/2`` and the core ``W x_in (C^1/2 V_r)^T``; then the output factor
  and the core are re-fitted to the layer's outputs by the output fit above.
- CP stays data-free (its ALS fits the weights); later layers still see its approximate outputs.

Statistics are streamed: per batch, second moments are accumulated in float64 and the
activations dropped. Forward passes stop at the layer being fitted. Every pass runs in eval
mode under ``torch.no_grad``; the models' modes are restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import svd_conv1x1_layers, svd_linear_layers, tucker2_layers

__all__ = ["Calibration", "as_calibration", "forward_order", "layer_moments", "OutputFit", "InputFit",
           "fit_output", "fit_input_side", "InputSideFit", "fit_input", "svd_from_fit", "tucker2_input_stage", "tucker2_from_fits",
           "model_moments", "output_spectrum", "effective_weight", "Following", "following_ops",
           "ReluTarget", "refine_for_relu", "RELU_LAMBDAS", "RELU_ROWS"]

_BATCH = 256  # images per forward pass when calibration is one tensor
# Ridge added to every covariance before it is inverted, relative to its mean eigenvalue.
# Whitening by E[x x^T]^-1/2 amplifies directions the calibration data barely visits (dead or
# near-constant channels) by 1/sqrt(eigenvalue): exact on that data, explosive on any other.
DAMPING = 1e-3  # measured on a CIFAR VGG16-BN: 1e-6 lost 2 points of top-1 against 1e-3 (1e-2: as 1e-3)


class _Stop(Exception):
    """Raised by a hook once the layer of interest has run: the rest of the forward is not needed."""


@dataclass
class Calibration:
    """Validated calibration data: re-iterable batches on the model's device and dtype."""

    source: object  # the tensor, or the re-iterable collection of batches
    sample_shape: tuple[int, ...]  # shape of one input without the batch dimension
    samples: int | None = None  # inputs per pass, known once a pass has completed

    def batches(self) -> Iterable[torch.Tensor]:
        count = 0
        items = self.source.split(_BATCH) if isinstance(self.source, torch.Tensor) else self.source
        for item in items:
            batch = item if isinstance(self.source, torch.Tensor) else _check_batch(_first(item), self.sample_shape)
            count += batch.shape[0]
            yield batch
        self.samples = count


def _first(item):
    """A DataLoader over a labelled data set yields (inputs, labels): the inputs are the first."""
    return item[0] if isinstance(item, (tuple, list)) else item


def _check_batch(x, sample_shape, dtype=None, device=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"calibration batches must be tensors (or (inputs, labels) pairs); got {type(x).__name__}.")
    if x.ndim < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"calibration batch is empty (shape {tuple(x.shape)}); give at least one input.")
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"calibration batches must all have inputs of shape {tuple(sample_shape)}; "
                         f"got a batch of shape {tuple(x.shape)}.")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"calibration dtype {x.dtype} does not match the model's parameters ({dtype}); "
                         f"convert it with .to({dtype}).")
    if device is not None and x.device != device:
        raise ValueError(f"calibration is on {x.device} but the model is on {device}; move it with .to('{device}').")
    return x


def as_calibration(data, model: nn.Module, input_shape: Sequence[int] | None) -> Calibration:
    """Check ``data`` before any work: a tensor batch, or a re-iterable collection of batches
    (a DataLoader, a list) whose first batch has the model's dtype and device and, when
    ``input_shape`` is given, its per-sample shape."""
    p = next(iter(model.parameters()), None)
    dtype, device = (p.dtype, p.device) if p is not None else (None, None)
    if isinstance(data, torch.Tensor):
        first = data
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        if iter(data) is data:
            raise TypeError("calibration must be a tensor or a re-iterable collection of batches (a DataLoader, "
                            "a list); got a one-shot iterator, which the layer-by-layer fit cannot read twice.")
        first = next(iter(data), None)
        if first is None:
            raise ValueError("calibration has no batches; give at least one input.")
        first = _first(first)
    else:
        raise TypeError(f"calibration must be a tensor or an iterable of tensor batches; got {type(data).__name__}.")
    _check_batch(first, None, dtype, device)
    if input_shape is not None and tuple(first.shape[1:]) != tuple(input_shape)[1:]:
        raise ValueError(f"calibration inputs have shape {tuple(first.shape[1:])} per sample but "
                         f"input_shape={tuple(input_shape)}; they must agree (or pass input_shape=None).")
    return Calibration(data, tuple(first.shape[1:]))


@contextlib.contextmanager
def _eval_no_grad(*models: nn.Module):
    modes = [{m: m.training for m in net.modules()} for net in models]
    for net in models:
        net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for mode in modes:
            for m, was in mode.items():
                m.training = was


def forward_order(model: nn.Module, names: Sequence[str], batch: torch.Tensor) -> list[str]:
    """``names`` in the order their modules first run on ``batch`` (modules never called last,
    in the given order)."""
    seen: list[str] = []
    handles = []
    for name in names:
        def hook(module, args, name=name):
            if name not in seen:
                seen.append(name)
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with _eval_no_grad(model):
            model(batch[:1])
    finally:
        for h in handles:
            h.remove()
    return seen + [n for n in names if n not in seen]


def _rows(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Samples x channels in float64: a conv map's pixels and a Linear's leading dims are samples."""
    return t.movedim(channel_dim, -1).reshape(-1, t.shape[channel_dim]).double()


def _channel_dim(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.modules.conv._ConvNd) else -1


class _Capture:
    """Forward hooks that keep one layer's input or output of the current batch, then stop."""

    def __init__(self, module: nn.Module, what: str, stop: bool = True):
        self.value = None
        self.stop = stop
        if what == "input":
            self.handle = module.register_forward_pre_hook(self._input)
        else:
            self.handle = module.register_forward_hook(self._output)

    def _input(self, module, args):
        self.value = args[0]
        if self.stop:
            raise _Stop

    def _output(self, module, args, output):
        self.value = output
        if self.stop:
            raise _Stop

    def remove(self):
        self.handle.remove()


def _run(model: nn.Module, x: torch.Tensor) -> None:
    try:
        model(x)
    except _Stop:
        pass


def layer_moments(original: nn.Module, current: nn.Module, name: str, calibration: Calibration, *,
                  inputs: bool = False, candidate: nn.Module | None = None, input_side: bool = False,
                  scale: torch.Tensor | None = None, keep: int = 0):
    """Streamed second moments at layer ``name``.

    ``inputs=True``: ``E[x_hat x_hat^T]`` of the layer's input channels in ``current``.
    Otherwise the output statistics of the fit: ``X = E[y y_hat^T]``, ``S = E[y_hat y_hat^T]``
    and ``E||y||^2``, where ``y`` is the layer's output in ``original`` and ``y_hat`` the
    output of ``candidate`` (default: the layer itself) on the layer's input in ``current``.
    ``input_side=True`` (a Linear): ``Sxx = E[x_hat x_hat^T]``, ``Syx = E[(y - b) x_hat^T]``
    and ``E||y - b||^2`` instead, for layers with fewer inputs than outputs. ``scale``
    (per output channel) weights ``y`` and ``y_hat``: the batch norm that follows the layer
    (:func:`following_ops`), so the fit counts errors as the next layer sees them.
    ``keep``: also keep ``keep`` random rows (pixels) per input, ``"sample": (y, y_hat)`` with
    ``y`` weighted and ``y_hat`` not: the bounded sample the ReLU refinement iterates on
    (:func:`refine_for_relu`), never a layer's whole activations. Seeded: the same rows every run.
    Returns float64 tensors (and the sample count).
    """
    layer = current.get_submodule(name)
    dim = _channel_dim(layer)
    acc: dict[str, torch.Tensor] = {}
    count = 0
    kept, pick = [], torch.Generator().manual_seed(0)
    with _eval_no_grad(original, current):
        for batch in calibration.batches():
            grab_in = _Capture(layer, "input")
            try:
                _run(current, batch)
            finally:
                grab_in.remove()
            x_hat = grab_in.value
            if inputs:
                rows = _rows(x_hat, 1 if x_hat.ndim == 4 else -1)
                acc["C"] = acc.get("C", 0) + rows.T @ rows
                count += rows.shape[0]
                continue
            grab_out = _Capture(original.get_submodule(name), "output")
            try:
                _run(original, batch)
            finally:
                grab_out.remove()
            y = _rows(grab_out.value, dim)
            if input_side:
                if layer.bias is not None:
                    y = y - layer.bias.double()
                rows = _rows(x_hat, dim)
                acc["Sxx"] = acc.get("Sxx", 0) + rows.T @ rows
                acc["Syx"] = acc.get("Syx", 0) + y.T @ rows
                acc["yy"] = acc.get("yy", 0) + (y * y).sum()
                count += y.shape[0]
                continue
            if candidate is not None and layer.bias is not None:
                y = y - layer.bias.double()  # a candidate's features carry no bias: fit y - b, keep b
            y_hat = _rows((candidate or layer)(x_hat), dim)
            if scale is not None:
                y = y * scale
            if keep:
                rows = torch.randperm(y.shape[0], generator=pick)[:keep * batch.shape[0]].to(y.device)
                kept.append((y[rows], y_hat[rows]))
            if scale is not None and candidate is None:  # the layer's own output, compared channel by channel
                y_hat = y_hat * scale
            acc["S"] = acc.get("S", 0) + y_hat.T @ y_hat
            acc["X"] = acc.get("X", 0) + y.T @ y_hat
            acc["yy"] = acc.get("yy", 0) + (y * y).sum()
            count += y.shape[0]
    moments = {k: v / count for k, v in acc.items()}
    if keep:
        moments["sample"] = tuple(torch.cat(part) for part in zip(*kept))
    return moments, count


def _psd_sqrt_pair(s: torch.Tensor, rel_floor: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S^1/2, S^+1/2)`` of a symmetric PSD matrix damped by ``DAMPING`` (relative to its
    mean eigenvalue); eigenvalues below ``rel_floor * max`` are zero in the pseudo-inverse."""
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    evals = evals.clamp_min(0)
    evals = evals + DAMPING * float(evals.mean())
    keep = evals > rel_floor * float(evals.max().clamp_min(torch.finfo(evals.dtype).tiny))
    root = evals.sqrt()
    inv_root = torch.where(keep, 1 / root.clamp_min(torch.finfo(evals.dtype).tiny), torch.zeros_like(root))
    return (evecs * root) @ evecs.T, (evecs * inv_root) @ evecs.T


def _cholesky(s: torch.Tensor, jitter: float | None = None) -> torch.Tensor:
    """Lower Cholesky factor of ``S + jitter * mean(diag S) * I`` (default jitter: ``DAMPING``):
    any square root of ``S`` whitens alike, and a Cholesky costs a fraction of an
    eigendecomposition. The jitter is raised until the factorization succeeds."""
    s = (s + s.T) / 2
    jitter = max(DAMPING, 1e-10) if jitter is None else jitter
    scale = float(s.diagonal().mean().clamp_min(torch.finfo(s.dtype).tiny))
    eye = torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    while True:
        factor, info = torch.linalg.cholesky_ex(s + jitter * scale * eye)
        if int(info) == 0:
            return factor
        jitter *= 100


def _top_eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors and square-rooted eigenvalues of a Gram matrix, descending: the singular
    vectors and values of its factor at the cost of a symmetric eigensolver (several times an
    SVD's speed at fc sizes, where LAPACK's SVD is slowest on AMD CPUs)."""
    evals, vecs = torch.linalg.eigh(gram)
    return vecs.flip(1), evals.flip(0).clamp_min(0).sqrt()


@dataclass
class OutputFit:
    """The output fit at one layer, ``y ~ M y_hat``, for every rank at once.

    The whitened problem is ``G = X L^-T`` (``S = L L^T``): its left singular vectors are those
    of ``X S^-1/2``, since two square roots of ``S`` differ by a rotation on the right.
    """

    u: torch.Tensor            # (out, out) left singular vectors of G, descending
    spectrum: torch.Tensor     # (out,) singular values of G: the output energy each keeps
    x_s_pinv: torch.Tensor     # (out, out) X S^-1: the unconstrained fit
    total: float               # E||y||^2
    scale: torch.Tensor | None = None  # (out,) channel weights D of y (the next batch norm's)
    rhs_scaled: bool = True            # y_hat was weighted by D too (the layer's own output)

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, Q)``: ``M = P Q`` with ``P = U_r`` (out x r), ``Q = U_r^T X S^-1`` (r x features).
        With channel weights ``D`` the fit is of ``D M`` (``D M D^-1`` when ``y_hat`` was weighted
        too): ``P = D^-1 U_r`` (and ``Q D``)."""
        p = self.u[:, :rank]
        q = p.T @ self.x_s_pinv
        if self.scale is not None:
            p = p / self.scale[:, None]
            if self.rhs_scaled:
                q = q * self.scale
        return p, q

    def layer_weights(self, layer: nn.Module, rank: int):
        """(first, second, bias) of the two-layer SVD replacement: ``Q W``, ``P``, ``M b``."""
        p, q = self.factors(rank)
        w = layer.weight.detach().double().flatten(1)
        bias = None if layer.bias is None else p @ (q @ layer.bias.detach().double())
        return q @ w, p, bias

    def rel_error(self, rank: int) -> float:
        """Relative output error on the calibration data, sqrt(E||y - M y_hat||^2 / E||y||^2)."""
        kept = float((self.spectrum[:rank] ** 2).sum())
        return math.sqrt(max(self.total - kept, 0.0) / self.total) if self.total > 0 else 0.0


@torch.no_grad()
def fit_output(moments: dict, scale: torch.Tensor | None = None, rhs_scaled: bool = True) -> OutputFit:
    """The output fit from :func:`layer_moments`' statistics (gathered with the same ``scale``):
    a reduced-rank regression of ``y`` on ``y_hat`` (any features: the layer's own output, or
    the input patches of Tucker-2's core)."""
    chol = _cholesky(moments["S"])
    g = torch.linalg.solve_triangular(chol, moments["X"].T, upper=False).T   # X L^-T
    u, s = _top_eigh(g @ g.T)
    x_s_inv = torch.cholesky_solve(moments["X"].T, chol).T                  # X S^-1
    return OutputFit(u, s, x_s_inv, float(moments["yy"]), scale, rhs_scaled)


# Zhang et al.'s nonlinear reconstruction: min E||relu(v) - relu(v')||^2 over the fit, with v
# (v') the batch-normalised output of the original (new) layer. Relaxed with an auxiliary
# target z: min E||relu(v) - relu(z)||^2 + lam E||z - v'||^2, alternating between z (closed
# form, element by element) and the fit (the same reduced-rank regression, of z instead of
# y), with lam rising so that z is driven onto the fit's output. It runs in memory on a
# bounded sample of rows (:data:`RELU_ROWS` pixels per input, kept during the linear fit's
# pass, as Zhang et al. sample a few locations per image). Measured on the CIFAR VGG16-BN (w0.5, Tucker-2 at 1/3, one
# layer at a time): 0.7-0.9 points of top-1 back on the layers that lose most.
RELU_LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 1.0)
RELU_ROWS = 16  # rows (pixels) per calibration input kept for the alternation
# The alternation re-fits a regression on the kept rows alone: with fewer rows than this many
# per feature it fits that sample's noise (a Linear fed by 2,048 features on 2,048 inputs).
RELU_ROWS_PER_FEATURE = 8


@dataclass
class ReluTarget:
    """One alternation step's auxiliary target, for the batch norm after the layer (``follow``) and ``lam``."""

    follow: Following
    lam: float

    def affine(self, like: torch.Tensor, scale, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sign, shift)`` of the batch norm after the layer, in ``like``'s dtype; the layer's
        ``bias`` moves into the shift when ``y`` and ``u`` were fitted without it."""
        f = self.follow
        sign = f.sign if f.sign is not None else torch.ones_like(like[0])
        shift = f.shift if f.shift is not None else torch.zeros_like(like[0])
        if bias is not None:
            shift = shift + (sign * scale if scale is not None else 1.0) * bias
        return sign.to(like.dtype), shift.to(like.dtype)

    def seen(self, y, scale, bias) -> torch.Tensor:
        """What the next layer sees from the original: ``relu(sign * y + shift)``."""
        sign, shift = self.affine(y, scale, bias)
        return torch.addcmul(shift, sign, y).clamp_min_(0)

    def target(self, y, u, scale, bias, acc, seen: torch.Tensor | None = None) -> torch.Tensor:
        """The auxiliary target ``z`` for rows ``y`` (original, scaled like the fit) given the fit's
        output ``u`` (scaled alike), in ``u``'s dtype; accumulates the ReLU-space error of ``u``
        in ``acc`` (float64 sums). ``seen``: :meth:`seen` of ``y``, when the caller reuses it."""
        sign, shift = self.affine(u, scale, bias)
        t = seen if seen is not None else self.seen(y.to(u.dtype), scale, bias)
        w = torch.addcmul(shift, sign, u)     # the fit's output, before the ReLU
        tt = t.square()
        acc["relu_err"] = acc.get("relu_err", 0) + (t - w.clamp_min(0)).square_().sum(dtype=torch.float64)
        acc["relu_total"] = acc.get("relu_total", 0) + tt.sum(dtype=torch.float64)
        # Per element, min (t - relu(z))^2 + lam (z - w)^2 (t >= 0): on z >= 0 the minimiser is
        # a = max(0, (t + lam w) / (1 + lam)), on z <= 0 it is min(w, 0). For w >= 0, a always
        # wins; for w < 0 their costs are lam (t - w)^2 / (1 + lam) and t^2, and that test
        # already fails wherever t + lam w <= 0 (a = 0 there), so that case needs none of its own.
        lam = self.lam
        above = torch.add(t, w, alpha=lam).div_(1 + lam).clamp_min_(0)
        keep_above = (w >= 0) | ((t - w).square_().mul_(lam) <= tt.mul_(1 + lam))
        return sign * (torch.where(keep_above, above, w) - shift)


@torch.no_grad()
def refine_for_relu(fit: OutputFit, rank: int, follow: Following, sample: tuple[torch.Tensor, torch.Tensor],
                    bias: torch.Tensor | None = None) -> tuple[OutputFit, list[float]]:
    """The output fit at ``rank`` refined for the ReLU after the layer (:data:`RELU_LAMBDAS`).

    ``sample``: ``(y, features)`` rows kept by :func:`layer_moments` (``keep=``); ``bias``: the
    layer's, when ``y`` was fitted without it (Tucker-2's core patches). The alternation runs on
    that sample in memory (no more passes over the calibration data). Returns the refined fit
    and the relative ReLU-space error ``sqrt(E||relu(v) - relu(v')||^2 / E||relu(v)||^2)`` on the
    sample at each step (the first: the linear fit's); the best is kept, so the result is never
    worse than the linear fit there."""
    y, feats = sample
    scale = fit.scale
    fit_feats = feats * scale if scale is not None and fit.rhs_scaled else feats
    s = fit_feats.T @ fit_feats / len(y)
    # The two products per step over the kept rows (rows x features x outputs) are most of the
    # alternation's time: they run in the single precision of the activations the rows came
    # from (2-3x faster than float64 on a 2-core AVX2 CPU; the small fits stay in float64).
    # The elementwise target too (a dozen passes over rows x outputs per step): its z feeds
    # only that single-precision product, and its error sums accumulate in float64.
    low = torch.float32 if feats.dtype == torch.float64 else feats.dtype
    feats_low, fit_feats_low = feats.to(low), fit_feats.to(low)
    scale_low = scale.to(low) if scale is not None else None
    seen = ReluTarget(follow, 1.0).seen(y.to(low), scale, bias)  # the original's side: the same every step
    best, best_error, errors, current = fit, math.inf, [], fit
    for i, lam in enumerate((*RELU_LAMBDAS, None)):  # the last step only measures
        p, q = current.factors(rank)
        u = feats_low @ (p @ q).T.to(low)
        acc: dict[str, torch.Tensor] = {}
        z = ReluTarget(follow, lam if lam is not None else 1.0).target(
            None, u * scale_low if scale_low is not None else u, scale, bias, acc, seen=seen)
        errors.append(math.sqrt(float(acc["relu_err"]) / max(float(acc["relu_total"]), 1e-300)))
        if errors[-1] < best_error:  # a step may make it worse before lam grows: keep the best measured
            best, best_error = current, errors[-1]
        if lam is not None:
            x = (z.T @ fit_feats_low).to(s.dtype) / len(y)
            yy = z.square().sum(dtype=torch.float64) / len(y)
            current = fit_output({"X": x, "S": s, "yy": yy}, scale, fit.rhs_scaled)
    return best, errors


@dataclass
class InputSideFit(OutputFit):
    """The same optimum reached from the input side, for a Linear with fewer inputs than outputs:
    ``W' = [Syx Sxx^-1/2]_r Sxx^-1/2`` fitted to ``y - b`` (``in x in`` statistics only)."""

    v: torch.Tensor = None          # (in, in) right singular vectors of G = Syx L^-T
    g: torch.Tensor = None          # (out, in) G
    chol: torch.Tensor = None       # L, Sxx = L L^T

    def layer_weights(self, layer: nn.Module, rank: int):
        v = self.v[:, :rank]
        first = torch.linalg.solve_triangular(self.chol.T, v, upper=True).T           # V_r^T L^-1
        bias = None if layer.bias is None else layer.bias.detach().double()
        return first, self.g @ v, bias


@torch.no_grad()
def fit_input_side(moments: dict) -> InputSideFit:
    chol = _cholesky(moments["Sxx"])
    g = torch.linalg.solve_triangular(chol, moments["Syx"].T, upper=False).T  # Syx L^-T
    v, s = _top_eigh(g.T @ g)
    return InputSideFit(u=None, spectrum=s, x_s_pinv=None, total=float(moments["yy"]), v=v, g=g, chol=chol)


@dataclass
class InputFit:
    """Tucker-2's input factor: the projection of input channels that the weights see least."""

    v: torch.Tensor          # (S, S) left singular vectors of C^1/2 W_(in), descending
    spectrum: torch.Tensor   # (S,) their singular values
    half: torch.Tensor       # C^1/2
    inv_half: torch.Tensor   # C^+1/2

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L)``: the 1x1 input conv ``B = V_r^T C^+1/2`` (r x S) and the lift ``L = C^1/2 V_r`` (S x r)."""
        v = self.v[:, :rank]
        return v.T @ self.inv_half, self.half @ v


def whitened_in_unfolding(weight: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """``C^1/2 W_(in)``: the input-mode unfolding (S x T*kh*kw) weighted by the input covariance."""
    return half @ weight.detach().double().transpose(0, 1).flatten(1)


@torch.no_grad()
def fit_input(weight: torch.Tensor, moments: dict, scale: torch.Tensor | None = None) -> InputFit:
    """Tucker-2's input factor; ``scale`` weights the output channels as in :func:`layer_moments`."""
    half, inv_half = _psd_sqrt_pair(moments["C"])
    if scale is not None:
        weight = weight.detach().double() * scale[:, None, None, None]
    v, s, _ = torch.linalg.svd(whitened_in_unfolding(weight, half), full_matrices=False)
    return InputFit(v, s, half, inv_half)


def _unit_columns(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left D^-1, D right)`` with ``D`` the norms of ``left``'s columns: the same product, in
    the balance of the data-free factors (orthonormal outer factors, the scale in the middle).
    Whitening and batch-norm weights leave the data-aware factors badly scaled, and SGD with
    weight decay fine-tunes badly scaled factors worse: measured on the CIFAR VGG16-BN, the
    unbalanced data-aware Tucker-2 + SVD at 1/3 started 30 points above the data-free one and
    ended 0.8 points below it after 4 epochs."""
    norms = left.norm(dim=0).clamp_min(torch.finfo(left.dtype).tiny)
    return left / norms, right * norms[:, None]


@torch.no_grad()
def svd_from_fit(layer: nn.Module, fit: OutputFit, rank: int) -> nn.Sequential:
    """The two-layer SVD replacement of a Linear or 1x1 conv from an output or input-side fit."""
    first, second, bias = fit.layer_weights(layer, rank)
    build = svd_linear_layers if isinstance(layer, nn.Linear) else svd_conv1x1_layers
    second, first = _unit_columns(second, first)
    new = build(layer, rank, device="meta").to_empty(device=layer.weight.device)
    new[0].weight.copy_(first.reshape(new[0].weight.shape))
    new[1].weight.copy_(second.reshape(new[1].weight.shape))
    if bias is not None:
        new[1].bias.copy_(bias)
    return new


class CorePatches(nn.Module):
    """The core's receptive fields: ``(N, C * kh * kw, H', W')`` patches of its input, laid out
    as a kh x kw conv with the layer's stride, padding and dilation reads them (zero padding)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.kernel, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = conv.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if isinstance(padding, str):  # 'same' / 'valid' as the conv computes them (stride 1)
            padding = tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel)) if padding == "same" else (0, 0)
        n, _, h, w = x.shape
        cols = nn.functional.unfold(x, self.kernel, dilation=self.dilation, padding=padding, stride=self.stride)
        oh = (h + 2 * padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return cols.view(n, cols.shape[1], oh, ow)


@torch.no_grad()
def tucker2_input_stage(layer: nn.Conv2d, fit: InputFit, r_in: int) -> nn.Sequential:
    """The input factor, then the core's input patches: the features whose reduced-rank
    regression onto the layer's outputs gives the core and the output factor together."""
    b, _ = fit.factors(r_in)
    first = tucker2_layers(layer, (r_in, layer.out_channels), device="meta")[0].to_empty(device=layer.weight.device)
    first.weight.copy_(b.reshape(first.weight.shape))
    return nn.Sequential(first, CorePatches(layer))


@torch.no_grad()
def tucker2_from_fits(layer: nn.Conv2d, stage: nn.Sequential, fit: OutputFit, r_out: int) -> nn.Sequential:
    """Tucker-2 layers from the input stage and the regression: the core ``Q`` (r_out x r_in*kh*kw),
    the last 1x1 conv ``P`` with the layer's bias."""
    p, q = fit.factors(r_out)
    r_in = stage[0].out_channels
    core = q.reshape(r_out, r_in, *layer.kernel_size)
    b = stage[0].weight.detach().double().flatten(1)               # (r_in, S)
    p, core = _unit_columns(p, core.flatten(1))                     # scale of P's columns into the core's rows
    core = core.reshape(r_out, r_in, -1)
    row_norm = b.norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)   # and of B's rows into the core's inputs
    b, core = b / row_norm[:, None], core * row_norm[None, :, None]
    new = tucker2_layers(layer, (r_in, r_out), device="meta").to_empty(device=layer.weight.device)
    new[0].weight.copy_(b.reshape(new[0].weight.shape))
    new[1].weight.copy_(core.reshape(new[1].weight.shape))
    new[2].weight.copy_(p.reshape(new[2].weight.shape))
    if layer.bias is not None:
        new[2].bias.copy_(layer.bias)
    return new


def model_moments(model: nn.Module, layers: Mapping[str, str], calibration: Calibration,
                  scales: Mapping[str, torch.Tensor | None] | None = None) -> dict[str, dict]:
    """One pass over ``calibration`` through ``model``: each named layer's output moments
    ``E[y y^T]`` and ``E||y||^2``, and for ``"tucker2"`` layers also the input-channel
    covariance ``E[x x^T]``. The spectra the global rank search reads its errors from.
    ``scales``: per layer, the ``|a|`` of the batch norm that reads it (:class:`Following`):
    its output channels are weighted as the fit weights them (:func:`layer_moments`)."""
    scales = scales or {}
    acc: dict[str, dict] = {name: {} for name in layers}
    counts = {name: 0 for name in layers}
    handles = []

    def hook(name, method):
        def record(module, args, output):
            y = _rows(output, _channel_dim(module))
            if scales.get(name) is not None:
                y = y * scales[name].to(y)
            a = acc[name]
            a["S"] = a.get("S", 0) + y.T @ y
            a["yy"] = a.get("yy", 0) + (y * y).sum()
            if method == "tucker2":
                x = _rows(args[0], 1)
                a["C"] = a.get("C", 0) + x.T @ x
                a["n_in"] = a.get("n_in", 0) + x.shape[0]
            counts[name] += y.shape[0]
        return record

    for name, method in layers.items():
        handles.append(model.get_submodule(name).register_forward_hook(hook(name, method)))
    try:
        with _eval_no_grad(model):
            for batch in calibration.batches():
                model(batch)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, a in acc.items():
        n = max(counts[name], 1)
        out[name] = {"S": a["S"] / n, "yy": float(a["yy"]) / n}
        if "C" in a:
            out[name]["C"] = a["C"] / a["n_in"]
    return out


def output_spectrum(moments: dict) -> torch.Tensor:
    """Singular values of the (symmetric) output fit, ``sqrt(eig E[y y^T])``, descending."""
    return torch.linalg.eigvalsh(moments["S"]).clamp_min(0).flip(0).sqrt()


@dataclass
class Following:
    """What reads a layer's output directly: a batch norm (its per-channel affine map in eval
    mode, ``a * y + c``) and/or a ReLU after it. A conv followed by batch norm is judged by its
    normalised output: a channel with small variance is amplified there, so its errors count
    more (``scale = |a|``); a ReLU then ignores every error below zero."""

    scale: torch.Tensor | None = None   # |a| (clamped away from 0), or None without batch norm
    sign: torch.Tensor | None = None    # sign(a)
    shift: torch.Tensor | None = None   # c = beta - a * running_mean
    relu: bool = False


def following_ops(model: nn.Module, names, batch: torch.Tensor) -> dict[str, Following]:
    """The batch norm that reads each named layer's output tensor and the ``nn.ReLU`` that reads
    that norm's output (or the layer's own), found by one forward pass: a module's input *is*
    the tensor the previous one returned. Anything else in between (a residual sum, a pool)
    ends the chain: the fit stays linear there."""
    produced, found, handles = {}, {}, []
    for name in names:
        def out_hook(module, args, output, name=name):
            produced[id(output)] = (name, output)  # the tensor is kept: its id may not be reused
        handles.append(model.get_submodule(name).register_forward_hook(out_hook))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_var is not None:
            def bn_hook(module, args, output):
                name = produced.get(id(args[0]), (None,))[0]
                if name is not None and name not in found:
                    a = (module.weight.detach().double() if module.affine else torch.ones_like(module.running_var.double()))
                    a = a / (module.running_var.double() + module.eps).sqrt()
                    beta = module.bias.detach().double() if module.affine else torch.zeros_like(a)
                    scale = a.abs().clamp_min(1e-6 * float(a.abs().max().clamp_min(1e-300)))
                    found[name] = Following(scale, torch.where(a < 0, -1.0, 1.0).to(a),
                                            beta - a * module.running_mean.double())
                    produced[id(output)] = (name, output)
            handles.append(m.register_forward_hook(bn_hook))
        elif isinstance(m, nn.ReLU):
            def relu_hook(module, args):
                name = produced.get(id(args[0]), (None,))[0]
                if name is not None:
                    found.setdefault(name, Following()).relu = True
            handles.append(m.register_forward_pre_hook(relu_hook))
    try:
        with _eval_no_grad(model):
            model(batch[:2])
    finally:
        for h in handles:
            h.remove()
    return found


@torch.no_grad()
def effective_weight(new: nn.Sequential, method: str) -> torch.Tensor:
    """The single layer's weight that an SVD or Tucker-2 replacement computes (float64)."""
    if method == "svd":
        return (new[1].weight.double().flatten(1) @ new[0].weight.double().flatten(1))
    b = new[0].weight.double().flatten(1)            # (r_in, S)
    p = new[2].weight.double().flatten(1)            # (T, r_out)
    return torch.einsum("tu,urkl,rs->tskl", p, new[1].weight.double(), b)

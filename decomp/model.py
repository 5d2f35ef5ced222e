"""Whole-model decomposition: walk ``named_modules()``, replace selected layers, report each.

:func:`decompose` never touches its input model; it works on a deep copy. Layers are chosen by
their kind (``"conv"``: Conv2d with a kernel larger than 1x1, ``"conv1x1"``, ``"linear"``), each
kind mapped to a method, and per-layer ``overrides`` by name or ``fnmatch`` pattern. Before any
factor is computed the planned architecture is built on the ``meta`` device and counted: a layer
whose decomposition would not reduce both its MACs and its parameters is left as it is (the
"never worse" guard), and its report row says why. With ``min_speedup`` the planned layer is
also timed against the original, and kept only if it is measured that much faster.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import layers as L
from .checks import (ForwardCheck, check_not_meta, check_overrides, expected_input, first_line, inherit_settings_,
                     parent_reads)
from .cp import _cp_conv2d
from .measure import _check_shape, count_macs, count_params, meta_clone, time_interleaved
from .rank import RankSpec, as_policy, resolve_rank
from .report import LayerReport, Report, describe_layer
from .svd import _svd_conv1x1, _svd_linear
from .tucker import _tucker2_conv2d

__all__ = ["decompose", "build_decomposed"]

KINDS = ("conv", "conv1x1", "linear")
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)  # an ImageNet image; with calibration data, its shape wins
METHOD_PRESETS = {
    "tucker2": {"conv": "tucker2", "conv1x1": "svd"},
    "cp": {"conv": "cp", "conv1x1": "svd"},
    "svd": {"linear": "svd", "conv1x1": "svd"},
}
ALLOWED = {"conv": ("tucker2", "cp"), "conv1x1": ("svd", "tucker2", "cp"), "linear": ("svd",)}

def _svd_factorize(layer, rank, **options):
    return (_svd_linear if isinstance(layer, nn.Linear) else _svd_conv1x1)(layer, rank, **options)


def _svd_build(layer, rank, device):
    return (L.svd_linear_layers if isinstance(layer, nn.Linear) else L.svd_conv1x1_layers)(layer, rank, device)


# method -> (factorize: (layer, ranks, **options) -> (Sequential, info), build: empty architecture)
_DECOMPOSERS = {
    "svd": (_svd_factorize, _svd_build),
    "cp": (_cp_conv2d, L.cp_layers),
    "tucker2": (_tucker2_conv2d, L.tucker2_layers),
}


def _kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d:
        return "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv"
    return None


def _unsupported_reason(module: nn.Module) -> str | None:
    """Why a conv/linear-like module is never decomposed, or None if it may be."""
    if isinstance(module, nn.Conv2d) and type(module) is nn.Conv2d:
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}) is not decomposed"
        return None
    if type(module) is nn.Linear:
        return None
    return f"{type(module).__name__} is not supported (only nn.Conv2d and nn.Linear)"


def _method_table(method) -> dict[str, str | None]:
    if isinstance(method, str):
        if method not in METHOD_PRESETS:
            raise ValueError(
                f"method must be one of {sorted(METHOD_PRESETS)} or a mapping from layer kind "
                f"{KINDS} to a method; got {method!r}."
            )
        table = dict(METHOD_PRESETS[method])
    elif isinstance(method, Mapping):
        unknown = set(method) - set(KINDS)
        if unknown:
            raise ValueError(f"method keys must be among {KINDS}; got {sorted(unknown)}.")
        table = dict(method)
        if "conv" in table and "conv1x1" not in table:
            table["conv1x1"] = "svd"
    else:
        raise TypeError(f"method must be a str or a mapping; got {type(method).__name__}.")
    for kind, m in table.items():
        if m is not None and m not in ALLOWED[kind]:
            raise ValueError(f"method for {kind!r} layers must be one of {ALLOWED[kind]} or None; got {m!r}.")
    return table


def _match_override(name: str, overrides: Mapping[str, Any]) -> tuple[str, Any] | None:
    """Exact name first, then the first matching fnmatch pattern in the mapping's order."""
    if name in overrides:
        return name, overrides[name]
    for pattern, value in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return pattern, value
    return None


class _ShapeMismatch(ValueError):
    """An input_shape that a layer cannot take: raised as it is, never retried for real."""


def _input_shapes(model: nn.Module, targets: dict[str, nn.Module], input_shape) -> dict[str, tuple]:
    """Input shape of each target layer in one forward pass at ``input_shape``.

    Runs on a ``meta`` copy of the model (no arithmetic, no state changed); a model with
    an op that has no meta kernel is run for real on zeros, in eval mode so batch-norm
    statistics stay untouched, and its training flags are restored afterwards. A shape the
    model cannot take is a ``ValueError`` naming ``input_shape`` (and the first layer whose
    input does not fit), raised before any factor is computed.
    """
    shapes: dict[str, tuple] = {}

    def hook(name):
        def record(module, args):
            shape = tuple(args[0].shape)
            expected = expected_input(module, shape)
            if expected is not None:
                raise _ShapeMismatch(f"input_shape={input_shape} does not fit the model: layer {name!r} "
                                     f"({describe_layer(module)}) expects {expected}, got an input of shape "
                                     f"{shape}; allowed: the shape of one input batch the model takes")
            shapes.setdefault(name, shape)
        return record

    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    try:
        clone = meta_clone(model)
        handles = [clone.get_submodule(n).register_forward_pre_hook(hook(n)) for n in targets]
        with torch.no_grad():
            clone(torch.empty(input_shape, dtype=dtype, device="meta"))
    except _ShapeMismatch as e:
        raise ValueError(str(e)) from None
    except Exception:  # no meta kernel for some op: fall back to a real forward pass on zeros
        shapes.clear()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets.items()]
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(input_shape, dtype=dtype, device=device))
        except _ShapeMismatch as e:
            raise ValueError(str(e)) from None
        except Exception as e:
            raise ValueError(f"input_shape={input_shape} does not fit the model: a forward pass at that shape "
                             f"fails ({type(e).__name__}: {first_line(e)}); allowed: the shape of one input "
                             "batch the model takes") from e
        finally:
            for m, mode in modes.items():
                m.training = mode
            for h in handles:
                h.remove()
    return shapes


def _check_planned_ranks(method: str, layer: nn.Module, ranks, name: str):
    w = layer.weight
    if method == "svd":
        return L.check_rank(ranks, min(w.shape[0], w.shape[1]), "rank", name)
    if method == "cp":
        return L.check_rank(ranks, L.cp_max_rank(tuple(w.shape)), "rank", name)
    return (L.check_rank(ranks[0], w.shape[1], "input rank", name),
            L.check_rank(ranks[1], w.shape[0], "output rank", name))


def _copy_and_walk(model: nn.Module):
    """A deep copy, every name of each of its modules (shared modules have several), and its
    Conv/Linear-like layers by first name."""
    new_model = copy.deepcopy(model)
    names_of: dict[int, list[str]] = {}
    for name, module in new_model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
    candidates = {n: m for n, m in new_model.named_modules()
                  if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    return new_model, names_of, candidates


def _replace_everywhere(root: nn.Module, names_of, layer: nn.Module, new_layer: nn.Module) -> nn.Module:
    """``layer`` replaced by ``new_layer`` under every name it has; returns the (new) root. The
    replacement keeps the layer's training flag and ``requires_grad`` (:func:`~decomp.checks.inherit_settings_`)."""
    if new_layer is not layer:
        inherit_settings_(layer, new_layer)
    for alias in names_of[id(layer)]:
        if alias == "":
            root = new_layer
        else:
            _set_module(root, alias, new_layer)
    return root


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _set_or_root(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    if name == "":
        return module
    _set_module(root, name, module)
    return root


def _check_arguments(model: nn.Module, overrides: Mapping[str, Any]) -> None:
    """The checks that need the model, before it is copied: not on ``meta``, every override key a layer."""
    check_not_meta(model)
    layers, aliases, first_of = [], {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            if id(module) in first_of:
                aliases[name] = first_of[id(module)]
            else:
                first_of[id(module)] = name
                layers.append(name)
    check_overrides(overrides, layers, aliases)


def _select_all(root, names_of, candidates, shapes, input_shape, table, default_policy, overrides) -> dict[str, Any]:
    """:func:`_select` for every candidate, then two checks before any factor is computed: a layer
    whose parent's code reads its ``.weight`` or ``.bias`` (an ``nn.Sequential`` has neither), and
    at ``input_shape`` a layer whose replacement by a stand-in breaks the forward pass, are left as
    they are, with the reason."""
    reads = parent_reads(root)
    selected = {}
    for name, layer in candidates.items():
        sel = _select(name, layer, shapes.get(name), table, default_policy, overrides)
        if not isinstance(sel, LayerReport) and id(layer) in reads:
            sel = _skip_row(name, layer, shapes.get(name), reads[id(layer)], sel[0])
        selected[name] = sel
    chosen = {n: s[0] for n, s in selected.items() if not isinstance(s, LayerReport)}
    if input_shape is None or not chosen:
        return selected
    try:
        check = ForwardCheck(root, input_shape)
    except Exception:  # the model itself does not run at input_shape: _input_shapes has said so
        return selected
    stand_ins = {n: (names_of[id(candidates[n])], _stand_in(m, candidates[n])) for n, m in chosen.items()}
    if check.failure(check.original_with(stand_ins.values(), _set_or_root)) is None:
        return selected
    for name, swap in stand_ins.items():
        why = check.failure(check.original_with([swap], _set_or_root))
        if why is not None:
            selected[name] = _skip_row(name, candidates[name], shapes.get(name), why, chosen[name])
    return selected


def _stand_in(method: str, layer: nn.Module) -> nn.Module:
    """The architecture ``method`` gives ``layer`` at rank 1, on ``meta``: what a parent sees of it."""
    return _DECOMPOSERS[method][1](layer, (1, 1) if method == "tucker2" else 1, device="meta")


def _put_back_broken_(model, new_model, names_of, replacements, rows, shapes, input_shape) -> nn.Module:
    """The forward check: run ``new_model`` once at ``input_shape``; if it fails or its output shapes
    differ from ``model``'s, each replacement that breaks the original on its own is put back, and
    all of them if the rest still fail together; their ``rows`` say why. Returns the model."""
    if input_shape is None or not replacements:
        return new_model
    try:
        check = ForwardCheck(model, input_shape)
    except Exception:  # the original itself does not run at input_shape: nothing to compare with
        return new_model
    if check.failure(new_model) is None:
        return new_model
    put_back = {}
    for name, (layer, new_layer) in replacements.items():
        why = check.failure(check.original_with([(names_of[id(layer)], new_layer)], _set_or_root))
        if why is not None:
            put_back[name] = why
    for name in put_back:
        new_model = _replace_everywhere(new_model, names_of, replacements[name][0], replacements[name][0])
    why = check.failure(new_model)
    if why is not None:  # the rest fail only together: hand back none of them rather than a broken model
        for name, (layer, _) in replacements.items():
            if name not in put_back:
                put_back[name] = f"{why} (with the other decomposed layers)"
                new_model = _replace_everywhere(new_model, names_of, layer, layer)
    for name, why in put_back.items():
        row, layer = rows[name], replacements[name][0]
        rows[name] = _skip_row(name, layer, shapes.get(name), f"put back as it was: {why}", row.method, row.ranks,
                               row.info)
    return new_model


def decompose(
    model: nn.Module,
    method: str | Mapping[str, str | None] = "tucker2",
    rank: RankSpec | None = None,
    *,
    overrides: Mapping[str, RankSpec | Mapping[str, Any] | None] | None = None,
    input_shape: tuple[int, ...] | None = DEFAULT_INPUT_SHAPE,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    rank_multiple: int = 1,
    min_speedup: float | None = None,
    progress: bool = False,
    calibration: Any = None,
    budget: Any = None,
) -> tuple[nn.Module, Report]:
    """Decompose the Conv2d and Linear layers of ``model``; return ``(new_model, report)``.

    Args:
        model: any ``nn.Module``; it is deep-copied and never modified.
        method: ``"tucker2"`` (k x k convs by Tucker-2, 1x1 convs by SVD), ``"cp"`` (k x k
            convs by CP, 1x1 by SVD), ``"svd"`` (Linear and 1x1 convs by truncated SVD), or a
            mapping from layer kind (``"conv"``, ``"conv1x1"``, ``"linear"``) to a method or
            ``None``, e.g. ``{"conv": "tucker2", "linear": "svd"}`` for everything.
        rank: rank policy for every selected layer (see :mod:`decomp.rank`): an int, a
            ``(r_in, r_out)`` pair, a float fraction, ``Fraction``, ``Energy``, ``"vbmf"`` or ``VBMF``.
            Default (``None``): ``"vbmf"``; with ``budget`` the search chooses, and giving
            ``rank`` too is refused (use ``overrides`` to fix a layer's rank).
        overrides: per-layer settings by exact name or ``fnmatch`` pattern (exact names win,
            then the first matching pattern): a rank policy, ``None`` to leave the layer out,
            or a dict with ``"method"`` and/or ``"rank"``.
        input_shape: input of one forward pass (batch included) for the MAC counts and the
            never-worse guard; ``None`` skips MACs and guards on parameters only. Left at its
            default with ``calibration``, it is one sample of the calibration data.
        method_options: keyword arguments per method, e.g. ``{"cp": {"max_iter": 200}}``.
        rank_multiple: round every resolved rank up to a multiple of this (capped at the
            mode's size). CPU and GPU kernels work in channel blocks (16 fp32 lanes with
            AVX-512, oneDNN's blocking): a 43-channel conv ran no faster than a 48-channel one
            in ``results/layers/``, so 8 or 16 buys accuracy at no measured cost.
        min_speedup: keep a layer as it is unless its decomposition runs at least this many
            times faster than the original, timed at the layer's input in ``input_shape`` on
            the layer's device (CPU: 1 thread, thread CPU clock; CUDA: wall clock), original and
            decomposed interleaved, before any factor is computed. A MAC reduction does not
            always turn into latency: thin 1x1 convs and small spatial maps are dominated by
            per-call overhead, where three convs run slower than one. ``None`` (default): no
            timing; the result is then deterministic. Needs ``input_shape``.
        progress: show a tqdm progress bar over the layers.
        calibration: inputs of the model (a tensor batch, or a re-iterable collection of
            batches such as a DataLoader; ``(inputs, labels)`` items are fine). SVD and Tucker-2
            layers are then fitted to their responses on it, in forward order, against the
            original network's outputs (:mod:`decomp.calibration`), and ``Energy`` / ``VBMF``
            read the data-aware spectra; CP stays data-free. ``input_shape`` may be ``None``
            (taken from the data). Checked (dtype, device, shape, non-empty) before any work.
        budget: one target for the whole model, ``decomp.MACs(x)`` (x times fewer MACs) or
            ``decomp.Latency(x)`` (x times faster, measured at ``input_shape`` on the model's
            device): the ranks of all selected layers are chosen together (:mod:`decomp.budget`),
            with errors read from the calibration data when given, from the weights otherwise.
            The report's ``budget`` says the target, what was reached and the search's seconds.

    Returns:
        The decomposed copy and a :class:`~decomp.report.Report` with one row per Conv2d,
        Linear or other convolution-like layer.

    The copy always runs (:mod:`decomp.checks`): a layer whose parent reads its ``.weight`` is
    left as it is, and at ``input_shape`` the model is run once with stand-ins before any factor
    is computed and once after; a replacement that breaks it is put back, its row saying why.
    Each replacement keeps its layer's ``requires_grad`` and training flag. Refused before any
    work, with a ``ValueError``: a model on ``meta``, an ``overrides`` key matching no layer,
    an ``input_shape`` the model cannot take.
    """
    table = _method_table(method)
    if budget is not None and rank is not None:
        raise ValueError(f"give rank= or budget=, not both: budget={budget!r} chooses every layer's rank "
                         f"(got rank={rank!r}); fix single layers with overrides.")
    default_policy = as_policy("vbmf" if rank is None else rank)
    overrides = dict(overrides or {})
    method_options = dict(method_options or {})
    for key in method_options:
        if key not in _DECOMPOSERS:
            raise ValueError(f"method_options keys must be among {sorted(_DECOMPOSERS)}; got {key!r}.")
    if calibration is not None and input_shape is DEFAULT_INPUT_SHAPE:
        input_shape = None  # taken from the calibration data
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
    if isinstance(rank_multiple, bool) or not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise ValueError(f"rank_multiple must be an int >= 1; got {rank_multiple!r}.")
    if min_speedup is not None:
        if isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) or not min_speedup > 0:
            raise ValueError(f"min_speedup must be a number > 0 or None; got {min_speedup!r}.")
        if input_shape is None and calibration is None:
            raise ValueError("min_speedup times each layer at input_shape; got input_shape=None.")

    _check_arguments(model, overrides)

    if calibration is not None or budget is not None:
        from .guided import decompose_guided  # needs this module's helpers

        return decompose_guided(model, table, default_policy, overrides, input_shape, method_options,
                                rank_multiple, min_speedup, progress, calibration, budget)

    new_model, names_of, candidates = _copy_and_walk(model)
    shapes = _input_shapes(new_model, candidates, input_shape) if input_shape and candidates else {}

    selected = _select_all(new_model, names_of, candidates, shapes, input_shape, table, default_policy, overrides)

    rows, replacements = {}, {}
    for name, layer in tqdm(candidates.items(), desc="decompose", unit="layer", disable=not progress):
        row, new_layer = _decompose_one(name, layer, shapes.get(name), selected[name], method_options,
                                        rank_multiple, min_speedup)
        rows[name] = row
        if new_layer is not None:
            replacements[name] = (layer, new_layer)

    for name, (layer, new_layer) in replacements.items():
        new_model = _replace_everywhere(new_model, names_of, layer, new_layer)
    new_model = _put_back_broken_(model, new_model, names_of, replacements, rows, shapes, input_shape)
    rows = list(rows.values())

    macs_before = macs_after = None
    if input_shape is not None and candidates:
        macs_before = _model_macs(model, input_shape)
        macs_after = _model_macs(new_model, input_shape)
    report = Report(rows, input_shape, count_params(model), count_params(new_model), macs_before, macs_after)
    return new_model, report


def _model_macs(model: nn.Module, input_shape) -> int | None:
    try:
        return count_macs(model, input_shape)
    except Exception:  # a model whose forward has no meta kernels: totals are left out
        return None


def _round_up(ranks, multiple: int, method: str, weight: torch.Tensor):
    """Round ranks up to a multiple, never past the size of the mode they compress."""
    if multiple == 1:
        return ranks
    up = lambda r, n: min(-(-r // multiple) * multiple, n)  # noqa: E731
    if method == "tucker2":
        return up(ranks[0], weight.shape[1]), up(ranks[1], weight.shape[0])
    if method == "svd":
        return up(ranks, min(weight.shape[0], weight.shape[1]))
    return up(ranks, L.cp_max_rank(tuple(weight.shape)))


def _measured_speedup(layer: nn.Module, candidate: nn.Module, input_shape: tuple[int, ...],
                     min_run_time: float = 0.3) -> float:
    """Median time of ``layer`` over that of ``candidate`` on a random input of ``input_shape``.

    ``candidate`` may be an empty (``meta``) architecture: it is materialised on the layer's
    device with random normal weights, since dense kernels take the same time whatever the
    values (uninitialised memory could hold denormals, which are slow on CPUs). CPU: 1 thread,
    thread CPU clock; CUDA: wall clock with synchronisation. The layer's training flag is kept.
    """
    device, dtype = layer.weight.device, layer.weight.dtype
    candidate = candidate.to_empty(device=device)
    with torch.no_grad():
        for p in candidate.parameters():
            p.normal_()
    x = torch.randn(input_shape, device=device, dtype=dtype)
    options = {"threads": 1, "clock": "thread_cpu"} if device.type == "cpu" else {"clock": "wall"}
    training = layer.training
    try:
        t = time_interleaved({"original": layer, "decomposed": candidate}, x, rounds=3,
                             min_run_time=min_run_time, **options)
    finally:
        layer.train(training)
    return t["original"].median / t["decomposed"].median


def _decompose_one(name, layer, in_shape, selected, method_options, rank_multiple=1, min_speedup=None):
    if isinstance(selected, LayerReport):
        return selected, None
    method, policy = selected
    L.check_finite(layer, name)
    ranks = resolve_rank(policy, layer.weight, method, name)
    return _realise(name, layer, in_shape, method, ranks, method_options, rank_multiple, min_speedup)


def _skip_row(name, layer, in_shape, reason, method=None, ranks=None, info=None) -> LayerReport:
    params = count_params(layer)
    macs = count_macs(layer, in_shape) if in_shape is not None else None
    return LayerReport(name, describe_layer(layer), method, ranks, params, params, macs, macs,
                       skipped=reason, info=dict(info or {}))


def _select(name, layer, in_shape, table, default_policy, overrides):
    """``(method, policy)`` for a layer, or the report row saying why it is left as it is."""
    reason = _unsupported_reason(layer)
    if reason:
        return _skip_row(name, layer, in_shape, reason)
    kind = _kind(layer)
    method, policy = table.get(kind), default_policy
    match = _match_override(name, overrides)
    if match is not None:
        pattern, value = match
        if value is None:
            return _skip_row(name, layer, in_shape, f"left out by overrides[{pattern!r}]")
        if isinstance(value, Mapping):
            unknown = set(value) - {"method", "rank"}
            if unknown:
                raise ValueError(f"overrides[{pattern!r}] may only set 'method' and 'rank'; got {sorted(unknown)}.")
            method = value.get("method", method)
            if method is not None and method not in ALLOWED[kind]:
                raise ValueError(f"overrides[{pattern!r}] method for {name} ({kind}) must be one of "
                                 f"{ALLOWED[kind]}; got {method!r}.")
            policy = as_policy(value["rank"]) if "rank" in value else policy
        else:
            policy = as_policy(value)
    if method is None:
        return _skip_row(name, layer, in_shape, f"no method selected for {kind} layers")
    return method, policy


def _build_options(method, options, missing: str = L.CP_SPATIAL_DEFAULT) -> dict:
    """The options of ``method`` that shape its architecture (CP's ``spatial``), from its
    ``method_options`` or from a report row's ``info``; ``missing`` where they do not say."""
    if method == "cp":
        return {"spatial": (options or {}).get("spatial", missing)}
    return {}


def _planned(method, layer, ranks, rank_multiple, name, options=None):
    """Ranks rounded and checked, and the empty (``meta``) architecture they give."""
    ranks = _round_up(ranks, rank_multiple, method, layer.weight)
    ranks = _check_planned_ranks(method, layer, ranks, name)
    return ranks, _DECOMPOSERS[method][1](layer, ranks, device="meta", **_build_options(method, options))


def _realise(name, layer, in_shape, method, ranks, method_options, rank_multiple=1, min_speedup=None,
             factorize=None):
    """Guard, then factorize ``layer`` at ``ranks``: ``(row, new layer or None)``.

    ``factorize(ranks) -> (Sequential, info)`` replaces the weight-only factorization (the
    data-aware fits of :mod:`decomp.calibration`); ``info`` holds ``rel_error``.
    """
    params_before = count_params(layer)
    macs_before = count_macs(layer, in_shape) if in_shape is not None else None
    ranks, planned = _planned(method, layer, ranks, rank_multiple, name, method_options.get(method))
    params_after = count_params(planned)
    macs_after = count_macs(planned, in_shape) if in_shape is not None else None
    if params_after >= params_before or (macs_before is not None and macs_after >= macs_before):
        what = f"params {params_before} -> {params_after}"
        if macs_before is not None:
            what += f", MACs {macs_before} -> {macs_after}"
        return _skip_row(name, layer, in_shape, f"not decomposed: {method} at ranks {ranks} would not reduce "
                         f"cost ({what})", method, ranks), None
    speed = {}
    if min_speedup is not None and in_shape is not None:
        speed = {"measured_speedup": _measured_speedup(layer, planned, in_shape)}
        if speed["measured_speedup"] < min_speedup:
            return _skip_row(name, layer, in_shape, f"not decomposed: {method} at ranks {ranks} measured "
                             f"x{speed['measured_speedup']:.2f} at input {in_shape}, below "
                             f"min_speedup={min_speedup:g}", method, ranks, speed), None
    if factorize is None:
        new_layer, info = _DECOMPOSERS[method][0](layer, ranks, **method_options.get(method, {}))
    else:
        new_layer, info = factorize(ranks)
    info.update(speed)
    rel_error = info.pop("rel_error")
    row = LayerReport(name, describe_layer(layer), method, ranks, params_before, params_after,
                      macs_before, macs_after, rel_error=rel_error, info=info)
    return row, new_layer


def build_decomposed(model: nn.Module, report: Report | Iterable[Mapping[str, Any]]) -> nn.Module:
    """The decomposed architecture of ``report`` around a copy of ``model``, weights uninitialised.

    Computes no factorization: it only rebuilds the layers that the report (or its
    :meth:`~decomp.report.Report.to_records`, e.g. read back from JSON) says were decomposed,
    so that a saved ``state_dict`` of the decomposed model loads into it::

        new_model, report = decompose(model, ...)
        torch.save(new_model.state_dict(), "model.pt")
        skeleton = build_decomposed(model, report)
        skeleton.load_state_dict(torch.load("model.pt", weights_only=True))

    A layer used at several places (shared) is rebuilt under each of its names, as ``decompose``
    replaced it, so the tying survives a save and load. Each record is checked against the model
    first (the name is a Conv2d / Linear, the ``layer`` it was made for matches, the method fits
    its kind, the ranks its shape): the first that does not fit is a ``ValueError`` naming it.
    """
    if isinstance(report, Report):
        rows = report.to_records()
    elif isinstance(report, Mapping):
        if not isinstance(report.get("layers"), list):
            raise ValueError("a plan given as a mapping needs a 'layers' list of report records "
                             f"(as plan.json has); got keys {sorted(report)}.")
        rows = report["layers"]
    else:
        rows = list(report)
    new_model, names_of, candidates = _copy_and_walk(model)
    by_name = {alias: m for m in candidates.values() for alias in names_of[id(m)]}
    done: set[int] = set()
    for i, row in enumerate(rows):
        layer = _record_layer(model, by_name, row, i)
        if row.get("skipped") is not None:
            continue
        name, method = row["name"], row.get("method")
        if id(layer) in done:
            raise ValueError(f"report row {name!r} decomposes a layer that an earlier row already decomposed "
                             f"(a shared layer has one row, under its first name).")
        done.add(id(layer))
        allowed = ALLOWED[_kind(layer)]
        if method not in allowed:
            raise ValueError(f"report row {name!r} has method {method!r}; allowed for this {_kind(layer)} layer "
                             f"({describe_layer(layer)}): {allowed}.")
        ranks = row.get("ranks")
        ranks = tuple(ranks) if isinstance(ranks, list) else ranks
        if method == "tucker2" and not (isinstance(ranks, tuple) and len(ranks) == 2):
            raise ValueError(f"report row {name!r} (tucker2) needs ranks [r_in, r_out]; got {row.get('ranks')!r}.")
        ranks = _check_planned_ranks(method, layer, ranks, f"report row {name!r}")
        options = _build_options(method, row.get("info"), missing="separable")  # rows from before `spatial`
        new_layer = _DECOMPOSERS[method][1](layer, ranks, device="meta", **options).to_empty(device=layer.weight.device)
        new_model = _replace_everywhere(new_model, names_of, layer, new_layer)
    return new_model


def _record_layer(model: nn.Module, by_name: dict[str, nn.Module], row: Any, i: int) -> nn.Module:
    """The Conv2d / Linear (in the copy, ``by_name``) that a report record names, checked to be the
    layer the record was made for."""
    if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
        raise ValueError(f"report record {i} must be a mapping with a 'name' (as Report.to_records() gives); "
                         f"got {row!r:.200}.")
    name = row["name"]
    if name not in by_name:
        try:
            other = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"report row {name!r} names no module of this model.") from None
        raise ValueError(f"report row {name!r} names a {type(other).__name__}, not a Conv2d or Linear layer.")
    module = by_name[name]
    described = describe_layer(module)
    if row.get("layer") is not None and row["layer"] != described:
        raise ValueError(f"report row {name!r} was made for a {row['layer']} layer; this model has "
                         f"{described} there.")
    if row.get("skipped") is None and _kind(module) is None:
        raise ValueError(f"report row {name!r} decomposes {described}, which decompose never does "
                         f"(only nn.Conv2d with groups=1 and nn.Linear).")
    return module

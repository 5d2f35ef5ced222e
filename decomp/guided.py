"""``decompose`` with calibration data and/or a whole-model budget (see :func:`decomp.decompose`).

Layers are visited in the order they run. With ``calibration``, each SVD and Tucker-2 layer
is fitted to its responses (:mod:`decomp.calibration`) and replaced at once, so the next
layer's statistics come from the partly decomposed network (asymmetric reconstruction). With
``budget``, the ranks of every layer the method selects are first chosen together by
:mod:`decomp.budget`; overrides still fix a layer's rank or leave it out.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import calibration as C
from .budget import (MACs, RANK_GRID, Candidate, Latency, LayerOptions, latency_table, model_seconds, model_speedup,
                     randomised, search)
from .layers import check_finite
from .linalg import singular_values
from .measure import count_macs, count_params
from .model import (_copy_and_walk, _input_shapes, _match_override, _model_macs, _planned, _put_back_broken_,
                    _realise, _replace_everywhere, _round_up, _select_all, _set_module, _skip_row)
from .rank import VBMF, Energy, rank_from_spectrum, resolve_rank
from .report import LayerReport, Report

__all__ = ["decompose_guided"]

_SPECTRUM_POLICIES = (Energy, VBMF)


def decompose_guided(model, table, default_policy, overrides, input_shape, method_options, rank_multiple,
                     min_speedup, progress, calibration, budget) -> tuple[nn.Module, Report]:
    started = time.perf_counter()
    if budget is not None and not isinstance(budget, (MACs, Latency)):
        raise TypeError(f"budget must be decomp.MACs(x) or decomp.Latency(x); got {budget!r}.")
    cal = C.as_calibration(calibration, model, input_shape) if calibration is not None else None
    if input_shape is None and cal is not None:
        input_shape = (1, *cal.sample_shape)
    if budget is not None and input_shape is None:
        raise ValueError(f"budget={budget} is measured at input_shape; got input_shape=None and no calibration.")
    if min_speedup is not None and input_shape is None:
        raise ValueError("min_speedup times each layer at input_shape; got input_shape=None.")

    new_model, names_of, candidates = _copy_and_walk(model)
    shapes = _input_shapes(new_model, candidates, input_shape) if input_shape and candidates else {}
    selected = _select_all(new_model, names_of, candidates, shapes, input_shape, table, default_policy, overrides)
    if budget is not None:
        for name, sel in selected.items():
            if not isinstance(sel, LayerReport) and sel[0] == "cp":
                raise ValueError(f"budget={budget} chooses SVD and Tucker-2 ranks; layer {name!r} would use 'cp'. "
                                 "Use method='tucker2' / 'svd', or fix that layer's rank with overrides.")
    first = next(iter(cal.batches())) if cal is not None else None
    order = C.forward_order(new_model, list(candidates), first) if cal is not None and candidates else list(candidates)
    follows = C.following_ops(new_model, list(candidates), first) if cal is not None and candidates else {}

    searched, budget_info = {}, None
    if budget is not None:
        searchable = {n: s[0] for n, s in selected.items()
                      if not isinstance(s, LayerReport) and _match_override(n, overrides) is None}
        searched, budget_info = _search(model, new_model, candidates, searchable, shapes, input_shape, budget,
                                        cal, rank_multiple, started, method_options, follows)

    rows: dict[str, LayerReport] = {}
    replacements = {}
    for name in tqdm(order, desc="decompose", unit="layer", disable=not progress):
        layer, sel = candidates[name], selected[name]
        if isinstance(sel, LayerReport):
            rows[name] = sel
            continue
        method, policy = sel
        check_finite(layer, name)
        if name in searched:
            if searched[name] is None:
                rows[name] = _skip_row(name, layer, shapes.get(name), f"kept as it is by the budget search "
                                       f"({budget}): no cheaper candidate was worth its error", method)
                continue
            policy = searched[name]
        if cal is not None and method in ("svd", "tucker2"):
            row, new_layer = _fit_layer(model, new_model, name, layer, shapes.get(name), method, policy, cal,
                                        rank_multiple, min_speedup, follows.get(name))
        else:
            ranks = resolve_rank(policy, layer.weight, method, name)
            row, new_layer = _realise(name, layer, shapes.get(name), method, ranks, method_options,
                                      rank_multiple, min_speedup)
            if cal is not None and new_layer is not None:
                row.info["fit"] = "data-free: CP fits the weights (ALS); later layers are fitted to its outputs"
        rows[name] = row
        if new_layer is not None:
            new_model = _replace_everywhere(new_model, names_of, layer, new_layer)
            replacements[name] = (layer, new_layer)
    new_model = _put_back_broken_(model, new_model, names_of, replacements, rows, shapes, input_shape)

    macs_before = macs_after = None
    if input_shape is not None and candidates:
        macs_before, macs_after = _model_macs(model, input_shape), _model_macs(new_model, input_shape)
    cal_info = None
    if cal is not None:
        samples = cal.samples if cal.samples is not None else sum(int(b.shape[0]) for b in cal.batches())
        cal_info = {"samples": samples, "sample_shape": list(cal.sample_shape),
                    "seconds": time.perf_counter() - started}
    report = Report([rows[n] for n in candidates], input_shape, count_params(model), count_params(new_model),
                    macs_before, macs_after, budget=budget_info, calibration=cal_info)
    return new_model, report


# ----------------------------------------------------------------------------------------
# Data-aware fit of one layer


def _fit_layer(original, current, name, layer, in_shape, method, policy, cal, rank_multiple, min_speedup,
               follow=None):
    w = layer.weight
    scale = follow.scale if follow is not None else None
    from_spectrum = isinstance(policy, _SPECTRUM_POLICIES)
    given = None if from_spectrum else resolve_rank(policy, w, method, name)
    rank_from = "output spectrum on the calibration data" if from_spectrum else "given"
    if method == "svd":
        if isinstance(layer, nn.Linear) and layer.in_features < layer.out_features:
            moments = {}  # the input-side fit stays linear
            fit = C.fit_input_side(C.layer_moments(original, current, name, cal, input_side=True)[0])
        else:  # output statistics (out x out): no in x in covariance of a 25088-input fc6
            moments = C.layer_moments(original, current, name, cal, scale=scale, keep=_keep(follow))[0]
            fit = C.fit_output(moments, scale)
        ranks = given if given is not None else rank_from_spectrum(policy, fit.spectrum, tuple(w.flatten(1).shape))

        def factorize(r):
            refined, relu = _relu_refined(fit, r, follow, moments)
            new = C.svd_from_fit(layer, refined, r)
            return new, _fit_info(layer, new, "svd", fit.rel_error(r), rank_from, relu)
        return _realise(name, layer, in_shape, "svd", ranks, {}, rank_multiple, min_speedup, factorize)

    if layer.padding_mode != "zeros":  # the core's patches are read with zero padding
        ranks = resolve_rank(policy, w, method, name)
        row, new = _realise(name, layer, in_shape, method, ranks, {}, rank_multiple, min_speedup)
        if new is not None:
            row.info["fit"] = f"data-free: padding_mode={layer.padding_mode!r} is fitted from the weights only"
        return row, new
    t, s = w.shape[:2]
    taps = w.shape[2] * w.shape[3]
    fin = C.fit_input(w, C.layer_moments(original, current, name, cal, inputs=True)[0], scale)
    r_in = given[0] if given is not None else rank_from_spectrum(policy, fin.spectrum, (s, t * taps))
    r_in = _round_up((r_in, 1), rank_multiple, "tucker2", w)[0]
    r_in = max(1, min(r_in, s))
    stage = C.tucker2_input_stage(layer, fin, r_in)
    moments = C.layer_moments(original, current, name, cal, candidate=stage, scale=scale, keep=_keep(follow))[0]
    fout = C.fit_output(moments, scale, rhs_scaled=False)
    r_out = given[1] if given is not None else rank_from_spectrum(policy, fout.spectrum, (t, s * taps))
    if from_spectrum:
        rank_from = "whitened input-mode spectrum (R_in) and output spectrum (R_out) on the calibration data"

    def factorize(r):
        if r[0] != r_in:  # rounding was applied before the input stage: nothing may move it
            raise AssertionError(f"{name}: input rank {r[0]} != fitted {r_in}")
        refined, relu = _relu_refined(fout, r[1], follow, moments, layer.bias)
        new = C.tucker2_from_fits(layer, stage, refined, r[1])
        return new, _fit_info(layer, new, "tucker2", fout.rel_error(r[1]), rank_from, relu)
    return _realise(name, layer, in_shape, "tucker2", (r_in, r_out), {}, rank_multiple, min_speedup, factorize)


def _keep(follow) -> int:
    """Rows per input to keep for the ReLU refinement: only where a ReLU reads the layer."""
    return C.RELU_ROWS if follow is not None and follow.relu and C.RELU_LAMBDAS else 0


def _relu_refined(fit, rank, follow, moments, bias=None):
    """``(fit, errors)``: the fit refined for the ReLU that reads the layer's (batch-normalised)
    output (:func:`decomp.calibration.refine_for_relu`) and its ReLU-space errors; ``(fit, None)``
    where no ReLU reads it or no sample was kept (the input-side fit of a Linear with fewer
    inputs than outputs stays linear); ``(fit, reason)`` when too few rows were kept."""
    if "sample" not in moments:
        return fit, None
    rows, features = moments["sample"][1].shape
    if rows < C.RELU_ROWS_PER_FEATURE * features:
        return fit, f"not refined for the ReLU: {rows} kept rows for {features} features (fewer than " \
                    f"{C.RELU_ROWS_PER_FEATURE} per feature); more calibration inputs would allow it"
    return C.refine_for_relu(fit, rank, follow, moments["sample"], None if bias is None else bias.detach().double())


def _fit_info(layer, new, method, output_error, rank_from, relu_errors=None) -> dict[str, Any]:
    w = layer.weight.detach().double()
    weight_error = float(torch.linalg.vector_norm(C.effective_weight(new, method).reshape(w.shape) - w)
                         / torch.linalg.vector_norm(w).clamp_min(1e-300))
    info = {"rel_error": weight_error, "fit": "data-aware", "output_rel_error": output_error, "rank_from": rank_from}
    if isinstance(relu_errors, str):
        info["relu_refined"] = False
        info["relu_note"] = relu_errors
    elif relu_errors:  # after the ReLU: the linear fit's error, then each refinement's
        info["relu_refined"] = True
        info["relu_rel_error"] = min(relu_errors)
        info["relu_rel_error_linear"] = relu_errors[0]
    return info


# ----------------------------------------------------------------------------------------
# The global rank search


def _candidate_ranks(method, weight, rank_multiple) -> list:
    t, s = weight.shape[:2]
    seen, out = set(), []
    for f in RANK_GRID:
        if method == "svd":
            n = min(weight.flatten(1).shape)
            r = _round_up(max(1, math.ceil(f * n)), rank_multiple, "svd", weight)
        else:
            r = _round_up((max(1, math.ceil(f * s)), max(1, math.ceil(f * t))), rank_multiple, "tucker2", weight)
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def _spectra(model, layer, name, method, moments, scale=None) -> tuple:
    """Spectra the candidates' errors are read from: data-aware when ``moments`` has the layer,
    with its output channels weighted by ``scale`` (the batch norm after it) as the fit weighs them."""
    w = layer.weight.detach()
    if moments is not None:
        m = moments[name]
        out = C.output_spectrum(m)
        if method == "svd":
            return (out,)
        half, _ = C._psd_sqrt_pair(m["C"])
        if scale is not None:
            w = w.double() * scale[:, None, None, None]
        return (torch.linalg.svdvals(C.whitened_in_unfolding(w, half)), out)
    if method == "svd":
        return (singular_values(w.flatten(1)),)
    return (singular_values(w.transpose(0, 1).flatten(1)), singular_values(w.flatten(1)))


def _tail(s: torch.Tensor, r: int) -> float:
    total = float((s.double() ** 2).sum())
    return float((s.double()[r:] ** 2).sum()) / total if total > 0 else 0.0


def _candidate_error(spectra, ranks) -> float:
    if len(spectra) == 1:
        return math.sqrt(_tail(spectra[0], ranks))
    return math.sqrt(_tail(spectra[0], ranks[0]) + _tail(spectra[1], ranks[1]))


def _search(model, new_model, candidates, searchable, shapes, input_shape, budget, cal, rank_multiple, started,
            method_options=None, follows=None):
    # the errors are those the fit minimises: outputs weighted by the batch norm that reads them
    scales = {n: f.scale for n, f in (follows or {}).items()}
    moments = C.model_moments(model, searchable, cal, scales) if cal is not None and searchable else None
    latency = isinstance(budget, Latency)
    options, planned_of = [], {}
    for name, method in searchable.items():
        layer, in_shape = candidates[name], shapes[name]
        spectra = _spectra(model, layer, name, method, moments, scales.get(name))
        params0 = count_params(layer)
        macs0 = count_macs(layer, in_shape)
        planned = {}
        for r in _candidate_ranks(method, layer.weight, rank_multiple):
            try:
                r, arch = _planned(method, layer, r, rank_multiple, name, (method_options or {}).get(method))
            except ValueError:
                continue
            if count_params(arch) < params0 and count_macs(arch, in_shape) < macs0:
                planned[r] = arch
        if latency:
            cost0, costs = latency_table(layer, planned, in_shape, budget)
        else:
            cost0, costs = macs0, {r: count_macs(a, in_shape) for r, a in planned.items()}
        planned_of[name] = planned
        options.append(LayerOptions(name, cost0, [Candidate(r, costs[r], _candidate_error(spectra, r))
                                                  for r in planned]))
    if latency:
        total = model_seconds(model, input_shape, budget)

        def measure(ranks):
            return model_speedup(model, _skeleton(new_model, candidates, planned_of, ranks), input_shape, budget)
    else:
        total, measure = float(count_macs(model, input_shape)), None
    result = search(options, total, budget, measure, started)
    result.info["layers_searched"] = len(options)
    result.info["errors_from"] = ("calibration data (output spectra, weighted by the batch norms that read them)"
                                  if moments is not None else "weights (spectra)")
    return result.ranks, result.info


def _skeleton(new_model, candidates, planned_of, ranks) -> nn.Module:
    """The architecture ``ranks`` choose, with scaled random weights: for timing only."""
    skeleton = copy.deepcopy(new_model)
    for name, r in ranks.items():
        if r is None:
            continue
        layer = candidates[name]
        arch = randomised(copy.deepcopy(planned_of[name][r]), layer.weight.device)
        if name == "":
            skeleton = arch
        else:
            _set_module(skeleton, name, arch)
    return skeleton.eval()


"""What keeps :func:`decomp.decompose` from handing back a broken model or losing a user's setting.

* before any work: a model on ``meta`` (ranks need weight values), ``overrides`` keys that match
  no layer (a typo would leave a layer unprotected), an ``input_shape`` the first layers cannot take;
* before a layer is replaced: a parent whose code reads ``self.<child>.weight`` (or ``.bias``)
  directly, as Swin's attention does with ``self.qkv.weight``: an ``nn.Sequential`` has neither;
* after: one forward pass of the new model at ``input_shape``, compared with the original's output
  shapes (:class:`ForwardCheck`), so that a replacement which still breaks its parent is put back;
* every replacement keeps the replaced layer's training flag and ``requires_grad``.

The functions here take modules and names; :mod:`decomp.model` decides what to do with the answers.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import functools
import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .measure import meta_clone

__all__ = ["check_not_meta", "check_overrides", "expected_input", "parent_reads", "inherit_settings_",
           "output_shapes", "first_line", "why_broken", "ForwardCheck"]


# --- before any work -------------------------------------------------------------------------------


def check_not_meta(model: nn.Module) -> None:
    """Refuse a model whose weights live on ``meta``: they have shapes but no values."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device.type == "meta":
            raise ValueError(
                f"model has tensors on the 'meta' device (first: {name!r}); decompose needs the weight values "
                "(ranks and factors are computed from them). Allowed: a model with real weights, e.g. "
                "model.to_empty(device='cpu') then model.load_state_dict(...). For the decomposed architecture "
                "alone, with no values, use build_decomposed(model, report).")


def check_overrides(overrides: Mapping[str, Any], layers: list[str], aliases: Mapping[str, str]) -> None:
    """Every key must be a layer name (``layers``: the names the report uses) or an ``fnmatch``
    pattern matching one; ``aliases`` maps the other names of shared layers to their first name."""
    for key in overrides:
        if not isinstance(key, str):
            raise TypeError(f"overrides keys must be layer names or fnmatch patterns (str); got {key!r}.")
        if key in layers or any(fnmatch.fnmatchcase(name, key) for name in layers):
            continue
        if key in aliases:
            raise ValueError(f"overrides key {key!r} is a second name of the shared layer {aliases[key]!r}; "
                             f"decompose treats the layer once, under its first name: use {aliases[key]!r}.")
        close = difflib.get_close_matches(key, layers, n=3, cutoff=0.5)
        hint = f"; closest layer names: {', '.join(map(repr, close))}" if close else ""
        shown = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
        raise ValueError(f"overrides key {key!r} matches no Conv2d or Linear layer of the model{hint} "
                         f"(allowed: a layer name or fnmatch pattern among {shown or 'none'}).")


def expected_input(module: nn.Module, shape: tuple) -> str | None:
    """What a Conv2d / Linear expects of an input of ``shape`` that it cannot take, or None if it fits."""
    if type(module) is nn.Conv2d and (len(shape) not in (3, 4) or shape[-3] != module.in_channels):
        return f"{module.in_channels} channels in dim -3 of a 3-D or 4-D input"
    if type(module) is nn.Linear and (not shape or shape[-1] != module.in_features):
        return f"{module.in_features} features in the last dim"
    return None


# --- before a layer is replaced --------------------------------------------------------------------

_DIRECT_READ = re.compile(r"\bself\.(\w+)\.(weight|bias)\b")


@functools.lru_cache(maxsize=None)
def _direct_reads(cls: type) -> tuple[tuple[str, str], ...]:
    """``(child, attribute)`` pairs that the methods of ``cls`` (and its bases below ``nn.Module``)
    read as ``self.<child>.weight`` / ``.bias`` at run time (torch's own ``TransformerEncoderLayer``
    does, for its fast path). Initialisers are left out: setting a weight at construction
    (``nn.init.zeros_(self.head.weight)``) does not run again."""
    found: list[tuple[str, str]] = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for attr, value in vars(klass).items():
            if not inspect.isfunction(value) or "init" in attr or attr.startswith("reset"):
                continue
            try:
                source = inspect.getsource(value)
            except (OSError, TypeError):  # no source (built in, or compiled): the forward check remains
                continue
            found.extend(m.groups() for m in _DIRECT_READ.finditer(source))
    return tuple(dict.fromkeys(found))


def parent_reads(root: nn.Module) -> dict[int, str]:
    """``id(layer) -> reason`` for each Conv2d / Linear whose parent's code reads its weight or bias
    directly, so that replacing it by an ``nn.Sequential`` would break the parent's forward."""
    reasons: dict[int, str] = {}
    for _, parent in root.named_modules(remove_duplicate=False):
        for child, attr in _direct_reads(type(parent)):
            module = parent._modules.get(child)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                reasons.setdefault(id(module), f"parent reads .{attr} directly ({type(parent).__name__} uses "
                                               f"self.{child}.{attr}, which a decomposed layer does not have)")
    return reasons


def inherit_settings_(layer: nn.Module, new_layer: nn.Module) -> nn.Module:
    """``new_layer`` takes ``layer``'s training flag and ``requires_grad``: every factor of the
    weight that of the weight, the bias that of the bias (a frozen layer stays frozen)."""
    new_layer.train(layer.training)
    weight_flag = layer.weight.requires_grad
    bias = getattr(layer, "bias", None)
    bias_flag = bias.requires_grad if bias is not None else weight_flag
    for name, p in new_layer.named_parameters():
        p.requires_grad_(bias_flag if name.rpartition(".")[2] == "bias" else weight_flag)
    return new_layer


# --- after: the forward check ----------------------------------------------------------------------


def output_shapes(output: Any) -> Any:
    """The shapes in a model's output (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, Mapping):
        return {k: output_shapes(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return [output_shapes(v) for v in output]
    return type(output).__name__


@contextlib.contextmanager
def _eval(model: nn.Module):
    """Eval mode (batch-norm statistics untouched) and no autograd; training flags restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for a one-line reason."""
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def why_broken(error: BaseException) -> str:
    """A report reason for a replacement that makes the model fail with ``error``."""
    if isinstance(error, AttributeError) and re.search(r"has no attribute '(weight|bias)'", str(error)):
        return f"parent reads .weight directly (the model fails with it replaced: {first_line(error)})"
    return f"the model fails with it replaced: {type(error).__name__}: {first_line(error)}"


class ForwardCheck:
    """One forward pass at ``input_shape`` on ``meta`` stand-ins (no arithmetic), or for real on
    zeros in eval mode where the original model has an op without a meta kernel; ``failure(m)``
    says why ``m`` does not run like the original (``None`` when its outputs have the same shapes)."""

    def __init__(self, original: nn.Module, input_shape: tuple[int, ...]):
        self.original, self.input_shape = original, tuple(input_shape)
        p = next(iter(original.parameters()), None)
        self.dtype = p.dtype if p is not None else torch.float32
        self.device = p.device if p is not None else torch.device("cpu")
        self.meta = True
        try:
            self.expected = self._run(original)
        except Exception:
            self.meta = False
            self.expected = self._run(original)

    def _run(self, model: nn.Module) -> Any:
        if self.meta:
            with torch.no_grad():
                return output_shapes(meta_clone(model)(torch.empty(self.input_shape, dtype=self.dtype, device="meta")))
        with _eval(model):
            return output_shapes(model(torch.zeros(self.input_shape, dtype=self.dtype, device=self.device)))

    def failure(self, model: nn.Module) -> str | None:
        try:
            got = self._run(model)
        except Exception as e:
            return why_broken(e)
        if got != self.expected:
            return f"the model's output shapes change with it replaced: {got} instead of {self.expected}"
        return None

    def original_with(self, swaps: Iterable[tuple[Iterable[str], nn.Module]], set_module) -> nn.Module:
        """A copy of the original model (on ``meta`` when the check runs there) with, for each
        ``(names, module)`` of ``swaps``, one copy of ``module`` put in under each of ``names``
        (``set_module(root, name, module)`` returns the root). For a real run, a module on ``meta``
        (a stand-in architecture) is materialised with zeros."""
        root = meta_clone(self.original) if self.meta else copy.deepcopy(self.original)
        for names, module in swaps:
            module = meta_clone(module) if self.meta else _real(module, self.device)
            for name in names:
                root = set_module(root, name, module)
        return root


def _real(module: nn.Module, device: torch.device) -> nn.Module:
    module = copy.deepcopy(module)
    if any(p.device.type == "meta" for p in module.parameters()):
        module.to_empty(device=device)
        with torch.no_grad():
            for p in module.parameters():
                p.zero_()
    return module

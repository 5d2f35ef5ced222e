"""The model of ``decomp decompose``: built from ``--model``, given ``--weights``, checked against
``--calibration``, ``--input-shape`` and ``--override``, all before any factor is computed.

Every function raises ``ValueError`` with a one-line message that says what is wrong and what
is allowed; the caller turns it into ``parser.error`` for the argument concerned.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
import importlib
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from decomp.calibration import Calibration, as_calibration
from decomp.measure import meta_clone

MODEL_ALLOWED = "torchvision:NAME (a torchvision classification model, random init) or module:callable"
CALIBRATION_ALLOWED = ("a floating tensor of model inputs (N,C,H,W) saved with torch.save, or a dict with one "
                       "under 'inputs' or 'images'")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def load_model(spec: str) -> nn.Module:
    """``torchvision:NAME`` or ``module:callable`` (called with no arguments) -> an ``nn.Module``."""
    source, sep, name = (s.strip() for s in spec.partition(":"))
    if not sep or not source or not name:
        raise ValueError(f"{spec} is not allowed; allowed: {MODEL_ALLOWED}")
    model = _torchvision_model(name) if source == "torchvision" else _call_factory(source, name)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module; allowed: {MODEL_ALLOWED}")
    return model


def _torchvision_model(name: str) -> nn.Module:
    from torchvision import models

    # Classification builders only: detection and segmentation builders download a backbone
    # even with weights=None.
    names = models.list_models(module=models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"torchvision:{name} is not a torchvision classification model{hint}; "
                         f"allowed: torchvision:NAME with NAME in torchvision.models.list_models(module=torchvision.models)")
    return models.get_model(name, weights=None)  # random init: nothing is downloaded


def _call_factory(module_name: str, attribute: str) -> nn.Module:
    # A console script does not put the working directory on sys.path (python -m does): add it,
    # so `--model mymodels:net` finds ./mymodels.py either way.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while it loads
        raise ValueError(f"{module_name}:{attribute}: cannot import {module_name} "
                         f"({type(e).__name__}: {_one_line(e)}); allowed: {MODEL_ALLOWED}") from None
    try:
        factory = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ValueError(f"{module_name}:{attribute}: {module_name} has no {attribute}; "
                         f"allowed: {MODEL_ALLOWED}") from None
    if not callable(factory):
        raise ValueError(f"{module_name}:{attribute} is a {type(factory).__name__}, not callable; "
                         f"allowed: {MODEL_ALLOWED}")
    try:
        return factory()
    except Exception as e:
        raise ValueError(f"{module_name}:{attribute}() failed ({type(e).__name__}: {_one_line(e)}); "
                         f"allowed: a callable that takes no arguments and returns the nn.Module") from None


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A state_dict saved with ``torch.save``, or a checkpoint dict holding one under ``"model"``
    or ``"state_dict"``; read with ``weights_only=True`` (no pickled code is run)."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file; allowed: a state_dict saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} cannot be read by torch.load(weights_only=True) ({type(e).__name__}: "
                         f"{_one_line(e)[:200]}); allowed: a state_dict saved with torch.save") from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict; allowed: a dict of "
                         f"tensors, or a dict with one under 'model' or 'state_dict'")
    return obj


def read_calibration(path: Path) -> torch.Tensor:
    """Model inputs saved with ``torch.save``: a tensor, or a dict with one under ``"inputs"`` or
    ``"images"``; read with ``weights_only=True``. It must be floating point (images as the model
    takes them, normalised); its shape is checked against the model by :func:`check_calibration`."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file; allowed: {CALIBRATION_ALLOWED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} cannot be read by torch.load(weights_only=True) ({type(e).__name__}: "
                         f"{_one_line(e)[:200]}); allowed: {CALIBRATION_ALLOWED}") from None
    what = f"a {type(obj).__name__}, not a tensor"
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in ("inputs", "images") if isinstance(obj.get(k), torch.Tensor)), None)
        what = "a dict without an 'inputs' or 'images' tensor"
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds {what}; allowed: {CALIBRATION_ALLOWED}")
    if not obj.is_floating_point():
        raise ValueError(f"{path} holds a {obj.dtype} tensor of shape {tuple(obj.shape)}; allowed: a floating "
                         "tensor (images converted to float and normalised as the model expects)")
    if obj.ndim < 2:
        raise ValueError(f"{path} holds a tensor of shape {tuple(obj.shape)}; allowed: a batch of inputs, "
                         "batch first (N,C,H,W)")
    return obj


def check_calibration(model: nn.Module, inputs: torch.Tensor, input_shape: tuple[int, ...] | None,
                      path: Path) -> Calibration:
    """``inputs`` in the model's dtype, checked by the library (:func:`decomp.calibration.as_calibration`):
    non-empty, and one sample of ``input_shape``'s shape when that is given."""
    dtype = next((p.dtype for p in model.parameters()), inputs.dtype)
    inputs = inputs.to(dtype) if inputs.dtype != dtype and dtype.is_floating_point else inputs
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape[1:]):
        raise ValueError(f"{path} holds inputs of shape {tuple(inputs.shape[1:])} per sample, --input-shape "
                         f"{','.join(map(str, input_shape))} has {tuple(input_shape[1:])}; allowed: the same "
                         "shape per sample, or no --input-shape (then it is one sample of the calibration)")
    try:
        return as_calibration(inputs, model, input_shape)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} (shape {tuple(inputs.shape)}): {_one_line(e)}; "
                         f"allowed: {CALIBRATION_ALLOWED}") from None


def _some(names: Iterable[str], n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_weights_(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    """Load ``state_dict`` into ``model``, or say in one line which keys or shapes do not fit."""
    expected = model.state_dict()
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    shapes = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    problems = [f"{what}: {_some(sorted(keys))}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
    if problems:
        raise ValueError(f"{path} does not fit the model ({'; '.join(problems)}); allowed: the model's own "
                         "state_dict (model.state_dict() saved with torch.save)")
    model.load_state_dict(state_dict)
    return model


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of the layers ``decompose`` reports on (every conv and Linear)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def check_overrides(model: nn.Module, names: Iterable[str]) -> None:
    """Every override name or pattern must match a layer: a typo would otherwise do nothing."""
    layers = candidate_layers(model)
    for name in names:
        if not any(fnmatch.fnmatchcase(layer, name) for layer in layers):
            close = difflib.get_close_matches(name, layers, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{name} matches no Conv2d or Linear layer of the model{hint}; "
                             f"allowed: a layer name or fnmatch pattern among {_some(layers, 12)}")


def _forward_error(model: nn.Module, x: torch.Tensor) -> Exception | None:
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:
        return e
    return None


def check_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One forward pass at ``shape``: on ``meta`` stand-ins (no arithmetic), or for real on zeros
    in eval mode on a copy where an op has no meta kernel. A shape the model cannot take fails here."""
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    if _forward_error(meta_clone(model), torch.empty(shape, dtype=dtype, device="meta")) is None:
        return
    error = _forward_error(copy.deepcopy(model).eval(), torch.zeros(shape, dtype=dtype))
    if error is not None:
        raise ValueError(f"{','.join(map(str, shape))} does not fit the model ({type(error).__name__}: "
                         f"{_one_line(error)[:200]}); allowed: the shape of one input batch, e.g. 1,3,224,224")

"""Argument values of ``decomp decompose``, parsed from their strings by argparse ``type=`` functions.

Each parser returns a :class:`Given` (the text as typed, kept for ``plan.json``, and its value)
or raises ``argparse.ArgumentTypeError``, which argparse turns into one line naming the
argument, with exit code 2. The values are checked by the library's own checks
(:func:`decomp.rank.as_policy`, the method table of :func:`decomp.decompose`), so the CLI
admits exactly what the library does.
"""

from __future__ import annotations

import argparse
import fractions
import math
from typing import Any, NamedTuple

from decomp.budget import parse_budget as _parse_budget
from decomp.model import METHOD_PRESETS, _method_table
from decomp.rank import VBMF, Energy, as_policy

RANK_ALLOWED = ("an int >= 1 (64), a Tucker-2 pair R_IN,R_OUT (32,48), a fraction in (0, 1] (1/3 or 0.25), "
                "vbmf, vbmf:F with F in [0, 1] (weakened toward the full rank), energy:E with E in (0, 1]")
BUDGET_ALLOWED = ("macs:X (X times fewer MACs), latency:X (X times faster, timed at --input-shape on the CPU "
                  "at --budget-threads threads, NCHW) or latency-cl:X (the same, original and decomposed model "
                  "both timed channels_last), X a number > 1 (macs:4, latency:2)")
METHOD_ALLOWED = (f"a preset ({', '.join(sorted(METHOD_PRESETS))}) or KIND=METHOD,... with KIND conv, "
                  "conv1x1 or linear and METHOD tucker2, cp, svd or none (e.g. conv=tucker2,linear=svd)")


class Given(NamedTuple):
    text: str   # as typed on the command line
    value: Any  # what the library is given


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _rank_value(text: str):
    word, _, arg = text.lower().partition(":")
    if word == "vbmf":
        return VBMF(factor=float(arg)) if arg else "vbmf"
    if word == "energy":
        return Energy(float(arg))
    if "," in text:
        return tuple(int(r) for r in text.split(","))
    if "/" in text:
        return float(fractions.Fraction(text))
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_rank(text: str) -> Given:
    """``64``, ``32,48``, ``1/3``, ``0.25``, ``vbmf``, ``vbmf:0.5``, ``energy:0.9``."""
    try:
        return Given(text, as_policy(_rank_value(text.strip())))
    except (ValueError, TypeError, ZeroDivisionError) as e:
        reason = "division by zero" if isinstance(e, ZeroDivisionError) else _one_line(e)
        raise argparse.ArgumentTypeError(f"{text} is not allowed ({reason}); allowed: {RANK_ALLOWED}") from None


def parse_budget(text: str) -> Given:
    """``macs:4``, ``latency:2``: :func:`decomp.budget.parse_budget`."""
    try:
        return Given(text, _parse_budget(text.strip()))
    except ValueError as e:
        reason = _one_line(e).rstrip(".")
        raise argparse.ArgumentTypeError(f"{text} is not allowed ({reason}); allowed: {BUDGET_ALLOWED}") from None


def parse_override(text: str) -> tuple[str, Given]:
    """``NAME=RANK``: NAME a layer name or an fnmatch pattern, RANK as for --rank or ``none``."""
    name, sep, rank = text.partition("=")
    if not sep or not name.strip() or not rank.strip():
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed; allowed: NAME=RANK, NAME a layer name or fnmatch pattern "
            f"(features.0, classifier.*), RANK none (leave the layer as it is) or {RANK_ALLOWED}")
    if rank.strip().lower() == "none":
        return name.strip(), Given(rank, None)
    return name.strip(), parse_rank(rank)


def parse_method(text: str) -> Given:
    """A preset (``tucker2``, ``cp``, ``svd``) or ``KIND=METHOD,...`` (``conv=tucker2,linear=svd``)."""
    spec: str | dict[str, str | None] = text.strip()
    if "=" in text:
        spec = {}
        for item in text.split(","):
            kind, sep, method = (s.strip() for s in item.partition("="))
            if not sep or not kind or not method or kind in spec:
                what = f"{kind} is given twice" if kind in spec else f"item {item!r} is not KIND=METHOD"
                raise argparse.ArgumentTypeError(f"{text} is not allowed ({what}); allowed: {METHOD_ALLOWED}")
            spec[kind] = None if method.lower() == "none" else method
    try:
        _method_table(spec)  # decompose's own check of methods per kind
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"{text} is not allowed ({_one_line(e)}); allowed: {METHOD_ALLOWED}") from None
    return Given(text, spec)


def parse_input_shape(text: str) -> Given:
    """``1,3,224,224``: the input of one forward pass, batch first."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed; allowed: two or more comma-separated ints >= 1, batch first (1,3,224,224)")
    return Given(text, shape)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not allowed; allowed: a number > 0 (1.1)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; allowed: an int >= 1 (16)")
    return value

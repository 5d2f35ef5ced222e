"""The reproduction's argument errors found after parsing, in a module of their own so that the
modules that check ``--control-from`` and ``--ranks-from`` raise them without importing the
command (:mod:`decomp.experiments.cifar10`), which imports them."""

from __future__ import annotations

__all__ = ["UsageError", "argument_error"]


class UsageError(ValueError):
    """A bad argument found after parsing (``--variants``, ``--data``): ``main`` turns it into the
    parser's one-line error, exit code 2. The message starts with ``argument --NAME:``."""


def argument_error(argument: str, msg: str) -> UsageError:
    """``UsageError("argument --NAME: msg")``."""
    return UsageError(f"argument {argument}: {msg}")

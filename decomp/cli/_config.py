"""Command lines from dataclass configs: one ``--flag`` per field, defaults in one place.

The scripts keep their settings in a dataclass at the top (a unit in each field's comment);
these helpers turn it into an ``argparse`` parser and back, so defaults are never repeated.
:class:`ArgumentParser` is the parser of every ``decomp`` command: its errors are one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> argparse.ArgumentParser:
    """``--field-name`` for every field of ``config_cls``: booleans as ``--x/--no-x``, tuples as
    several values of their first element's type, the rest typed by their default."""
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            kind = type(default[0]) if default else str
            parser.add_argument(flag, nargs="*", type=kind, default=list(default))
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser


def config_values(namespace: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The parsed values of ``config_cls``'s fields, lists turned back into tuples."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(config_cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``PROG: error: argument --x: ...``,
    exit code 2, without the usage block (``--help`` has it). Subparsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def output_problem(path, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written (as a file, or as a folder with ``folder``), or None: checked
    before any work, so that a run never ends minutes later on a bad output path."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        return f"{path} is {'a file' if folder else 'a folder'}; allowed: {'a folder' if folder else 'a file path'}"
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} is under {parent}, which is a file; allowed: a path in a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be written: {parent} is not writable"
    return None


def check_output(parser: argparse.ArgumentParser, flag: str, path, folder: bool = False) -> None:
    """``parser.error`` naming ``flag`` when :func:`output_problem` finds one."""
    problem = output_problem(path, folder)
    if problem is not None:
        parser.error(f"argument {flag}: {problem}")

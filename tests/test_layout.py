"""The package's import graph: the library (every module directly under decomp/) never imports the
experiment harness (decomp.experiments) or the command line (decomp.cli); they import it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "decomp"
FORBIDDEN = ("decomp.experiments", "decomp.cli")


def imported_names(source: str, package: str = "decomp") -> set[str]:
    """Absolute names of every import in ``source`` (a module of ``package``), nested ones included;
    ``from X import Y`` gives both ``X`` and ``X.Y``, since Y may be a submodule."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


# __main__.py is `python -m decomp`, the command line itself: the one module here that imports decomp.cli.
LIBRARY = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__main__.py")


def test_the_library_modules_are_found():
    assert {"__init__.py", "model.py", "rank.py", "report.py", "measure.py"} <= {p.name for p in LIBRARY}


def test_python_m_decomp_is_the_command_line():
    assert "decomp.cli" in imported_names((PACKAGE / "__main__.py").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_library_module_imports_neither_harness_nor_cli(path):
    assert forbidden(imported_names(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize("source", [
    "import decomp.experiments.train",
    "from decomp.experiments import runinfo",
    "from decomp import cli",
    "from . import experiments",
    "from .cli import main",
    "from .experiments.catalog import cases",
    "def f():\n    from .cli._config import add_config_arguments\n",
])
def test_the_check_catches_every_import_form(source):
    assert forbidden(imported_names(source)) != []


@pytest.mark.parametrize("source", ["from . import model", "from .measure import count_macs",
                                    "import decomp.rank", "from decomp import experimental_flags"])
def test_the_check_lets_library_imports_through(source):
    assert forbidden(imported_names(source)) == []

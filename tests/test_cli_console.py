"""The real entry points: the ``decomp`` console script and ``python -m decomp``, in subprocesses."""

import os
import re
import subprocess
import sys
from pathlib import Path

from _cli_helpers import INPUT_SHAPE, TINY, run_cli

import decomp

TESTS = Path(__file__).resolve().parent
# The console script sits beside the interpreter of the environment it was installed into.
CONSOLE_SCRIPT = Path(sys.executable).parent / "decomp"
# torch's own log lines (e.g. "W1201 22:35:10.505000 5336 torch/utils/cpp_extension.py:183] No CUDA
# runtime is found") are the environment's, not the command's.
TORCH_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")


def run(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    err = [line for line in done.stderr.splitlines() if not TORCH_LOG.match(line)]
    return done.returncode, done.stdout, err


def test_console_script_decomposes_and_reports(tmp_path):
    assert CONSOLE_SCRIPT.is_file(), f"no {CONSOLE_SCRIPT}: install the package (pip install -e .)"
    code, stdout, err = run(CONSOLE_SCRIPT, "decompose", "--model", TINY, "--method", "tucker2", "--rank", "1/3",
                            "--input-shape", INPUT_SHAPE, "--out", "out", "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert "layers decomposed" in stdout
    code, stdout, err = run(CONSOLE_SCRIPT, "report", "out", cwd=tmp_path)
    assert code == 0 and stdout == (tmp_path / "out" / "report.md").read_text()


def test_python_m_decomp_bad_rank_is_one_line_exit_2(tmp_path):
    code, stdout, err = run(sys.executable, "-m", "decomp", "decompose", "--model", "torchvision:alexnet",
                            "--method", "tucker2", "--rank", "7/3", "--out", "out", cwd=tmp_path)
    assert code == 2 and stdout == ""
    assert len(err) == 1 and err[0].startswith("decomp decompose: error: argument --rank: 7/3 "), err
    assert list(tmp_path.iterdir()) == []


def test_sweep_script_keeps_its_command(tmp_path):
    script = TESTS.parent / "scripts" / "sweep_layers.py"
    code, stdout, err = run(sys.executable, script, "--models", "resnet50", cwd=tmp_path)
    assert code == 2 and err == ["python scripts/sweep_layers.py: error: argument --models: resnet50: "
                                 "allowed: one or more of vgg16 alexnet"]


def test_top_level_help_version_and_no_command(capsys):
    code, stdout, _ = run_cli(capsys, "--help")
    assert code == 0 and all(name in stdout for name in ("decompose", "report", "bench", "reproduce"))
    code, stdout, _ = run_cli(capsys, "--version")
    assert code == 0 and stdout.strip() == f"decomp {decomp.__version__}"
    code, _, err = run_cli(capsys)
    assert code == 2 and err.strip().splitlines() == ["decomp: error: the following arguments are required: COMMAND"]

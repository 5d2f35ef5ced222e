"""scripts/retime_cifar10.py: a committed run's architectures rebuilt from layers.csv and re-timed."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from decomp.experiments import retime as RT

SMOKE = Path(__file__).resolve().parents[1] / "results" / "cifar10" / "smoke"


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "smoke"
    out.mkdir()
    for name in ("summary.csv", "summary.csv.json", "layers.csv"):
        shutil.copy(SMOKE / name, out / name)
    return out


def test_retime_rebuilds_every_variant_as_run_and_writes_both_layouts(run, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr("sys.argv", ["retime_cifar10.py", str(run)])
    assert RT.main([str(run), "--rounds", "1", "--min-run-s", "0.01"]) == 0
    tag = RT.cpu_tag()
    rows = list(csv.DictReader((run / "retime" / f"{tag}.csv").open()))
    summary = {(r["model"], r["variant"]): r for r in csv.DictReader((run / "summary.csv").open())}
    variants = [k for k in summary if k[1] != "baseline"]
    assert [(r["model"], r["variant"]) for r in rows] == variants
    for r in rows:  # the rebuilt architecture is the one the run measured: same MAC reduction
        assert float(r["macs_x"]) == pytest.approx(float(summary[r["model"], r["variant"]]["macs_x"]), rel=1e-6)
        assert float(r["cpu_b1_speedup"]) > 0 and float(r["cpu_b1_cl_speedup"]) > 0
        assert float(r["baseline_ms"]) > 0 and float(r["baseline_cl_ms"]) > 0
    meta = json.loads((run / "retime" / f"{tag}.csv.json").read_text())
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and meta["run"] == str(run)
    assert "channels_last" in (run / "retime" / f"{tag}.md").read_text()


def test_retime_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        RT.main([str(tmp_path)])
    assert e.value.code == 2 and "summary.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        RT.main([str(SMOKE), "--rounds", "0"])
    assert "allowed: an int >= 1" in capsys.readouterr().err


def test_cpu_tag_is_a_plain_file_name():
    assert RT.cpu_tag({"cpu": "AMD EPYC 9R14 (Genoa)", "cpu_capability": "AVX512"}) == "amd-epyc-9r14-genoa-avx512"
    # a vague name gets the family and model: two generations behind "AMD EPYC" keep apart files
    ident = {"family": 23, "model": 1}
    assert RT.cpu_tag({"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cpu_identity": ident}) == "amd-epyc-f23m1-avx2"
    assert RT.cpu_tag({"cpu": "AMD EPYC 7R13", "cpu_capability": "AVX2", "cpu_identity": ident}) == "amd-epyc-7r13-avx2"
    assert RT.cpu_tag({"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cpu_identity": None}) == "amd-epyc-avx2"

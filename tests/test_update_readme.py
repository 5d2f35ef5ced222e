"""scripts/update_readme.py: the README's results are quoted from results/, and kept current."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def U():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_readme_quotes_the_committed_results(U):
    # a result committed without `python scripts/update_readme.py` leaves the README stale
    assert U.main(["--check"]) == 0, "README.md is out of date: run python scripts/update_readme.py"


def test_speed_labels_name_the_layout(U):
    assert U._speed_label("cpu_b256_speedup") == "CPU b256"
    assert U._speed_label("gpu_b1_speedup") == "GPU b1"
    assert U._speed_label("cpu_b1_cl_speedup") == "CPU b1 channels_last"


def test_retime_lines_quote_each_cpu_with_its_sidecar(U, tmp_path, monkeypatch):
    monkeypatch.setattr(U, "ROOT", tmp_path)
    run = tmp_path / "results" / "cifar10" / "r"
    assert U.retime_lines(run) == []  # never re-timed: nothing to say
    (run / "retime").mkdir(parents=True)
    (run / "retime" / "cpu-a.csv").write_text(
        "model,variant,cpu_b1_speedup_as_run,cpu_b1_speedup,cpu_b1_cl_speedup\n"
        "m,v@latency-x3,3.9,3.01,2.63\n")
    (run / "retime" / "cpu-a.csv.json").write_text(json.dumps(
        {"cpu": "Some CPU", "cpu_count": 2, "cpu_capability": "AVX2", "command": "python scripts/retime_cifar10.py r"}))
    [line, blank] = U.retime_lines(run)
    assert blank == "" and "Some CPU (2 cores, AVX2" in line and "results/cifar10/r/retime/cpu-a.md" in line
    assert "v@latency-x3 x3.01 NCHW, x2.63 channels_last (x3.90 as run)" in line


def test_distillation_is_named_where_it_was_used(U):
    assert U._distilled({"finetune_distill": "0.5"}) == ", distilled from the baseline (alpha 0.5)"
    assert U._distilled({"finetune_distill": "0.0"}) == U._distilled({}) == U._distilled({"finetune_distill": ""}) == ""


def test_the_machine_line_gives_family_and_clock_where_the_sidecar_has_them(U):
    side = {"cpu": "AMD EPYC", "cpu_count": 2, "cpu_capability": "AVX2"}
    assert U._timed_on(side) == "AMD EPYC (2 cores, AVX2, timed at 1 thread)"  # sidecars from before
    side["cpu_identity"] = {"family": 23, "model": 1, "mhz": 1996}
    assert U._timed_on(side) == "AMD EPYC (2 cores, AVX2, family 23 model 1, 1996 MHz, timed at 1 thread)"


def test_a_run_with_ranks_from_says_where_its_architecture_was_timed(U, tmp_path, monkeypatch):
    monkeypatch.setattr(U, "ROOT", tmp_path)
    src = tmp_path / "results" / "cifar10" / "src"
    (src / "retime").mkdir(parents=True)
    (src / "summary.csv").write_text("model,variant,macs_x,cpu_b1_speedup\nm,baseline,1,\nm,f@latency-x3,3.6,3.9\n")
    (src / "summary.csv.json").write_text(json.dumps({"cpu": "Fast CPU", "cpu_count": 2}))
    (src / "retime" / "slow.csv").write_text("model,variant,cpu_b1_speedup\nm,f@latency-x3,2.4\n")
    (src / "retime" / "slow.csv.json").write_text(json.dumps({"cpu": "Slow CPU", "cpu_count": 2}))
    assert U.ranks_source_lines("python scripts/reproduce_cifar10.py --profile x") == []
    [line, blank] = U.ranks_source_lines("python s.py --ranks-from results/cifar10/src:f@latency-x3 --out o")
    assert "`f@latency-x3` of [`results/cifar10/src`]" in line and "(MACs x3.60)" in line
    assert "x3.90 in its run on Fast CPU" in line and "x2.40 re-timed on Slow CPU" in line
    assert U.ranks_source_lines("python s.py --ranks-from results/cifar10/src:f@nope") == []


def test_sensitivity_lines_sum_each_fit_and_pair_the_refined_layers(U, tmp_path, monkeypatch):
    monkeypatch.setattr(U, "ROOT", tmp_path)
    assert U.sensitivity_lines() == []
    out = tmp_path / "results" / "calibration"
    out.mkdir(parents=True)
    (out / "layer_sensitivity.csv").write_text(
        "layer,fit,refine_steps,delta_points\na,data-free,0,-20\nb,data-free,0,-1.5\na,data-aware,0,-1.25\n"
        "b,data-aware,0,-0.25\na,data-aware+logits,300,-1.0\n")
    (out / "layer_sensitivity.csv.json").write_text(json.dumps({"rank": 1 / 3, "command": "python s.py",
                                                                 "cpu": "Some CPU", "cpu_count": 2,
                                                                 "git_sha": "abcdef123"}))
    lines = U.sensitivity_lines()
    assert lines[0].startswith("Each layer alone at rank 1/3 ")
    assert "- data-free: 2 layers, sum of the one-layer drops **-21.50**, most -20.00 (a)" in lines
    assert "- data-aware: 2 layers, sum of the one-layer drops **-1.50**, most -1.25 (a)" in lines
    assert any("the 1 layers that lose most" in x and "(300 Adam steps" in x and x.endswith("a -1.25 -> -1.00")
               for x in lines)
    assert "git abcdef1" in lines[-2]


def test_frontier_lines_pick_the_closest_to_control_at_each_speed(U, tmp_path, monkeypatch):
    monkeypatch.setattr(U, "ROOT", tmp_path)
    monkeypatch.setattr(U, "ACCURACY_RUNS", ("a", "b"))
    assert U.frontier_lines() == []
    for run, rows, control in (("a", "m,v1,0.88,-0.5,2.1\nm,v2,0.86,-2.5,3.5\n", "0.885"),
                               ("b", "m,v3,0.875,-1.0,3.1\nm,v4,0.89,0.5,1.9\n", "0.884")):
        d = tmp_path / "results" / "cifar10" / run
        d.mkdir(parents=True)
        (d / "summary.csv").write_text("model,variant,top1_after,delta_points,cpu_b1_speedup\nm,baseline,0.88,0,\n" + rows)
        (d / "summary.csv.json").write_text(json.dumps({"cpu": f"CPU {run}", "cpu_count": 2}))
        (d / "control.csv").write_text(f"model,top1_after\nm,{control}\n")
    head, _, x2, x3, _ = U.frontier_lines()
    assert head.startswith("Best reached")
    assert "**>= x2**" in x2 and "`a` v1 (m)" in x2 and "**-0.50 points against the control**" in x2
    assert "**x2.10** timed in its run on CPU a" in x2  # v4 is closer to its control but not x2 fast
    assert "**>= x3**" in x3 and "`b` v3" in x3 and "-0.90 points" in x3 and "-1.00 against the baseline" in x3


def test_before_lines_quote_each_variant_raw_and_recalibrated(U, tmp_path, monkeypatch):
    monkeypatch.setattr(U, "ROOT", tmp_path)
    monkeypatch.setattr(U, "BEFORE_RUNS", ("w1",))
    assert U.before_lines() == []
    d = tmp_path / "results" / "cifar10" / "w1"
    d.mkdir(parents=True)
    (d / "before.csv").write_text(
        "model,variant,fit,top1_base,top1_before_raw,top1_before,delta_raw_points,delta_recal_points,macs_x,cpu_b1_speedup\n"
        "m,t@1-3,data-free,0.9,0.8,0.85,-10,-5,3.1,2.2\nm,t@aware-1-3,data-aware,0.9,0.89,0.895,-1,-0.5,3.1,2.25\n")
    (d / "before.csv.json").write_text(json.dumps({"cpu": "Some CPU", "cpu_count": 2, "command": "python r.py",
                                                   "profile": {"bn_batches": 40, "calibration_images": 8192}}))
    lines = U.before_lines()
    assert lines[0].startswith("**Before fine-tuning, `w1`**") and "m baseline 90.00%" in lines[0]
    assert "(40 batches)" in lines[0] and "`python r.py`" in lines[0] and "on 8192 calibration images" in lines[0]
    assert "| t@aware-1-3 | data-aware | 89.00% | **-1.00** | 89.50% | -0.50 | x3.10 | x2.25 |" in lines
    assert lines[-1] == ""


def test_accuracy_at_speed_lines_quote_batch_256_beside_batch_1(U, tmp_path, monkeypatch):
    # a latency budget is met at batch 1; the table must also show what it gives at batch 256
    monkeypatch.setattr(U, "ROOT", tmp_path)
    monkeypatch.setattr(U, "ACCURACY_RUNS", ("a",))
    d = tmp_path / "results" / "cifar10" / "a"
    d.mkdir(parents=True)
    (d / "summary.csv").write_text(
        "model,variant,fit,top1_before_raw,top1_before,top1_after,delta_points,finetune_epochs,macs_x,"
        "cpu_b1_speedup,cpu_b256_speedup\n"
        "m,baseline,,0.9,0.9,0.9,0,,1,,\n"
        "m,v@latency-x2,data-aware,0.89,0.89,0.895,-0.5,2,1.3,2.1,1.06\n"
        "m,v@1-3,data-free,0.8,0.85,0.88,-2,2,4.5,2.7,\n")
    (d / "summary.csv.json").write_text(json.dumps({"cpu": "CPU a", "cpu_count": 2, "command": "python r.py"}))
    (d / "control.csv").write_text("model,top1_after,finetune_epochs\nm,0.905,2\n")
    lines = U.accuracy_at_speed_lines()
    header = next(x for x in lines if x.startswith("| variant |"))
    assert header.endswith("| CPU b1 speed-up | CPU b256 speed-up |")
    assert "| v@latency-x2 | data-aware | 89.00% | 89.00% | 89.50% | -0.50 | -1.00 | x1.30 | **x2.10** | x1.06 |" in lines
    assert "| v@1-3 | data-free | 80.00% | 85.00% | 88.00% | -2.00 | -2.50 | x4.50 | **x2.70** |  |" in lines

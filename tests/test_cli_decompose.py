"""``decomp decompose``: the three files, the rebuilt model, the weights it keeps, atomic output."""

import json

import pytest
import torch
import torchvision
from _cli_helpers import INPUT_SHAPE, TINY, run_cli, tiny_net

import decomp
import decomp.cli.decompose as cli_decompose


def save_weights(path, seed=1):
    """A state_dict of tiny_net unlike its init (other weights, BatchNorm statistics moved)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in tiny_net().state_dict().items()}
    state["1.running_var"] = state["1.running_var"].abs() + 0.5
    torch.save(state, path)
    return state


def rebuild(model, out):
    """What a user does with --out: the architecture from plan.json, then the weights."""
    plan = json.loads((out / "plan.json").read_text())
    skeleton = decomp.build_decomposed(model, plan["layers"])
    skeleton.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    return skeleton.eval(), plan


def decompose_tiny(capsys, tmp_path, *extra):
    weights = tmp_path / "w.pt"
    state = save_weights(weights)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "decompose", "--model", TINY, "--weights", weights,
                                "--method", "conv=tucker2,linear=svd", "--rank", "1/3",
                                "--input-shape", INPUT_SHAPE, "--out", out, "--no-progress", *extra)
    assert code == 0, err
    return out, state, stdout


def save_calibration(path, n=32, shape=(3, 16, 16), key=None):
    """``n`` random inputs of tiny_net, saved as a tensor (or as a dict under ``key``)."""
    inputs = torch.randn((n, *shape), generator=torch.Generator().manual_seed(2))
    torch.save(inputs if key is None else {key: inputs, "labels": torch.zeros(n, dtype=torch.long)}, path)
    return inputs


def test_alexnet_command_rebuilds_to_the_in_memory_result(capsys, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "decompose", "--model", "torchvision:alexnet", "--weights", tmp_path / "w.pt",
                                "--method", "tucker2", "--rank", "1/3", "--input-shape", "1,3,64,64",
                                "--out", out, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "report.md", "state_dict.pt"]

    expected, report = decomp.decompose(model, "tucker2", 1 / 3, input_shape=(1, 3, 64, 64))
    skeleton, plan = rebuild(torchvision.models.alexnet(), out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(skeleton(x), expected.eval()(x))
    assert plan["layers"] == json.loads(json.dumps(report.to_records()))
    assert plan["totals"]["decomposed"] == len(report.decomposed) > 0
    assert {k: plan[k] for k in ("model", "method", "rank", "input_shape")} == {
        "model": "torchvision:alexnet", "method": "tucker2", "rank": "1/3", "input_shape": [1, 3, 64, 64]}
    assert report.summary() in stdout


def test_build_decomposed_takes_the_plan_object_itself(capsys, tmp_path):
    out, _, _ = decompose_tiny(capsys, tmp_path)
    from_list, plan = rebuild(tiny_net(), out)
    from_plan = decomp.build_decomposed(tiny_net(), plan)
    from_plan.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_plan.eval()(x), from_list(x))


def test_layers_left_alone_keep_the_given_weights_exactly(capsys, tmp_path):
    out, state, _ = decompose_tiny(capsys, tmp_path, "--override", "0=none")
    saved = torch.load(out / "state_dict.pt", weights_only=True)
    plan = json.loads((out / "plan.json").read_text())
    skipped = {r["name"]: r["skipped"] for r in plan["layers"] if r["skipped"]}
    assert set(skipped) == {"0", "5"}  # left out by --override, and the grouped conv
    assert "groups=4" in skipped["5"] and "overrides" in skipped["0"]
    for key in ("0.weight", "0.bias", "5.weight", "5.bias", "1.weight", "1.running_mean", "1.running_var"):
        assert torch.equal(saved[key], state[key]), key
    assert "3.weight" not in saved  # decomposed: its factors are stored instead


def test_rebuilt_tiny_model_matches_the_library_on_the_same_weights(capsys, tmp_path):
    out, state, stdout = decompose_tiny(capsys, tmp_path, "--override", "1*=2", "--rank-multiple", "4")
    model = tiny_net()
    model.load_state_dict(state)
    expected, report = decomp.decompose(model, {"conv": "tucker2", "linear": "svd"}, 1 / 3,
                                        overrides={"1*": 2}, input_shape=(1, 3, 16, 16), rank_multiple=4)
    skeleton, plan = rebuild(tiny_net(), out)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(skeleton(x), expected.eval()(x))
    ranks = {r["name"]: r["ranks"] for r in plan["layers"]}
    assert ranks["11"] == ranks["13"] == 4  # "1*" -> rank 2, rounded up to a multiple of 4
    assert plan["overrides"] == {"1*": "2"} and plan["rank_multiple"] == 4
    report_md = (out / "report.md").read_text()
    assert report.to_markdown() in report_md and "grouped convolution" in report_md
    assert report.summary() in stdout and str(out) in stdout


@pytest.mark.parametrize("rank, ranks_of_conv3", [("4", [4, 4]), ("3,5", [3, 5]), ("energy:1.0", [16, 32]),
                                                  ("0.5", [8, 16])])
def test_rank_forms_reach_the_library(capsys, tmp_path, rank, ranks_of_conv3):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "tucker2", "--rank", rank,
                           "--input-shape", INPUT_SHAPE, "--out", out, "--no-progress",
                           "--override", "0=none", "--override", "7=none")  # 3 input channels; a 1x1 conv (SVD)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads((out / "plan.json").read_text())["layers"]}
    assert rows["3"]["ranks"] == ranks_of_conv3


def test_progress_bar_on_stderr_unless_no_progress(capsys, tmp_path):
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "svd", "--rank", "0.5",
                           "--input-shape", INPUT_SHAPE, "--out", tmp_path / "out")
    assert code == 0 and "decompose" in err and "layer" in err


def test_an_empty_out_is_used_and_force_replaces_a_full_one(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    decompose_tiny(capsys, tmp_path)
    (out / "stale.txt").write_text("from an earlier run")
    decompose_tiny(capsys, tmp_path, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "report.md", "state_dict.pt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failure_during_the_work_leaves_no_out(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "decompose", "--model", "_cli_helpers:nan_net", "--method", "tucker2",
                           "--rank", "1/3", "--input-shape", INPUT_SHAPE, "--out", out, "--no-progress")
    assert code == 1
    assert err.strip().count("\n") == 0 and "decomposition failed" in err and "3" in err
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_keeps_the_old_out_and_leaves_no_temporary(capsys, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("kept")

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_decompose, "atomic_write_text", full_disk)
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "svd", "--rank", "0.5",
                           "--input-shape", INPUT_SHAPE, "--out", out, "--force", "--no-progress")
    assert code == 1 and f"writing {out} failed" in err and "No space left" in err
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("key", [None, "images"])
def test_calibration_fits_the_layers_to_the_data_and_gives_the_input_shape(capsys, tmp_path, key):
    inputs = save_calibration(tmp_path / "cal.pt", key=key)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "conv=tucker2,linear=svd",
                                "--rank", "1/3", "--calibration", tmp_path / "cal.pt", "--out", out, "--no-progress")
    assert code == 0, err
    skeleton, plan = rebuild(tiny_net(), out)
    decomposed = [r for r in plan["layers"] if not r["skipped"]]
    assert decomposed and all(r["info"]["fit"] == "data-aware" for r in decomposed)
    assert plan["input_shape"] == [1, 3, 16, 16]  # one sample of the calibration, not 1,3,224,224
    assert {k: plan["calibration"][k] for k in ("file", "samples", "sample_shape")} == {
        "file": str(tmp_path / "cal.pt"), "samples": 32, "sample_shape": [3, 16, 16]}
    assert "budget" not in plan and "calibration inputs" in stdout
    assert f"calibration {tmp_path / 'cal.pt'}" in (out / "report.md").read_text()

    expected, report = decomp.decompose(tiny_net(), {"conv": "tucker2", "linear": "svd"}, 1 / 3, calibration=inputs)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(skeleton(x), expected.eval()(x))
    assert [r["ranks"] for r in plan["layers"]] == [r["ranks"] for r in json.loads(json.dumps(report.to_records()))]


def test_an_explicit_input_shape_is_kept_with_calibration(capsys, tmp_path):
    save_calibration(tmp_path / "cal.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "svd", "--rank", "0.5",
                           "--calibration", tmp_path / "cal.pt", "--input-shape", "4,3,16,16", "--out", out,
                           "--no-progress")
    assert code == 0, err
    assert json.loads((out / "plan.json").read_text())["input_shape"] == [4, 3, 16, 16]


def test_budget_chooses_the_ranks_for_the_mac_target(capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "conv=tucker2,linear=svd",
                                "--budget", "macs:2", "--input-shape", INPUT_SHAPE, "--out", out, "--no-progress")
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert 1.9 <= plan["totals"]["mac_reduction"] <= 2.3
    assert plan["rank"] is None and plan["budget"]["target"] == "MACs(x2)" and "calibration" not in plan
    assert plan["budget"]["reached"] == pytest.approx(plan["totals"]["mac_reduction"])
    assert "budget MACs(x2)" in stdout and "budget macs:2" in (out / "report.md").read_text()
    skeleton, _ = rebuild(tiny_net(), out)
    assert decomp.count_macs(skeleton, (1, 3, 16, 16)) == plan["totals"]["macs_after"]


def test_budget_with_calibration_reads_the_errors_from_the_data(capsys, tmp_path):
    save_calibration(tmp_path / "cal.pt")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "tucker2", "--budget", "macs:2",
                           "--calibration", tmp_path / "cal.pt", "--out", out, "--no-progress")
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["budget"]["errors_from"].startswith("calibration") and plan["calibration"]["samples"] == 32
    assert 1.9 <= plan["totals"]["mac_reduction"] <= 2.3


def test_latency_budget_reaches_the_library_with_its_threads(capsys, tmp_path, monkeypatch):
    given = {}

    def record(model, **kwargs):
        given.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli_decompose, "decompose_model", record)
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", "tucker2", "--budget", "latency:1.5",
                           "--budget-threads", "2", "--input-shape", INPUT_SHAPE, "--out", tmp_path / "out",
                           "--no-progress")
    assert code == 1 and "stop here" in err
    assert given["budget"] == decomp.Latency(1.5, threads=2) and given["rank"] is None
    assert given["calibration"] is None and given["input_shape"] == (1, 3, 16, 16)
    code, _, _ = run_cli(capsys, "decompose", "--model", TINY, "--method", "tucker2", "--budget", "latency:2",
                         "--out", tmp_path / "out", "--no-progress")
    assert code == 1 and given["budget"] == decomp.Latency(2, threads=1)
    assert given["input_shape"] == (1, 3, 224, 224)  # the default without --calibration

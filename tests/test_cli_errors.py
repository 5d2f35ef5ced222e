"""Every bad argument of ``decomp decompose``: one line naming the argument and the value, exit 2,
nothing written, before any work."""

import pytest
import torch
from _cli_helpers import INPUT_SHAPE, TINY, run_cli

import decomp.cli.decompose as cli_decompose

GOOD = {"--model": TINY, "--method": "tucker2", "--rank": "1/3", "--input-shape": INPUT_SHAPE}


def argv(out, **changes):
    args = {**GOOD, **{"--" + k.replace("_", "-"): v for k, v in changes.items()}}
    flat = [x for k, v in args.items() if v is not None for x in (k, v)]
    return ["decompose", *flat, "--out", out, "--no-progress"]


def assert_one_line_error(code, err, argument, value):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"decomp decompose: error: argument {argument}: "), lines[0]
    assert value in lines[0]
    assert "Traceback" not in err


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the decomposition starts: every check comes before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the work started before the arguments were checked")

    monkeypatch.setattr(cli_decompose, "decompose_model", refuse)


@pytest.mark.parametrize("rank", ["7/3", "0", "-4", "1/0", "0.0", "1.5", "nan", "energy:1.5", "energy:0",
                                  "vbmf:2", "abc", "1,2,3", "4,0", "none"])
def test_bad_rank(capsys, tmp_path, no_work, rank):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", rank=rank))
    assert_one_line_error(code, err, "--rank", rank)
    assert "allowed:" in err and "1/3" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["tucker", "conv=svd", "linear=tucker2", "dense=svd", "conv=tucker2,conv=cp",
                                    "conv=tucker2,linear"])
def test_bad_method(capsys, tmp_path, no_work, method):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", method=method))
    assert_one_line_error(code, err, "--method", method)
    assert "allowed:" in err


@pytest.mark.parametrize("shape", ["1,3,x,16", "0,3,16,16", "16", "1;3;16;16", "1,4,16,16"])
def test_bad_input_shape(capsys, tmp_path, no_work, shape):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", input_shape=shape))
    assert_one_line_error(code, err, "--input-shape", shape)


@pytest.mark.parametrize("model, says", [
    ("alexnet", "torchvision:NAME"),
    ("torchvision:alexnett", "did you mean alexnet"),
    ("no_such_module_xyz:net", "cannot import"),
    ("_cli_helpers:missing", "has no missing"),
    ("_cli_helpers:INPUT_SHAPE", "not callable"),
    ("_cli_helpers:not_a_module", "not a torch.nn.Module"),
    ("_cli_helpers:broken", "the factory failed on two lines"),
])
def test_bad_model(capsys, tmp_path, no_work, model, says):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", model=model))
    assert_one_line_error(code, err, "--model", model)
    assert says in err


def test_bad_weights(capsys, tmp_path, no_work):
    cases = {"missing.pt": None, "text.pt": b"not a torch file", "other.pt": {"fc.weight": torch.zeros(2, 2)},
             "module.pt": torch.nn.Linear(2, 2), "list.pt": [torch.zeros(1)]}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        code, _, err = run_cli(capsys, *argv(tmp_path / "out"), "--weights", path)
        assert_one_line_error(code, err, "--weights", str(path))


def test_weights_of_another_model_name_the_keys(capsys, tmp_path, no_work):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    code, _, err = run_cli(capsys, *argv(tmp_path / "out"), "--weights", path)
    assert_one_line_error(code, err, "--weights", str(path))
    assert "missing: 0.bias, 0.weight, 1.bias and" in err and "unexpected: fc.weight" in err


@pytest.mark.parametrize("override, says", [("conv9=4", "matches no Conv2d or Linear"), ("3", "NAME=RANK"),
                                            ("3=7/3", "7/3"), ("=4", "NAME=RANK"), ("featurs.*=4", "matches no")])
def test_bad_override(capsys, tmp_path, no_work, override, says):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out"), "--override", override)
    assert_one_line_error(code, err, "--override", override.split("=")[0] or override)
    assert says in err


def test_override_given_twice(capsys, tmp_path, no_work):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out"), "--override", "3=4", "--override", "3=none")
    assert_one_line_error(code, err, "--override", "3")


def test_out_that_is_not_empty_needs_force(capsys, tmp_path, no_work):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("x")
    code, _, err = run_cli(capsys, *argv(out))
    assert_one_line_error(code, err, "--out", str(out))
    assert "--force" in err and (out / "kept.txt").read_text() == "x"


def test_out_that_is_a_file(capsys, tmp_path, no_work):
    out = tmp_path / "file"
    out.write_text("x")
    code, _, err = run_cli(capsys, *argv(out), "--force")
    assert_one_line_error(code, err, "--out", str(out))


@pytest.mark.parametrize("flag, value", [("--min-speedup", "0"), ("--min-speedup", "fast"), ("--rank-multiple", "0"),
                                         ("--rank-multiple", "1.5")])
def test_bad_numbers(capsys, tmp_path, no_work, flag, value):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out"), flag, value)
    assert_one_line_error(code, err, flag, value)


def test_missing_required_argument(capsys, tmp_path, no_work):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", method=None))
    assert code == 2 and err.strip().splitlines() == [
        "decomp decompose: error: the following arguments are required: --method"]
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", rank=None))
    assert code == 2 and err.strip().splitlines() == [
        "decomp decompose: error: one of the arguments --rank --budget is required"]


@pytest.mark.parametrize("budget", ["macs:1", "macs:0.5", "flops:2", "latency:x", "macs", "macs:", "macs:inf",
                                    "latency:nan", "4"])
def test_bad_budget(capsys, tmp_path, no_work, budget):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", rank=None, budget=budget))
    assert_one_line_error(code, err, "--budget", budget)
    assert "allowed: macs:X" in err and "latency:X" in err


def test_budget_and_rank_together(capsys, tmp_path, no_work):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", budget="macs:2"))
    assert_one_line_error(code, err, "--budget", "macs:2")
    assert "--rank 1/3" in err and "not both" in err


@pytest.mark.parametrize("budget", [None, "macs:2"])
def test_budget_threads_only_with_a_latency_budget(capsys, tmp_path, no_work, budget):
    rank = "1/3" if budget is None else None
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", rank=rank, budget=budget, budget_threads="2"))
    assert_one_line_error(code, err, "--budget-threads", "2")
    assert "latency:X" in err
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", rank=None, budget="latency:2", budget_threads="0"))
    assert_one_line_error(code, err, "--budget-threads", "0")


def test_budget_with_cp(capsys, tmp_path, no_work):
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", rank=None, budget="macs:2", method="cp"))
    assert_one_line_error(code, err, "--budget", "macs:2")
    assert "--method cp" in err


def save_calibration(path, shape=(32, 3, 16, 16), **kwargs):
    torch.save(torch.randn(shape, **kwargs), path)
    return path


@pytest.mark.parametrize("input_shape", [INPUT_SHAPE, None])
def test_calibration_of_another_sample_shape(capsys, tmp_path, no_work, input_shape):
    path = save_calibration(tmp_path / "cal.pt", (32, 4, 16, 16))
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", input_shape=input_shape, calibration=path))
    assert_one_line_error(code, err, "--calibration", str(path))
    assert "(4, 16, 16) per sample" in err
    assert not (tmp_path / "out").exists()


def test_calibration_file_missing(capsys, tmp_path, no_work):
    path = tmp_path / "nope.pt"
    code, _, err = run_cli(capsys, *argv(tmp_path / "out", calibration=path))
    assert_one_line_error(code, err, "--calibration", str(path))
    assert "does not exist" in err


def test_calibration_that_is_not_a_float_tensor_batch(capsys, tmp_path, no_work):
    cases = {"text.pt": b"not a torch file", "list.pt": [torch.zeros(2, 3, 16, 16)],
             "dict.pt": {"x": torch.zeros(2, 3, 16, 16)}, "labels.pt": torch.zeros(32, dtype=torch.uint8),
             "uint8.pt": torch.zeros(32, 3, 16, 16, dtype=torch.uint8), "flat.pt": torch.zeros(32),
             "empty.pt": torch.zeros(0, 3, 16, 16), "module.pt": torch.nn.Linear(2, 2)}
    says = {"text.pt": "cannot be read", "list.pt": "holds a list, not a tensor", "dict.pt": "'inputs' or 'images'",
            "labels.pt": "torch.uint8", "uint8.pt": "floating tensor", "flat.pt": "batch first",
            "empty.pt": "empty", "module.pt": "cannot be read"}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        code, _, err = run_cli(capsys, *argv(tmp_path / "out", calibration=path))
        assert_one_line_error(code, err, "--calibration", str(path))
        assert says[name] in err, err


def test_calibration_in_another_float_dtype_is_converted(capsys, tmp_path, monkeypatch):
    given = {}
    monkeypatch.setattr(cli_decompose, "decompose_model", lambda model, **kw: given.update(kw) or 1 / 0)
    path = save_calibration(tmp_path / "cal.pt", dtype=torch.float64)
    code, _, _ = run_cli(capsys, *argv(tmp_path / "out", input_shape=None, calibration=path))
    assert code == 1 and given["calibration"].dtype == torch.float32 and given["calibration"].shape == (32, 3, 16, 16)
    assert given["input_shape"] == (1, 3, 16, 16) and given["budget"] is None


def test_unknown_subcommand(capsys):
    code, _, err = run_cli(capsys, "decompse")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "decompse" in err and "decompose" in err

"""Export parity: a model rebuilt from ``decomp decompose``'s files exports with ``torch.export`` and
to ONNX, and the exported programs give the eager outputs (float32 tolerance)."""

import json

import pytest
import torch
from _cli_helpers import INPUT_SHAPE, TINY, run_cli, tiny_net

import decomp

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32: reassociated sums in other kernels


@pytest.fixture(params=["conv=tucker2,linear=svd", "conv=cp,linear=svd"])
def decomposed(request, capsys, tmp_path):
    """tiny_net decomposed by the CLI at rank 1/3 (every kind of replaced layer), rebuilt from its files."""
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "decompose", "--model", TINY, "--method", request.param, "--rank", "1/3",
                           "--input-shape", INPUT_SHAPE, "--out", out, "--no-progress")
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    model = decomp.build_decomposed(tiny_net(), plan["layers"])
    model.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    assert plan["totals"]["decomposed"] == 5  # all but the grouped conv
    return model.eval()


def inputs():
    return torch.randn(2, 3, 16, 16)


def test_torch_export_matches_eager(decomposed):
    x = inputs()
    program = torch.export.export(decomposed, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), decomposed(x), **TOLERANCE)
        y = inputs()  # the program is not specialised to the values it was traced with
        torch.testing.assert_close(program.module()(y), decomposed(y), **TOLERANCE)


def test_onnx_export_matches_eager(decomposed, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch.onnx.export's (default) dynamo exporter
    ort = pytest.importorskip("onnxruntime")
    x = inputs()
    path = tmp_path / "model.onnx"
    torch.onnx.export(decomposed, (x,), path, input_names=["x"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), decomposed(x), **TOLERANCE)

"""decomp.experiments.compat: one row per model and method, the forward check, resume."""


import pandas as pd
import pytest
from torch import nn

from decomp.experiments import compat
from decomp.experiments.compat import Config, check_model


def test_every_method_of_a_small_model_runs_after_decomposition():
    cfg = Config(sizes=(64,))
    rows = {r["method"]: r for r in check_model("classification", "squeezenet1_1", cfg)}
    assert list(rows) == list(compat.METHODS)
    for method, row in rows.items():
        assert row["status"] == "ok" and row["forward"] == "ok" and row["input"] == "64x64", method
        assert row["layers"] == row["decomposed"] + row["skipped"] == 26
        assert row["params_after"] < row["params_before"] and row["macs_after"] < row["macs_before"]
    assert rows["svd"]["skip_reasons"] == "conv not selected x9"  # the first conv and the 3x3 expand convs


class _NeedsBigInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 17)

    def forward(self, x):
        return self.conv(x)


def test_the_smallest_input_the_model_takes_is_used():
    assert compat._input_size(_NeedsBigInput(), (8, 32)) == 32
    with pytest.raises(ValueError, match=r"runs at none of the sizes \[8\]"):
        compat._input_size(_NeedsBigInput(), (8,))


def test_skip_reasons_are_counted_by_their_gist():
    assert compat._gist("grouped convolution (groups=32) is not decomposed") == "grouped conv"
    assert compat._gist("not decomposed: svd at ranks 3 would not reduce cost (params 9 -> 12)") == "no cost reduction"
    assert compat._gist("ConvTranspose2d is not supported (only nn.Conv2d and nn.Linear)") == "ConvTranspose2d not supported"
    assert compat._gist("parent reads .weight directly (ShiftedWindowAttention uses ...)") == "parent reads .weight"


def test_a_partial_table_is_resumed(tmp_path, monkeypatch):
    out = tmp_path / "compat"
    argv = ["--models", "squeezenet1_1", "--methods", "svd", "--sizes", "64", "--out", str(out)]
    assert compat.main(argv) == 0
    first = pd.read_csv(out / "compat.csv")
    assert list(first.model) == ["squeezenet1_1"] and (out / "compat.md.json").is_file()
    assert "classification: 1 of 1 torchvision models checked" in (out / "compat.md").read_text()
    monkeypatch.setattr(compat, "check_model", lambda *a: pytest.fail("a finished model was run again"))
    assert compat.main(argv) == 0
    assert pd.read_csv(out / "compat.csv").equals(first)

"""decomp.checks: decompose never hands back a broken model, keeps the user's settings and checks
its arguments before any work; build_decomposed checks its records and keeps shared layers tied."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from decomp import build_decomposed, decompose


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


SHAPE = (1, 3, 16, 16)


# --- item 1: a model handed back always runs --------------------------------------------------------


class _ReadsWeight(nn.Module):
    """Like Swin's attention: the parent's forward reads its child's ``.weight`` and ``.bias``."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        return self.out(F.linear(x, self.qkv.weight, self.qkv.bias))


class _ReadsWeightByName(nn.Module):
    """A read no look at the source can see: only the forward check finds it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        return self.out(F.linear(x, getattr(self, "f" + "c").weight))


@pytest.mark.parametrize("input_shape", [(4, 16), None])
def test_a_layer_whose_parent_reads_its_weight_is_left_as_it_is(input_shape):
    torch.manual_seed(0)
    model = _ReadsWeight()
    new, report = decompose(model, "svd", rank=4, input_shape=input_shape)
    assert "parent reads .weight directly" in report["qkv"].skipped
    assert isinstance(new.qkv, nn.Linear) and report["out"].decomposed
    assert new(torch.randn(4, 16)).shape == (4, 16)


def test_a_replacement_that_breaks_the_forward_pass_is_found_before_any_factor():
    torch.manual_seed(0)
    model = _ReadsWeightByName()
    new, report = decompose(model, "svd", rank=4, input_shape=(4, 16))
    assert report["fc"].skipped.startswith("parent reads .weight directly (the model fails with it replaced: "
                                           "'Sequential' object has no attribute 'weight')")
    assert report["fc"].method == "svd" and isinstance(new.fc, nn.Linear) and report["out"].decomposed
    assert new(torch.randn(4, 16)).shape == (4, 16)


class _BreaksAtItsRank(nn.Module):
    """A parent that inspects its child: fine with the rank-1 stand-in, broken at the real rank."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        if isinstance(self.fc, nn.Sequential) and self.fc[0].out_features > 1:
            raise RuntimeError("unexpected inner width")
        return self.out(self.fc(x))


def test_the_forward_check_puts_back_a_replacement_that_breaks_its_parent():
    torch.manual_seed(0)
    new, report = decompose(_BreaksAtItsRank(), "svd", rank=4, input_shape=(4, 16))
    assert report["fc"].skipped == ("put back as it was: the model fails with it replaced: "
                                    "RuntimeError: unexpected inner width")
    assert report["fc"].method == "svd" and report["fc"].ranks == 4
    assert isinstance(new.fc, nn.Linear) and report["out"].decomposed
    assert report.params_after == sum(p.numel() for p in new.parameters())
    assert new(torch.randn(4, 16)).shape == (4, 16)


def test_the_data_aware_path_skips_and_checks_too():
    torch.manual_seed(0)
    data = torch.randn(32, 16)
    for model, name in ((_ReadsWeight(), "qkv"), (_ReadsWeightByName(), "fc")):
        new, report = decompose(model, "svd", rank=4, calibration=data)
        assert "parent reads .weight directly" in report[name].skipped
        assert new(data).shape == (32, 16)


@pytest.mark.parametrize("builder", [torchvision.models.swin_t, torchvision.models.swin_v2_t])
def test_swin_with_svd_on_linear_layers_comes_back_working(builder):
    torch.manual_seed(0)
    model = builder().eval()
    new, report = decompose(model, {"linear": "svd"}, rank=0.25, input_shape=(1, 3, 224, 224))
    qkv = [r for r in report if r.name.endswith("attn.qkv")]
    assert qkv and all("parent reads .weight directly" in r.skipped for r in qkv)
    assert any(r.name.endswith("mlp.0") and r.decomposed for r in report)
    with torch.no_grad():
        assert new(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_torchs_own_transformer_layer_comes_back_working():
    """TransformerEncoderLayer reads self.linear1.weight for its fast path, even without input_shape."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    for input_shape in ((2, 5, 32), None):
        new, report = decompose(model, "svd", rank=8, input_shape=input_shape)
        assert "TransformerEncoderLayer uses self.linear1.weight" in report["linear1"].skipped
        with torch.no_grad():
            assert new(torch.randn(2, 5, 32)).shape == (2, 5, 32)


# --- item 3: user settings survive ------------------------------------------------------------------


def test_frozen_parameters_training_flags_dtype_and_hooks_are_kept():
    model = _net().double().eval()
    model[0].weight.requires_grad_(False)          # a frozen weight, a trainable bias
    model[2].requires_grad_(False)                 # a frozen layer
    model[2].train()                               # one layer left in training mode
    calls = []
    model[1].register_forward_hook(lambda m, args, out: calls.append(out.shape))
    new, report = decompose(model, "tucker2", rank=0.5, input_shape=SHAPE)
    calls.clear()  # decompose's own passes on meta copies ran the hook too
    assert report["0"].decomposed and report["2"].decomposed
    assert [p.requires_grad for p in new[0].parameters()] == [False, False, False, True]
    assert not any(p.requires_grad for p in new[2].parameters())
    assert not new[0].training and all(not m.training for m in new[0].modules())
    assert new[2].training and all(m.training for m in new[2].modules())
    assert {p.dtype for p in new.parameters()} == {torch.float64}
    new(torch.randn(SHAPE, dtype=torch.float64))
    assert calls == [(1, 16, 16, 16)]


# --- item 4: overrides and input_shape --------------------------------------------------------------


def test_an_overrides_key_that_matches_no_layer_names_the_closest():
    model = nn.Sequential()
    model.add_module("features", _net()[:4])
    with pytest.raises(ValueError, match=r"overrides key 'feature\.2' matches no Conv2d or Linear.*'features\.2'"):
        decompose(model, "tucker2", rank=0.5, overrides={"feature.2": None}, input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"overrides key 'classifier\.\*' matches no"):
        decompose(model, "tucker2", rank=0.5, overrides={"classifier.*": None}, input_shape=SHAPE)
    # patterns and names that match are fine
    _, report = decompose(model, "tucker2", rank=0.5, overrides={"features.0": None, "*.2": 0.25}, input_shape=SHAPE)
    assert not report["features.0"].decomposed and report["features.2"].decomposed


def test_a_wrong_input_shape_is_an_error_naming_input_shape():
    with pytest.raises(ValueError, match=r"input_shape=\(1, 4, 16, 16\) does not fit the model: layer '0' "
                                         r"\(Conv2d 3->16 3x3 s1x1 p1x1\) expects 3 channels"):
        decompose(_net(), "tucker2", rank=0.5, input_shape=(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"input_shape=\(1, 3, 16\) does not fit the model"):
        decompose(_net(), "tucker2", rank=0.5, input_shape=(1, 3, 16))
    with pytest.raises(ValueError, match=r"input_shape must be non-empty with every entry >= 1"):
        decompose(_net(), "tucker2", rank=0.5, input_shape=(1, 0, 16, 16))


class _NoMetaKernel(nn.Module):
    """A model whose forward has an op without a meta kernel, so shapes are found for real."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        _ = y.sum().item()  # .item() has no meta kernel
        return self.fc(y)


def test_a_wrong_input_shape_is_named_on_the_real_forward_too():
    with pytest.raises(ValueError, match=r"input_shape=\(1, 5, 8, 8\) does not fit the model: layer 'conv'"):
        decompose(_NoMetaKernel(), {"conv": "tucker2", "linear": "svd"}, rank=2, input_shape=(1, 5, 8, 8))
    new, report = decompose(_NoMetaKernel(), {"conv": "tucker2", "linear": "svd"}, rank=2, input_shape=(1, 3, 8, 8))
    assert report["fc"].decomposed and new(torch.randn(1, 3, 8, 8)).shape == (1, 4)


# --- item 5: shared layers and build_decomposed's checks -------------------------------------------


class _Shared(nn.Module):
    """One conv object at two places (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.again = self.block
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.again(torch.relu(self.block(torch.relu(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_a_shared_layer_is_decomposed_once_and_rebuilt_tied_from_records():
    torch.manual_seed(0)
    model = _Shared().eval()
    new, report = decompose(model, {"conv": "tucker2", "linear": "svd"}, rank=0.5, input_shape=SHAPE)
    assert [r.name for r in report] == ["stem", "block", "head"] and report["block"].decomposed
    assert new.block is new.again
    buffer = io.BytesIO()
    torch.save(new.state_dict(), buffer)
    buffer.seek(0)
    records = json.loads(json.dumps(report.to_records()))
    skeleton = build_decomposed(model, records)
    assert skeleton.block is skeleton.again
    skeleton.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(skeleton.eval()(x), new(x))
    with pytest.raises(ValueError, match="second name of the shared layer 'block'"):
        decompose(model, "tucker2", rank=0.5, overrides={"again": None}, input_shape=SHAPE)


def test_build_decomposed_names_the_first_record_that_does_not_fit():
    model = _net()
    _, report = decompose(model, {"conv": "tucker2", "linear": "svd"}, rank=0.5, input_shape=SHAPE)
    records = report.to_records()
    other = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 64, 3, padding=1))
    with pytest.raises(ValueError, match=r"report row '2' was made for a Conv2d 16->32 3x3 s1x1 p1x1 layer; "
                                         r"this model has Conv2d 16->64 3x3 s1x1 p1x1 there"):
        build_decomposed(other, records[:2])
    with pytest.raises(ValueError, match=r"report row '1' names a ReLU, not a Conv2d or Linear"):
        build_decomposed(model, [{**records[0], "name": "1"}])
    with pytest.raises(ValueError, match=r"report row '9' names no module"):
        build_decomposed(model, [{**records[0], "name": "9"}])
    with pytest.raises(ValueError, match=r"report row '6' has method 'tucker2'; allowed for this linear layer"):
        build_decomposed(model, [{**records[2], "method": "tucker2"}])
    with pytest.raises(ValueError, match=r"rank for report row '6' must be in \[1, 10\]; got 99"):
        build_decomposed(model, [{**records[2], "ranks": 99}])
    with pytest.raises(ValueError, match=r"report row '0' \(tucker2\) needs ranks \[r_in, r_out\]"):
        build_decomposed(model, [{**records[0], "ranks": 3}])
    with pytest.raises(ValueError, match=r"report row '0' decomposes a layer that an earlier row already"):
        build_decomposed(model, [records[0], records[0]])
    with pytest.raises(ValueError, match=r"report record 0 must be a mapping with a 'name'"):
        build_decomposed(model, ["0"])


# --- item 6: meta -----------------------------------------------------------------------------------


def test_a_model_on_meta_is_refused_saying_meta():
    with torch.device("meta"):
        model = _net()
    with pytest.raises(ValueError, match=r"model has tensors on the 'meta' device \(first: '0.weight'\)"):
        decompose(model, "tucker2", input_shape=SHAPE)
    with pytest.raises(ValueError, match="'meta' device"):
        decompose(model, "tucker2", calibration=torch.randn(2, 3, 16, 16, device="meta"))

import io

import pytest
import tensorly as tl
import torch
import torchvision
from torch import nn

from conftest import rel_err
from decomp import Energy, Fraction, build_decomposed, count_macs, count_params, decompose

INPUT = (1, 3, 64, 64)  # small input keeps the forward passes cheap; VGG/AlexNet pool adaptively


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _check_report_agrees_with_modules(original, new, report):
    for row in report:
        module = new.get_submodule(row.name)
        assert count_params(module) == row.params_after
        if row.decomposed:
            assert isinstance(module, nn.Sequential)
            assert row.params_after < row.params_before
            assert row.macs_after < row.macs_before
            assert row.rel_error is not None and 0 <= row.rel_error <= 1
        else:
            assert type(module) is type(original.get_submodule(row.name))
            assert row.params_after == row.params_before


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return torchvision.models.alexnet().eval()


def test_vgg16_tucker2_and_svd(vgg16, tmp_path):
    before = _state(vgg16)
    # fc6 and fc7 (25088 x 4096, 4096 x 4096) are left out only to keep the unit tests fast.
    new, report = decompose(vgg16, method={"conv": "tucker2", "linear": "svd"}, rank=Fraction(1 / 3),
                            overrides={"classifier.0": None, "classifier.3": None}, input_shape=INPUT)
    names = [n for n, m in vgg16.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [r.name for r in report] == names
    assert {r.name for r in report.skipped} == {"classifier.0", "classifier.3"}
    assert "overrides['classifier.0']" in report["classifier.0"].skipped
    assert report["features.28"].ranks == (171, 171)
    _check_report_agrees_with_modules(vgg16, new, report)
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in vgg16.state_dict().items())
    assert isinstance(vgg16.features[28], nn.Conv2d)
    x = torch.randn(2, 3, 64, 64)
    assert new(x).shape == vgg16(x).shape == (2, 1000)
    # whole-model totals agree with the counters
    assert report.params_after == count_params(new)
    assert report.macs_before == count_macs(vgg16, INPUT) and report.macs_after == count_macs(new, INPUT)
    assert sum(r.macs_before - r.macs_after for r in report) == report.macs_before - report.macs_after
    # a saved state_dict loads into the rebuilt architecture with weights_only=True
    path = tmp_path / "vgg16_tucker2.pt"
    torch.save(new.state_dict(), path)
    skeleton = build_decomposed(torchvision.models.vgg16(), report.to_records())
    skeleton.load_state_dict(torch.load(path, weights_only=True))
    skeleton.eval()
    assert torch.equal(skeleton(x), new(x))


@pytest.mark.filterwarnings("ignore::decomp.cp_als.CPConvergenceWarning")  # max_iter=5 on purpose
@pytest.mark.parametrize("spatial", ["separable", "merged"])
def test_alexnet_cp_and_svd(alexnet, spatial):
    # fc6 and fc7 (9216 x 4096, 4096 x 4096) are left out only to keep the unit tests fast.
    new, report = decompose(alexnet, method={"conv": "cp", "linear": "svd"}, rank=Fraction(0.25),
                            input_shape=INPUT, method_options={"cp": {"max_iter": 5, "restarts": 0, "spatial": spatial}},
                            overrides={"classifier.1": None, "classifier.4": None})
    _check_report_agrees_with_modules(alexnet, new, report)
    assert len(report.decomposed) == 6
    info = report["features.3"].info
    assert info["n_iter"] <= 5 and info["restarts"] == 0 and info["converged"] is False
    assert info["spatial"] == spatial and len(new.features[3]) == (4 if spatial == "separable" else 3)
    buffer = io.BytesIO()
    torch.save(new.state_dict(), buffer)
    buffer.seek(0)
    skeleton = build_decomposed(alexnet, report)
    skeleton.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(skeleton.eval()(x), new.eval()(x))


def test_full_rank_model_is_exact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.Flatten(), nn.Linear(8 * 7 * 7, 10)).double()
    # the guard would skip full-rank layers (no saving); input_shape=None guards on params only,
    # and a full-rank Tucker-2 of these small layers has more params, so disable nothing but
    # check exactness directly on the layer functions through overrides of a cheap model
    new, report = decompose(model, method={"conv": "tucker2", "linear": "svd"}, rank=Energy(1.0),
                            input_shape=(1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert rel_err(new(x), model(x)) < 1e-8
    for row in report.skipped:
        assert "would not reduce cost" in row.skipped


def test_never_worse_guard_skips_layers_that_would_cost_more():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 64, 3), nn.Conv2d(64, 64, 3, padding=1))
    # layer 0 at (3, 4): 9 + 108 + 16 params (+4 bias) > 112 of the original
    new, report = decompose(model, method="tucker2", rank=(3, 4), overrides={"1": (4, 3), "2": (8, 8)},
                            input_shape=(1, 3, 20, 20))
    assert "would not reduce cost" in report["0"].skipped
    assert "MACs" in report["0"].skipped
    assert report["2"].decomposed
    assert type(new[0]) is nn.Conv2d and isinstance(new[2], nn.Sequential)


def test_nothing_to_decompose_is_reported_not_raised():
    new, report = decompose(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)), input_shape=(1, 3, 4, 4))
    assert len(report) == 0
    assert "nothing to decompose" in report.summary()
    new, report = decompose(nn.Sequential(nn.Conv1d(3, 3, 3), nn.Conv2d(4, 4, 3, groups=2)),
                            input_shape=None)
    assert "Conv1d is not supported" in report["0"].skipped
    assert "grouped convolution (groups=2)" in report["1"].skipped
    assert report.summary().startswith("nothing decomposed")


def test_overrides_exact_name_beats_pattern_and_none_excludes():
    model = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3))
    _, report = decompose(model, method="tucker2", rank=4,
                          overrides={"*": 2, "1": (3, 5), "2": None}, input_shape=(1, 16, 12, 12))
    assert report["0"].ranks == (2, 2)
    assert report["1"].ranks == (3, 5)
    assert not report["2"].decomposed
    _, report = decompose(model, method="tucker2", rank=4,
                          overrides={"1": {"method": "cp", "rank": 6}}, input_shape=(1, 16, 12, 12))
    assert (report["1"].method, report["1"].ranks) == ("cp", 6)


def test_shared_module_is_replaced_everywhere():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    new, report = decompose(model, method="tucker2", rank=4, input_shape=(1, 16, 8, 8))
    assert len(report) == 1
    assert isinstance(new[0], nn.Sequential) and new[0] is new[2]


def test_errors_name_the_layer():
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"input rank for 0 must be in \[1, 8\]; got 9"):
        decompose(model, method="tucker2", rank=9, input_shape=None)
    with pytest.raises(ValueError, match="method must be one of"):
        decompose(model, method="qr")
    with pytest.raises(ValueError, match="method for 'conv' layers must be one of"):
        decompose(model, method={"conv": "svd"})
    with pytest.raises(ValueError, match="method keys must be among"):
        decompose(model, method={"convs": "cp"})
    with pytest.raises(ValueError, match="rank string must be 'vbmf'"):
        decompose(model, rank="energy")
    with pytest.raises(ValueError, match="method_options keys"):
        decompose(model, method_options={"tucker": {}})
    with pytest.raises(ValueError, match="may only set 'method' and 'rank'"):
        decompose(model, overrides={"0": {"ranks": 3}}, input_shape=None)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^0\.weight has 1 NaN/Inf"):
        decompose(model, rank=2, input_shape=None)


def test_no_printing_and_no_tensorly_backend_change(capsys):
    backend = tl.get_backend()
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    decompose(model, method="cp", rank=4, input_shape=(1, 8, 10, 10),
              method_options={"cp": {"algorithm": "tensorly", "max_iter": 3}})
    assert capsys.readouterr() == ("", "")
    assert tl.get_backend() == backend


def test_training_mode_and_batchnorm_stats_are_untouched():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3)).train()
    stats = _state(model)
    new, _ = decompose(model, method="tucker2", rank=0.5, input_shape=(4, 3, 12, 12))
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())
    assert new.training and model.training


def test_rank_multiple_rounds_up_within_the_mode():
    model = nn.Sequential(nn.Conv2d(128, 40, 3), nn.Flatten(), nn.Linear(40 * 4 * 4, 20))
    _, report = decompose(model, method={"conv": "tucker2", "linear": "svd"}, rank=1 / 3,
                          rank_multiple=16, input_shape=(1, 128, 6, 6))
    assert report["0"].ranks == (48, 16)   # ceil(128/3)=43 -> 48, ceil(40/3)=14 -> 16
    assert report["2"].ranks == 16         # ceil(20/3)=7 -> 16, capped at min(20, 640)=20
    _, report = decompose(model, method="tucker2", rank=(30, 33), rank_multiple=16, input_shape=None)
    assert report["0"].ranks == (32, 40)   # 33 -> 48 is capped at the 40 output channels
    with pytest.raises(ValueError, match="rank_multiple must be an int >= 1; got 0"):
        decompose(model, rank_multiple=0)


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                         nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


def test_min_speedup_keeps_layers_measured_too_slow():
    model = _conv_net()
    x = torch.randn(1, 64, 8, 8)
    new, report = decompose(model, method="tucker2", rank=0.25, input_shape=(1, 64, 8, 8),
                            min_speedup=1e6)  # no decomposition is a million times faster
    for name in ("0", "2"):
        row = report[name]
        assert not row.decomposed and "below min_speedup=1e+06" in row.skipped
        assert row.ranks == (16, 16) and row.info["measured_speedup"] > 0
        assert type(new.get_submodule(name)) is nn.Conv2d
    assert torch.equal(new(x), model(x))
    assert new.training and all(m.training for m in new.modules())  # timing left train mode alone


def test_min_speedup_below_any_measurement_changes_nothing_but_records_it():
    model = _conv_net()
    plain, plain_report = decompose(model, method="tucker2", rank=0.25, input_shape=(1, 64, 8, 8))
    timed, report = decompose(model, method="tucker2", rank=0.25, input_shape=(1, 64, 8, 8),
                              min_speedup=1e-6)
    assert [r.ranks for r in report] == [r.ranks for r in plain_report]
    assert all(r.decomposed for r in report if r.name in ("0", "2"))
    assert all(r.info["measured_speedup"] > 0 for r in report if r.name in ("0", "2"))
    assert "measured_speedup" not in plain_report["0"].info
    x = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(timed(x), plain(x))


@pytest.mark.parametrize("value", [0, -1.0, True, "fast"])
def test_min_speedup_rejects_bad_values(value):
    with pytest.raises(ValueError, match=f"min_speedup must be a number > 0 or None; got {value!r}"):
        decompose(_conv_net(), min_speedup=value, input_shape=(1, 64, 8, 8))


def test_min_speedup_needs_an_input_shape():
    with pytest.raises(ValueError, match="min_speedup times each layer at input_shape; got input_shape=None"):
        decompose(_conv_net(), min_speedup=1.1, input_shape=None)


@pytest.mark.filterwarnings("ignore::decomp.cp_als.CPConvergenceWarning")
def test_report_says_when_cp_stopped_unconverged():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    _, report = decompose(model, method="cp", rank=4, input_shape=(1, 8, 8, 8),
                          method_options={"cp": {"max_iter": 2, "restarts": 0}})
    row = report["2"]
    assert row.info["converged"] is False and row.info["n_iter"] == 2 and row.info["stop"] == "max_iter"
    assert "CP-ALS unconverged after 2 sweeps" in report.to_markdown()
    _, report = decompose(model, method="cp", rank=4, input_shape=(1, 8, 8, 8))
    assert report["2"].info["converged"] is True and "unconverged" not in report.to_markdown()

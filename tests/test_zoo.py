"""decomp.experiments.zoo: output shapes, stable layer names, torchvision's VGG16 shapes, rebuild from config."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from decomp.experiments.zoo import ModelConfig, alexnet_cifar, build_model, vgg16_bn_cifar

VGG_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]


def _names(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


@pytest.mark.parametrize("name", ["vgg16_bn", "alexnet"])
@pytest.mark.parametrize("width", [0.0625, 0.25, 1.0])
def test_output_shape(name, width):
    model = build_model(name, width=width).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_convs_match_torchvision():
    ours = vgg16_bn_cifar()
    reference = torchvision.models.vgg16_bn(weights=None).features
    assert _names(ours, nn.Conv2d) == [f"features.{i}" for i in VGG_CONVS]
    for i in VGG_CONVS:
        assert ours.features[i].weight.shape == reference[i].weight.shape
    assert _names(ours, nn.Linear) == ["classifier.0", "classifier.3", "classifier.6"]
    assert [ours.classifier[i].out_features for i in (0, 3, 6)] == [4096, 4096, 10]


def test_width_and_fc_width():
    model = vgg16_bn_cifar(num_classes=7, width=0.25, fc_width=300)
    assert model.features[0].out_channels == 16 and model.features[40].out_channels == 128
    assert (model.classifier[0].in_features, model.classifier[0].out_features) == (128, 300)
    assert model.classifier[6].out_features == 7
    assert vgg16_bn_cifar(width=0.5).classifier[3].in_features == 2048


def test_alexnet_layout():
    model = alexnet_cifar(width=0.5)
    convs = _names(model, nn.Conv2d)
    assert convs == ["features.0", "features.4", "features.8", "features.11", "features.14"]
    assert [model.get_submodule(c).out_channels for c in convs] == [32, 96, 192, 128, 128]
    assert _names(model, nn.Linear) == ["classifier.1", "classifier.4", "classifier.6"]
    assert model.classifier[1].in_features == 128 * 4 * 4
    plain = alexnet_cifar(batch_norm=False)
    assert not _names(plain, nn.BatchNorm2d) and plain.features[0].bias is not None


def test_config_round_trip_rebuilds_the_same_state_dict():
    config = ModelConfig(name="vgg16", width=0.125, fc_width=64)
    model = config.build()
    rebuilt = ModelConfig.from_dict(config.to_dict()).build()
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match="resnet18.*alexnet"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="width"):
        vgg16_bn_cifar(width=0)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"name": "alexnet", "depth": 3})

"""decomp.experiments.catalog: shapes captured by hooks, rank rules, ids, and the real decompositions."""

from fractions import Fraction

import pytest
import torch

from decomp.experiments.catalog import (FRACTIONS, Case, Layer, case_by_id, cases, layer_by_id, layers,
                            model_layers, representative_cases)


def test_every_conv_and_linear_is_listed():
    # VGG16: 13 convs + 3 Linear; AlexNet: 5 convs + 3 Linear.
    assert [l.kind for l in model_layers("vgg16")].count("conv") == 13
    assert [l.kind for l in model_layers("alexnet")].count("conv") == 5
    assert sum(l.kind == "linear" for l in layers()) == 6


@pytest.mark.parametrize(("layer_id", "shape"), [
    # torchvision's known geometry at 224x224 (VGG: 5 max-pools of 2; AlexNet: 224 -> 55 -> 27)
    ("vgg16.features.0", (3, 224, 224)),
    ("vgg16.features.28", (512, 14, 14)),
    ("vgg16.classifier.0", (25088,)),
    ("alexnet.features.3", (64, 27, 27)),
    ("alexnet.features.10", (256, 13, 13)),
    ("alexnet.classifier.1", (9216,)),
])
def test_hooked_input_shapes(layer_id, shape):
    assert layer_by_id(layer_id).input_shape == shape


def test_geometry_is_copied():
    l = layer_by_id("alexnet.features.0")
    assert (l.in_channels, l.out_channels, l.kernel_size, l.stride, l.padding) == \
        (3, 64, (11, 11), (4, 4), (2, 2))


def test_ranks_follow_the_fractions():
    assert case_by_id("vgg16.features.5:tucker2:1/3").ranks == (22, 43)   # ceil(64/3), ceil(128/3)
    assert case_by_id("vgg16.features.5:cp:1/8").ranks == (16,)
    assert case_by_id("vgg16.classifier.6:svd:1/2").ranks == (500,)
    assert case_by_id("alexnet.features.0:original").ranks == ()


def test_grid_size_and_unique_ids():
    ids = [c.id for c in cases()]
    assert len(ids) == len(set(ids)) == 18 * (1 + 2 * len(FRACTIONS)) + 6 * (1 + len(FRACTIONS))
    assert set(representative_cases()) <= set(cases())


def test_bad_cases_are_rejected():
    conv = layer_by_id("vgg16.features.2")
    with pytest.raises(ValueError, match="svd"):
        Case(conv, "svd", Fraction(1, 2))
    with pytest.raises(ValueError, match="fraction"):
        Case(conv, "tucker2")
    with pytest.raises(ValueError, match="no case"):
        case_by_id("vgg16.features.99:original")


SMALL = {  # small stand-ins in the catalogue's schema: the real factorisations run in seconds
    "conv": Layer("test", "conv", "conv", 24, 40, (3, 3), padding=(1, 1), input_shape=(24, 9, 9)),
    "wide": Layer("test", "wide", "conv", 3, 16, (5, 5), stride=(2, 2), input_shape=(3, 17, 17)),
    "fc": Layer("test", "fc", "linear", 96, 48, input_shape=(96,)),
    "pw": Layer("test", "pw", "conv", 32, 16, bias=False, input_shape=(32, 5, 5)),
}


@pytest.mark.parametrize(("layer", "method"), [
    ("conv", "tucker2"), ("conv", "cp"), ("wide", "tucker2"), ("wide", "cp"), ("fc", "svd"),
    ("pw", "svd"),
])
@pytest.mark.parametrize("fraction", [Fraction(1, 2), Fraction(1, 8)])
def test_fit_and_assembled_structures_match(layer, method, fraction):
    case = Case(SMALL[layer], method, fraction)
    fitted = case.build(fit=True, cp_max_iter=2)
    assembled = case.build(fit=False)
    assert [(n, p.shape) for n, p in fitted.named_parameters()] == \
        [(n, p.shape) for n, p in assembled.named_parameters()]
    assert repr(fitted) == repr(assembled)
    x = torch.randn(case.layer.batched_shape(2))
    assert fitted(x).shape == assembled(x).shape == case.layer.build()(x).shape

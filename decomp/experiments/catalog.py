"""The layer catalogue: every Conv2d and Linear of torchvision's VGG16 and AlexNet, as data.

One list, used by the asv suites (``benchmarks/``), the pytest-benchmark suite
(``benchmarks/pytest/``), ``scripts/sweep_layers.py`` and the tests. Each :class:`Layer` carries
the geometry of a real layer and the input shape it sees on a 224x224 image, captured with
forward hooks on a ``meta``-device model (no weights, no arithmetic). Each :class:`Case` is one
layer under one method at one rank setting; its ``id`` is a plain string usable as an asv
parameter and a pytest id, e.g. ``"vgg16.features.28:tucker2:1/3"``.

Weights are random (seeded): the catalogue is for timing and counting, where only shapes
matter. Any number that depends on the weights (approximation error, CP fit) is not
meaningful here.

Rank settings, for a fraction ``f`` of the channels or features (``FRACTIONS``):

* Tucker-2 on a k x k conv S -> T: ranks ``(ceil(S f), ceil(T f))``;
* CP on a k x k conv: rank ``ceil(T f)``;
* truncated SVD on a Linear or a 1x1 conv: rank ``ceil(min(in, out) f)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch
from torch import nn

__all__ = [
    "MODELS", "FRACTIONS", "BATCH_SIZES", "METHODS", "REPRESENTATIVE_LAYERS",
    "Layer", "Case", "model_layers", "layers", "cases", "case_by_id", "layer_by_id",
    "representative_cases",
]

MODELS = ("vgg16", "alexnet")           # torchvision builders, 224x224 RGB input
IMAGE_SHAPE = (3, 224, 224)             # (C, H, W) the models are fed
FRACTIONS = (Fraction(1, 2), Fraction(1, 3), Fraction(1, 4), Fraction(1, 8))
BATCH_SIZES = (1, 32)
METHODS = ("original", "tucker2", "cp", "svd")
# The catalogue's CP cases are Lebedev's four layers, the form results/layers/<model>_*.csv were
# measured in; the merged form (the library's default since issue 14) is timed next to it by
# decomp.experiments.cp_spatial (results/layers/vgg16_cp_spatial_cpu_b1_t1.md).
CP_SPATIAL = "separable"
# A cross-section for quick runs: large and small spatial size, first and last conv, the
# biggest Linear and a small one, AlexNet's 11x11 stride-4 conv.
REPRESENTATIVE_LAYERS = (
    "vgg16.features.2",     # 64 -> 64, 224x224
    "vgg16.features.14",    # 256 -> 256, 56x56
    "vgg16.features.28",    # 512 -> 512, 14x14
    "vgg16.classifier.0",   # 25088 -> 4096
    "alexnet.features.0",   # 3 -> 64, 11x11 stride 4
    "alexnet.classifier.6", # 4096 -> 1000
)


@dataclass(frozen=True)
class Layer:
    """Geometry of one Conv2d or Linear of a model, and the input it sees (batch excluded)."""

    model: str                         # "vgg16" or "alexnet"
    name: str                          # qualified name in the model, e.g. "features.28"
    kind: str                          # "conv" or "linear"
    in_channels: int                   # S (conv) or in_features (linear)
    out_channels: int                  # T (conv) or out_features (linear)
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    input_shape: tuple[int, ...] = ()  # (C, H, W) or (F,), captured by a forward hook

    @property
    def id(self) -> str:
        return f"{self.model}.{self.name}"

    @property
    def is_pointwise(self) -> bool:
        return self.kind == "conv" and self.kernel_size == (1, 1)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that apply: SVD for Linear and 1x1 convs, Tucker-2 and CP for k x k."""
        if self.kind == "linear" or self.is_pointwise:
            return ("original", "svd")
        return ("original", "tucker2", "cp")

    def batched_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.input_shape)

    def build(self, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
        """A fresh layer with this geometry and PyTorch's default (random, seeded) init.

        On CUDA the init runs on the GPU's generator (seeded too, different numbers from CPU);
        on ``meta`` nothing is allocated."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            if self.kind == "linear":
                layer = nn.Linear(self.in_channels, self.out_channels, bias=self.bias,
                                  device=device)
            else:
                layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                                  stride=self.stride, padding=self.padding,
                                  dilation=self.dilation, groups=self.groups, bias=self.bias,
                                  device=device)
        finally:
            torch.random.set_rng_state(gen_state)
        return layer.eval()


@dataclass(frozen=True)
class Case:
    """One layer under one method at one rank setting (``fraction`` is None for the original)."""

    layer: Layer
    method: str                        # one of METHODS
    fraction: Fraction | None = None   # share of channels/features kept

    def __post_init__(self):
        if self.method not in self.layer.methods:
            raise ValueError(f"method={self.method!r} does not apply to {self.layer.id} "
                             f"({self.layer.kind}); allowed: {self.layer.methods}")
        if (self.method == "original") != (self.fraction is None):
            raise ValueError(f"fraction must be None for 'original' and a Fraction otherwise; "
                             f"got method={self.method!r}, fraction={self.fraction!r}")

    @property
    def id(self) -> str:
        if self.fraction is None:
            return f"{self.layer.id}:{self.method}"
        return f"{self.layer.id}:{self.method}:{self.fraction}"

    @property
    def ranks(self) -> tuple[int, ...]:
        """() for the original, (R_in, R_out) for Tucker-2, (R,) for CP and SVD."""
        f, s, t = self.fraction, self.layer.in_channels, self.layer.out_channels
        if self.method == "original":
            return ()
        if self.method == "tucker2":
            return (math.ceil(s * f), math.ceil(t * f))
        if self.method == "cp":
            return (math.ceil(t * f),)
        return (math.ceil(min(s, t) * f),)

    def build(self, seed: int = 0, *, fit: bool = True, cp_max_iter: int = 5,
              tucker_max_iter: int = 1, device: str | torch.device = "cpu") -> nn.Module:
        """The original layer (random weights, ``seed``) or its decomposition, in eval mode.

        ``fit=True`` runs the decomposition (``decomp.tucker2_conv2d``, ``cp_conv2d``,
        ``svd_linear``, ``svd_conv1x1``) on the random layer, with few iterations by default:
        the forward cost depends only on the ranks, not on how well the factors fit.
        ``fit=False`` assembles the same ``nn.Sequential`` with the library's own builders
        (``decomp.layers``) and PyTorch's default random init: identical structure and forward
        cost, no factorisation (a full SVD of VGG16's 25088x4096 Linear takes tens of seconds).
        With ``device="meta"`` and ``fit=False`` nothing is allocated: enough for counting.
        """
        if self.method == "original":
            return self.layer.build(seed, device=device)
        if not fit:
            return self._assemble(seed, device)
        from decomp.cp import cp_conv2d
        from decomp.svd import svd_conv1x1, svd_linear
        from decomp.tucker import tucker2_conv2d

        layer = self.layer.build(seed, device=device)
        with torch.no_grad():
            if self.method == "tucker2":
                out = tucker2_conv2d(layer, self.ranks, max_iter=tucker_max_iter)
            elif self.method == "cp":
                out = cp_conv2d(layer, self.ranks[0], max_iter=cp_max_iter, tol=0.0, restarts=0,  # fixed sweeps
                                spatial=CP_SPATIAL)
            elif self.layer.kind == "linear":
                out = svd_linear(layer, self.ranks[0])
            else:
                out = svd_conv1x1(layer, self.ranks[0])
        return out.eval()

    def _assemble(self, seed: int, device) -> nn.Module:
        from decomp.layers import cp_layers, svd_conv1x1_layers, svd_linear_layers, tucker2_layers

        layer = self.layer.build(seed, device="meta")  # geometry only
        builders = {"tucker2": lambda: tucker2_layers(layer, self.ranks, device=device),
                    "cp": lambda: cp_layers(layer, self.ranks[0], device=device, spatial=CP_SPATIAL),
                    "svd": lambda: (svd_linear_layers if self.layer.kind == "linear"
                                    else svd_conv1x1_layers)(layer, self.ranks[0], device=device)}
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return builders[self.method]().eval()
        finally:
            torch.random.set_rng_state(state)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _builder(model: str):
    import torchvision.models as tvm

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    return getattr(tvm, model)


@lru_cache(maxsize=None)
def model_layers(model: str) -> tuple[Layer, ...]:
    """Every Conv2d and Linear of ``model`` in forward order, with the input shape each sees.

    The model is built on the ``meta`` device and run on a meta ``(1, 3, 224, 224)`` input;
    forward hooks record each layer's input shape.
    """
    with torch.device("meta"):
        net = _builder(model)(weights=None).eval()
    found: list[Layer] = []

    def hook(name):
        def record(module, args, _out):
            shape = tuple(args[0].shape[1:])
            if isinstance(module, nn.Linear):
                found.append(Layer(model, name, "linear", module.in_features,
                                   module.out_features, bias=module.bias is not None,
                                   input_shape=shape))
            else:
                if isinstance(module.padding, str):
                    raise ValueError(f"{model}.{name}: string padding {module.padding!r} "
                                     "is not in the catalogue's schema")
                found.append(Layer(model, name, "conv", module.in_channels, module.out_channels,
                                   _pair(module.kernel_size), _pair(module.stride),
                                   _pair(module.padding), _pair(module.dilation),
                                   module.groups, module.bias is not None, shape))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            net(torch.empty((1, *IMAGE_SHAPE), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return tuple(found)


def layers(models: tuple[str, ...] = MODELS) -> tuple[Layer, ...]:
    return tuple(layer for m in models for layer in model_layers(m))


def _layer_cases(layer: Layer) -> list[Case]:
    out = [Case(layer, "original")]
    for method in layer.methods[1:]:
        out += [Case(layer, method, f) for f in FRACTIONS]
    return out


@lru_cache(maxsize=None)
def cases(models: tuple[str, ...] = MODELS) -> tuple[Case, ...]:
    """The full grid: every layer, its original and each method at every fraction."""
    return tuple(c for layer in layers(models) for c in _layer_cases(layer))


@lru_cache(maxsize=None)
def representative_cases() -> tuple[Case, ...]:
    """The cases of ``REPRESENTATIVE_LAYERS``: a quick cross-section of the full grid."""
    return tuple(c for c in cases() if c.layer.id in REPRESENTATIVE_LAYERS)


def layer_by_id(layer_id: str) -> Layer:
    for layer in layers():
        if layer.id == layer_id:
            return layer
    raise ValueError(f"no layer {layer_id!r} in the catalogue; known ids look like "
                     f"'vgg16.features.28' (see decomp.experiments.catalog.layers())")


def case_by_id(case_id: str) -> Case:
    for c in cases():
        if c.id == case_id:
            return c
    raise ValueError(f"no case {case_id!r} in the catalogue; ids look like "
                     f"'vgg16.features.28:tucker2:1/3' or 'vgg16.classifier.0:original'")

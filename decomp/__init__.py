"""decomp: make trained convolutional networks faster and smaller with low-rank decompositions.

Layer decompositions (each returns an ``nn.Sequential`` of stock PyTorch layers):

- :func:`svd_linear` / :func:`svd_conv1x1`: truncated SVD (Girshick, Fast R-CNN 2015), exact
  or randomized (Halko et al. 2011)
- :func:`cp_conv2d`: CP, 1x1 -> kxk depthwise -> 1x1 (default), or Lebedev et al.'s (2014)
  1x1 -> kx1 depthwise -> 1xk depthwise -> 1x1; a CP fit that stops unconverged warns with
  :class:`CPConvergenceWarning`
- :func:`tucker2_conv2d`: Tucker-2, 1x1 -> kxk core -> 1x1 (Kim et al. 2015)

Rank selection: :func:`evbmf` (Nakajima et al. 2013) and the policies of :mod:`decomp.rank`.
Whole models: :func:`decompose` and :func:`build_decomposed`; with ``calibration=`` data the
factors are fitted to each layer's responses (:mod:`decomp.calibration`), with
``budget=MACs(x)`` or ``Latency(x)`` the ranks of all layers are chosen together (:mod:`decomp.budget`).
"""

from .budget import MACs, Latency
from .cp import cp_conv2d
from .cp_als import CPConvergenceWarning
from .measure import count_macs, count_params
from .model import build_decomposed, decompose
from .rank import VBMF, Energy, Fraction
from .report import LayerReport, Report
from .svd import svd_conv1x1, svd_linear
from .tucker import tucker2_conv2d
from .vbmf import VBMFResult, evbmf

__version__ = "0.1.0"

__all__ = [
    "svd_linear",
    "svd_conv1x1",
    "cp_conv2d",
    "CPConvergenceWarning",
    "tucker2_conv2d",
    "evbmf",
    "VBMFResult",
    "decompose",
    "build_decomposed",
    "MACs",
    "Latency",
    "Fraction",
    "Energy",
    "VBMF",
    "Report",
    "LayerReport",
    "count_params",
    "count_macs",
]

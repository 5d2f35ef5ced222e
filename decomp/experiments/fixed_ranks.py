"""A committed run's architecture as a variant of another run (``--ranks-from RUN:VARIANT``).

A latency search finds different architectures on different machines: ``Latency(3)`` chose x3.6
fewer MACs on one 2-core EPYC and x11 on a slower one, whose small convolutions cost 4x more
per call. To train or compare the architecture a search found on the machine you deploy on,
take its per-layer ranks from that run's ``layers.csv``: every layer gets its rank (or is left
as it was) through ``decompose(..., overrides=...)``, and the factors are fitted again,
data-aware on this run's calibration images, as the search's own variant was. The variant's
name says where the ranks came from: ``tucker2+svd-all@ranks-cpu_e40-latency-x3``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from decomp.experiments.usage import UsageError, argument_error

__all__ = ["FixedRanks", "parse_ranks_from"]


def _usage(msg: str) -> UsageError:
    return argument_error("--ranks-from", msg)


class FixedRanks:
    """Per-model layer ranks of one variant of a committed run: ``{model: {layer: ranks or None}}``."""

    def __init__(self, run: Path, variant: str, family: str, ranks: dict[str, dict[str, object]]):
        self.run, self.variant, self.family, self.ranks = run, variant, family, ranks

    @property
    def label(self) -> str:
        """``ranks-<run folder>-<the source variant's rank label>``, e.g. ``ranks-cpu_e40-latency-x3``."""
        return f"ranks-{self.run.name}-{self.variant.partition('@')[2]}"

    def overrides(self, model: str) -> dict[str, object]:
        if model not in self.ranks:
            raise _usage(f"{self.run} has no {self.variant} of {model} (it has {sorted(self.ranks)})")
        return dict(self.ranks[model])


def _ranks(text: str):
    value = json.loads(text)  # "[12, 12]" (Tucker-2) or "16" (SVD)
    return tuple(value) if isinstance(value, list) else int(value)


def parse_ranks_from(text: str) -> FixedRanks:
    """``"results/cifar10/cpu_e40:tucker2+svd-all@latency-x3"`` -> that variant's ranks, checked."""
    run_text, sep, variant = str(text).rpartition(":")
    if not sep or not run_text or not variant:
        raise _usage(f"{text!r}: give RUN:VARIANT, e.g. results/cifar10/cpu_e40:tucker2+svd-all@latency-x3")
    run = Path(run_text)
    layers, summary = run / "layers.csv", run / "summary.csv"
    for f in (layers, summary):
        if not f.is_file():
            raise _usage(f"{text!r}: no {f.name} in {run}")
    with summary.open(newline="") as fh:
        families = {r["variant"]: r.get("family") for r in csv.DictReader(fh)}
    if variant not in families:
        raise _usage(f"{text!r}: {run} has no variant {variant!r}; it has {sorted(v for v in families if v != 'baseline')}")
    ranks: dict[str, dict[str, object]] = {}
    with layers.open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["variant"] != variant:
                continue
            try:
                ranks.setdefault(r["model"], {})[r["name"]] = _ranks(r["ranks"]) if r["method"] and r["ranks"] else None
            except (ValueError, TypeError):
                raise _usage(f"{text!r}: layer {r['name']} has ranks {r['ranks']!r}, not a rank or a list") from None
    if not ranks:
        raise _usage(f"{text!r}: layers.csv of {run} has no layer of {variant}")
    return FixedRanks(run, variant, families[variant], ranks)

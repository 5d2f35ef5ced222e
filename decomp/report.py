"""The per-layer report that :func:`decomp.decompose` returns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["LayerReport", "Report", "describe_layer"]


def describe_layer(layer: nn.Module) -> str:
    """A short description such as ``Conv2d 64->128 3x3 s1 p1`` or ``Linear 4096->1000``."""
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}->{layer.out_features}"
    if isinstance(layer, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in layer.kernel_size)
        s = "x".join(str(v) for v in layer.stride)
        p = layer.padding if isinstance(layer.padding, str) else "x".join(str(v) for v in layer.padding)
        g = f" g{layer.groups}" if layer.groups != 1 else ""
        return f"{type(layer).__name__} {layer.in_channels}->{layer.out_channels} {k} s{s} p{p}{g}"
    return type(layer).__name__


@dataclass
class LayerReport:
    """One layer of the model: what was done to it and what it cost before and after.

    ``macs_*`` are multiply-accumulates for one forward pass at the report's ``input_shape``
    (``None`` where the layer was not reached by that forward pass, or no shape was given);
    ``rel_error`` is ``||W - W_hat||_F / ||W||_F`` of the weight; ``skipped`` is the reason the
    layer was left as it was, ``None`` when it was decomposed. ``info`` holds what the method
    says about its fit: for CP ``converged``, ``n_iter`` (sweeps of all runs), ``restarts``,
    ``stop`` and ``spatial``; for SVD ``svd_algorithm`` and, on the exact path,
    ``optimal_rel_error``.
    """

    name: str
    layer: str
    method: str | None
    ranks: int | tuple[int, int] | None
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    rel_error: float | None = None
    skipped: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def decomposed(self) -> bool:
        return self.skipped is None

    @property
    def param_reduction(self) -> float:
        return self.params_before / self.params_after if self.params_after else float("inf")

    @property
    def mac_reduction(self) -> float | None:
        if self.macs_before is None or not self.macs_after:
            return None
        return self.macs_before / self.macs_after


@dataclass
class Report:
    """Rows of :class:`LayerReport`, plus whole-model totals at ``input_shape``."""

    rows: list[LayerReport]
    input_shape: tuple[int, ...] | None
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    budget: dict[str, Any] | None = None       # decompose(budget=...): target, reached, search seconds
    calibration: dict[str, Any] | None = None  # decompose(calibration=...): samples, seconds

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | str) -> LayerReport:
        if isinstance(key, str):
            for row in self.rows:
                if row.name == key:
                    return row
            raise KeyError(f"no layer named {key!r} in this report; layers: {[r.name for r in self.rows]}")
        return self.rows[key]

    @property
    def decomposed(self) -> list[LayerReport]:
        return [r for r in self.rows if r.decomposed]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.rows if not r.decomposed]

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as JSON-friendly dicts (ranks as lists), e.g. for pandas or a sidecar file."""
        records = []
        for row in self.rows:
            rec = asdict(row)
            if isinstance(rec["ranks"], tuple):
                rec["ranks"] = list(rec["ranks"])
            records.append(rec)
        return records

    def summary(self) -> str:
        if not self.rows:
            return "nothing to decompose: the model has no Conv2d or Linear layers"
        n = len(self.decomposed)
        text = f"{n} of {len(self.rows)} layers decomposed"
        if n == 0:
            reasons = sorted({r.skipped for r in self.rows})
            return f"nothing decomposed: {'; '.join(reasons)}"
        text += f"; params {_si(self.params_before)} -> {_si(self.params_after)} (x{self.params_before / self.params_after:.2f})"
        if self.macs_before and self.macs_after:
            text += f"; MACs {_si(self.macs_before)} -> {_si(self.macs_after)} (x{self.macs_before / self.macs_after:.2f})"
            text += f" at input {tuple(self.input_shape)}"
        if self.budget:
            b = self.budget
            text += f"; budget {b['target']}: reached x{b['reached']:.2f}"
            if "measured" in b:
                text += f" (measured; predicted x{b['predicted']:.2f})"
            text += f", search {b['search_s']:.1f} s, errors from {b['errors_from']}"
        if self.calibration:
            text += (f"; fitted to {self.calibration['samples']} calibration inputs "
                     f"in {self.calibration['seconds']:.1f} s (CP layers stay data-free)")
        return text

    def to_markdown(self) -> str:
        header = ["layer", "type", "method", "ranks", "params", "MACs", "MACs x", "rel. error", "note"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.rows:
            ranks = "" if r.ranks is None else (
                f"({r.ranks[0]}, {r.ranks[1]})" if isinstance(r.ranks, tuple) else str(r.ranks))
            params = _si(r.params_before) if not r.decomposed else f"{_si(r.params_before)} -> {_si(r.params_after)}"
            if r.macs_before is None:
                macs = ""
            elif r.decomposed and r.macs_after is not None:
                macs = f"{_si(r.macs_before)} -> {_si(r.macs_after)}"
            else:
                macs = _si(r.macs_before)
            red = f"{r.mac_reduction:.2f}" if r.decomposed and r.mac_reduction else ""
            err = f"{r.rel_error:.3f}" if r.rel_error is not None else ""
            note = r.skipped or _note(r.info)
            lines.append("| " + " | ".join([r.name, r.layer, r.method or "", ranks, params, macs, red, err, note]) + " |")
        return "\n".join(lines) + "\n\n" + self.summary() + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _note(info: dict[str, Any]) -> str:
    """What a decomposed row's note column says: a data-aware fit's output error, a CP fit that
    stopped unconverged (``info["converged"]`` False, see :func:`decomp.cp_als.cp_als`)."""
    notes = []
    if "output_rel_error" in info:
        notes.append(f"data-aware fit, output error {info['output_rel_error']:.3f}")
    if info.get("converged") is False:
        notes.append(f"CP-ALS unconverged after {info.get('n_iter')} sweeps")
    return "; ".join(notes)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))

"""Results of a faithfulness evaluation: per-step values, means, confidence intervals, the random baseline."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import HIGHER_IS_BETTER, LABELS
from .statistics import Estimate


def _plain(values: list[list[float]] | None) -> list[list[float | None]] | None:
    if values is None:
        return None
    return [[None if math.isnan(value) else value for value in row] for row in values]


@dataclass
class MetricResult:
    """One metric of one attribution method.

    Attributes:
        name: The metric (see :data:`~inseq_ext.evaluation.faithfulness.metrics.METRICS`).
        values: The attribution's value per sequence and generated token (NaN where undefined).
        estimate: Mean over tokens with its bootstrap confidence interval.
        random_values: The random baseline's values (mean over its seeds), per sequence and token.
        random: The random baseline's mean and interval.
        difference: Attribution minus random baseline, paired token by token, with its interval.
    """

    name: str
    values: list[list[float]]
    estimate: Estimate
    random_values: list[list[float]] | None = None
    random: Estimate | None = None
    difference: Estimate | None = None

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.name.split("@")[0]]

    @property
    def mean(self) -> float:
        return self.estimate.mean

    @property
    def ci(self) -> tuple[float, float]:
        return (self.estimate.low, self.estimate.high)

    @property
    def beats_random(self) -> bool | None:
        """True/False when the paired interval excludes 0 (better/worse than random); None when it does not."""
        if self.difference is None or not self.difference.excludes(0.0):
            return None
        return (self.difference.mean > 0) == self.higher_is_better

    def to_dict(self, per_step: bool = True) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "higher_is_better": self.higher_is_better,
            **self.estimate.to_dict(),
            "random": self.random.to_dict() if self.random else None,
            "difference_to_random": self.difference.to_dict() if self.difference else None,
            "beats_random": self.beats_random,
        }
        if per_step:
            entry["values"] = _plain(self.values)
            entry["random_values"] = _plain(self.random_values)
        return entry


@dataclass
class CurveResult:
    """Mean deletion or insertion curve over all evaluated tokens, for the attribution and the random baseline."""

    fractions: tuple[float, ...]
    attribution: list[float]
    random: list[float] | None


@dataclass
class FaithfulnessResult:
    """What :func:`~inseq_ext.evaluation.evaluate_faithfulness` returns.

    Attributes:
        method: The attribution method evaluated.
        metrics: ``name -> MetricResult`` (comprehensiveness and sufficiency are AOPCs over ``ks``).
        per_k: ``"comprehensiveness"/"sufficiency" -> {k label -> MetricResult}``: the value at each ``k``.
        curves: ``"deletion"/"insertion" -> CurveResult`` when those metrics were computed.
        tokens: Per sequence, the evaluated generated tokens: ``{"step", "position", "token"}``.
        settings: The evaluation settings (ks, removal, seeds, ...).
        forward_passes: Forward passes this evaluation ran (cached answers from earlier calls not counted).
    """

    method: str
    metrics: dict[str, MetricResult]
    per_k: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    curves: dict[str, CurveResult] = field(default_factory=dict)
    tokens: list[list[dict[str, Any]]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    forward_passes: int = 0

    def __getitem__(self, metric: str) -> MetricResult:
        return self.metrics[metric]

    @property
    def sequences(self) -> int:
        return len(self.tokens)

    @property
    def steps(self) -> int:
        return sum(len(row) for row in self.tokens)

    def summary(self) -> str:
        """A plain-text table: each metric with its interval, the random baseline and the paired difference."""
        confidence = self.settings.get("confidence", 0.95)
        lines = [
            f"Faithfulness of {self.method}: {self.sequences} sequence(s), {self.steps} generated token(s); "
            f"removal {self.settings.get('removal')}, ks {', '.join(self.settings.get('k_labels', []))}; "
            f"mean [{confidence:.0%} bootstrap CI]; random baseline: {self.settings.get('random_seeds')} seed(s)",
        ]
        header = ("metric", "better", self.method, "random baseline", "difference", "")
        rows = [header]
        for name, metric in self.metrics.items():
            verdict = {True: "beats random", False: "worse than random", None: ""}[metric.beats_random]
            rows.append(
                (
                    LABELS.get(name, name),
                    "higher" if metric.higher_is_better else "lower",
                    metric.estimate.format(),
                    metric.random.format() if metric.random else "-",
                    _signed(metric.difference) if metric.difference else "-",
                    verdict,
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self, per_step: bool = True) -> dict[str, Any]:
        """Everything as plain JSON types (NaN as ``None``); ``per_step=False`` leaves out per-token values."""
        return {
            "method": self.method,
            "settings": self.settings,
            "sequences": self.sequences,
            "steps": self.steps,
            "tokens": self.tokens,
            "metrics": {name: metric.to_dict(per_step) for name, metric in self.metrics.items()},
            "per_k": {
                name: {label: metric.to_dict(per_step) for label, metric in by_k.items()}
                for name, by_k in self.per_k.items()
            },
            "curves": {
                name: {"fractions": list(curve.fractions), "attribution": curve.attribution, "random": curve.random}
                for name, curve in self.curves.items()
            },
        }

    def explorer_summary(self) -> dict[str, Any]:
        """A compact per-method summary for display next to the method's map (e.g. in the HTML explorer).

        ``{"method", "sequences", "steps", "confidence", "metrics": [{"name", "label", "higher_is_better",
        "value", "ci": [low, high], "random", "random_ci", "beats_random"}, ...]}``, plain JSON types.
        """
        entries = []
        for name, metric in self.metrics.items():
            entries.append(
                {
                    "name": name,
                    "label": LABELS.get(name, name),
                    "higher_is_better": metric.higher_is_better,
                    "value": _none(metric.estimate.mean),
                    "ci": [_none(metric.estimate.low), _none(metric.estimate.high)],
                    "random": _none(metric.random.mean) if metric.random else None,
                    "random_ci": [_none(metric.random.low), _none(metric.random.high)] if metric.random else None,
                    "beats_random": metric.beats_random,
                }
            )
        return {
            "method": self.method,
            "sequences": self.sequences,
            "steps": self.steps,
            "confidence": self.settings.get("confidence"),
            "metrics": entries,
        }

    def explorer_metrics(self, per_generation: bool = False, digits: int = 3) -> dict[str, float | list[float | None]]:
        """``{metric label: value}`` for the explorer's method menu (``write_explorer(..., metrics={method: ...})``).

        Args:
            per_generation: One value per sequence (its mean over tokens; ``None`` where undefined) instead of the
                mean over all tokens, for an explorer holding one page per generation.
            digits: Rounding of the values.
        """
        entries: dict[str, float | list[float | None]] = {}
        for name, metric in self.metrics.items():
            label = LABELS.get(name, name)
            if per_generation:
                entries[label] = [_round(_row_mean(row), digits) for row in metric.values]
            elif not math.isnan(metric.mean):
                entries[label] = round(metric.mean, digits)
        return entries

    def plot_curves(self, path: str | os.PathLike) -> Path:
        """Write the mean deletion and insertion curves (attribution vs random baseline) as a PNG."""
        from .plots import plot_curves

        return plot_curves(self, path)


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _row_mean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan


def _round(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def _signed(estimate: Estimate) -> str:
    text = estimate.format()
    return text if text.startswith("-") or text == "n/a" else "+" + text

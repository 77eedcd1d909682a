"""Several attribution methods on the same generations: one table, ranked, with the random baseline.

:func:`compare_methods` evaluates one output (or list of outputs) per method with a shared
:class:`~inseq_ext.evaluation.faithfulness.scorer.ProbabilityScorer`, so the random baseline of the generations is
computed once and is the same row for every method. Methods are ranked by comprehensiveness AOPC; adjacent
methods get a paired bootstrap interval of their difference (same tokens, same resamples), so "A beats B" comes
with a margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inseq.data import FeatureAttributionOutput

from .evaluate import evaluate_faithfulness
from .metrics import COMPREHENSIVENESS, HIGHER_IS_BETTER, LABELS
from .result import FaithfulnessResult
from .scorer import DEFAULT_BATCH_TOKENS, ProbabilityScorer
from .statistics import Estimate, bootstrap_estimate, paired_differences

RANDOM_ROW = "random baseline"


@dataclass
class MethodComparison:
    """Faithfulness results of several methods on the same generations.

    Attributes:
        results: ``method -> FaithfulnessResult``, in the order evaluated.
        ranking_metric: The metric the table is ranked by (comprehensiveness AOPC by default).
        failures: ``method -> error message`` for methods that could not be attributed or evaluated.
        title: A line describing the setting (model, prompts), shown above the table.
    """

    results: dict[str, FaithfulnessResult]
    ranking_metric: str = COMPREHENSIVENESS
    failures: dict[str, str] = field(default_factory=dict)
    title: str = ""

    @property
    def metrics(self) -> list[str]:
        first = next(iter(self.results.values()), None)
        return list(first.metrics) if first else []

    def ranked(self) -> list[str]:
        """Methods from best to worst on :attr:`ranking_metric` (methods without a value last)."""
        sign = 1 if HIGHER_IS_BETTER[self.ranking_metric] else -1

        def key(method: str) -> float:
            value = self.results[method].metrics[self.ranking_metric].mean
            return math.inf if math.isnan(value) else -sign * value

        return sorted(self.results, key=key)

    def difference(self, first: str, second: str, metric: str | None = None) -> Estimate:
        """``first - second`` on ``metric``, paired token by token, with its bootstrap interval."""
        metric = metric or self.ranking_metric
        a, b = self.results[first], self.results[second]
        settings = a.settings
        return bootstrap_estimate(
            paired_differences(a.metrics[metric].values, b.metrics[metric].values),
            settings.get("bootstrap", 1000),
            settings.get("confidence", 0.95),
            settings.get("seed", 0),
        )

    def adjacent_differences(self, metric: str | None = None) -> list[tuple[str, str, Estimate]]:
        """Each ranked method against the next one: ``(better, next, difference)``."""
        order = self.ranked()
        return [(a, b, self.difference(a, b, metric)) for a, b in zip(order, order[1:], strict=False)]

    def rows(self, digits: int = 3) -> list[list[str]]:
        """Table cells: header, one row per method (ranked), the random baseline row."""
        metrics = self.metrics
        header = ["rank", "method"] + [f"{LABELS.get(m, m)} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics]
        rows = [header]
        for rank, method in enumerate(self.ranked(), start=1):
            cells = []
            for metric in metrics:
                result = self.results[method].metrics[metric]
                mark = "*" if result.beats_random else ""
                cells.append(result.estimate.format(digits) + mark)
            rows.append([str(rank), method, *cells])
        first = next(iter(self.results.values()), None)
        if first is not None and all(first.metrics[m].random is not None for m in metrics):
            rows.append(["-", RANDOM_ROW, *[first.metrics[m].random.format(digits) for m in metrics]])
        return rows

    def table(self, markdown: bool = False, digits: int = 3) -> str:
        """The ranked table as aligned text (terminal) or Markdown, with a legend line."""
        rows = self.rows(digits)
        lines = [self.title] if self.title else []
        if markdown:
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
            lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        else:
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.append(self.legend())
        for method, message in self.failures.items():
            lines.append(f"{method}: not evaluated ({message})")
        return "\n".join(lines) + "\n"

    def legend(self) -> str:
        first = next(iter(self.results.values()), None)
        settings = first.settings if first else {}
        return (
            f"mean [{settings.get('confidence', 0.95):.0%} bootstrap CI over tokens and prompts]; * = beats the "
            f"random baseline (paired CI excludes 0); ranked by {LABELS[self.ranking_metric]}; ks "
            f"{', '.join(settings.get('k_labels', []))}, removal {settings.get('removal')}; random baseline: "
            f"{settings.get('random_seeds')} seeds"
        )

    def differences_text(self) -> str:
        """One line per adjacent pair in the ranking: the paired difference and whether it is distinguishable."""
        lines = []
        for better, other, estimate in self.adjacent_differences():
            verdict = "distinguishable" if estimate.excludes(0.0) else "not distinguishable at this sample size"
            lines.append(f"{better} - {other} ({LABELS[self.ranking_metric]}): {estimate.format()} -> {verdict}")
        return "\n".join(lines)

    def to_dict(self, per_step: bool = True) -> dict[str, Any]:
        return {
            "title": self.title,
            "ranking_metric": self.ranking_metric,
            "ranking": self.ranked(),
            "results": {method: result.to_dict(per_step) for method, result in self.results.items()},
            "adjacent_differences": [
                {"better": a, "other": b, **estimate.to_dict()} for a, b, estimate in self.adjacent_differences()
            ],
            "failures": self.failures,
        }

    def explorer_metrics(self, per_generation: bool = False) -> dict[str, dict[str, Any]]:
        """``method -> {metric label: value}``: the ``metrics=`` argument of the explorer's multi-method page."""
        return {method: result.explorer_metrics(per_generation) for method, result in self.results.items()}

    def explorer_summaries(self) -> dict[str, dict[str, Any]]:
        """``method -> FaithfulnessResult.explorer_summary()``: what the explorer shows next to each map."""
        return {method: result.explorer_summary() for method, result in self.results.items()}


def compare_methods(
    attribution_model: Any,
    outputs: Mapping[str, FeatureAttributionOutput | Sequence[FeatureAttributionOutput]],
    ranking_metric: str = COMPREHENSIVENESS,
    scorer: ProbabilityScorer | None = None,
    title: str = "",
    **evaluate_kwargs: Any,
) -> MethodComparison:
    """Evaluate each method's output(s) on the same generations and rank them.

    Args:
        attribution_model: The inseq model whose weights score the perturbed inputs (any of the methods' models
            with these weights: e.g. the SDPA model also for outputs of ``attention``, computed on an eager copy).
        outputs: ``method -> output or list of outputs`` (the same generations for every method).
        ranking_metric: Metric to rank by; it must be among the evaluated metrics.
        scorer: A shared scorer (one is made if not given).
        title: Shown above the table.
        **evaluate_kwargs: Passed to :func:`~inseq_ext.evaluation.evaluate_faithfulness` (metrics, ks, ...).
    """
    if scorer is None:
        batch_tokens = evaluate_kwargs.pop("batch_tokens", DEFAULT_BATCH_TOKENS)
        scorer = ProbabilityScorer(attribution_model.model, batch_tokens=batch_tokens)
    results = {
        method: evaluate_faithfulness(attribution_model, output, scorer=scorer, method=method, **evaluate_kwargs)
        for method, output in outputs.items()
    }
    comparison = MethodComparison(results, ranking_metric=ranking_metric, title=title)
    if results and ranking_metric not in comparison.metrics:
        raise ValueError(f"ranking_metric {ranking_metric!r} was not evaluated; evaluated: {comparison.metrics}.")
    return comparison

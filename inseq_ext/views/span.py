"""Span targets: the combined attribution map of several consecutive generated tokens (or words, sentences...).

inseq attributes generation step by step: column ``t`` of an output is the map ``A[:, t]`` of the step that produced
generated token ``t`` (Sarti et al., 2023). For a span ``T`` of generated units and an attributed unit ``i``:

    sum   (default)  S[i] = sum_{t in T} A[i, t]      total influence of i on producing the whole span
    mean             S[i] = S_sum[i] / |T_i|          average over the steps where i was attributed
    max              S[i] = max_{t in T} A[i, t]      strongest single-step influence
    absmax           the signed A[i, t] of largest magnitude over t in T

The sum keeps additive methods additive: for gradient x input, whose map of a step approximately decomposes that
step's output (Shrikumar et al., 2016; Ancona et al., 2018), the summed map decomposes the sum of the span's step
outputs (e.g. the span's log-probability with ``attributed_fn="logprob"``).

NaN entries (a unit not yet visible at a step, e.g. later generated text) are skipped; a unit is NaN only when it
is NaN at every step of the span. Alternatives not offered here but easy with the returned maps: attribute the span
as a single target (e.g. inseq's ``contrast_prob_diff`` or a custom step function over the span's log-probability
sum), which measures influence on the joint probability instead of summing per-step maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

from .granularity import UnitView, unit_view

SPAN_REDUCTIONS = ("sum", "mean", "max", "absmax")


def reduce_steps(scores: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """Combine the columns (generated steps) of a ``units x steps`` score matrix, skipping NaN entries."""
    if reduce not in SPAN_REDUCTIONS:
        raise ValueError(f"Unknown reduce {reduce!r}; choose one of {', '.join(SPAN_REDUCTIONS)}.")
    missing = scores.isnan()
    all_missing = missing.all(dim=1)
    if reduce == "sum":
        combined = scores.nansum(dim=1)
    elif reduce == "mean":
        combined = scores.nanmean(dim=1)
    elif reduce == "max":
        combined = scores.masked_fill(missing, float("-inf")).max(dim=1).values
    else:
        magnitude = scores.abs().masked_fill(missing, -1.0)
        combined = scores.gather(1, magnitude.argmax(dim=1, keepdim=True)).squeeze(1)
    return combined.masked_fill(all_missing, float("nan"))


@dataclass
class SpanAttribution:
    """Combined map of a span of generated units.

    ``source_scores[i]`` belongs to ``source[i]`` (encoder-decoder inputs; ``None`` for decoder-only models), and
    ``target_scores[j]`` to ``target[j]`` (decoder-only: the prompt and the generation; encoder-decoder: the
    target prefix, when attributed). Units after the span are NaN.
    """

    span: tuple[int, int]
    generated: list[str]
    source: list[str]
    source_scores: torch.Tensor | None
    target: list[str]
    target_scores: torch.Tensor | None
    reduce: str

    @property
    def text(self) -> str:
        """The span's text."""
        return "".join(self.generated[self.span[0] : self.span[1]])

    def scores(self) -> list[tuple[str, str, float]]:
        """``(axis, unit text, score)`` for every attributed unit with a score, in reading order."""
        rows = []
        for axis, texts, values in (
            ("source", self.source, self.source_scores),
            ("target", self.target, self.target_scores),
        ):
            if values is None:
                continue
            rows += [(axis, text, float(v)) for text, v in zip(texts, values.tolist(), strict=False) if v == v]
        return rows


def resolve_span(view: UnitView, start: int, end: int | None) -> tuple[int, int]:
    """Validate ``start``/``end`` (generated-unit indices, ``end`` exclusive, negatives from the end)."""
    count = view.generated_end - view.generated_start
    end = start + 1 if end is None else end
    start_index = start + count if start < 0 else start
    end_index = end + count if end < 0 else end
    if not 0 <= start_index < end_index <= count:
        raise ValueError(
            f"Span ({start}, {end}) is not a non-empty range of the {count} generated units {view.generated}; "
            f"use 0 <= start < end <= {count}."
        )
    return start_index, end_index


def span_attribution(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    start: int,
    end: int | None = None,
    reduce: str = "sum",
    sequence: int = 0,
    granularity: str = "token",
    tokenizer: Any = None,
    select: Mapping[str, int] | None = None,
) -> SpanAttribution:
    """The combined attribution of generated units ``start..end-1`` (see the module docstring for ``reduce``).

    Args:
        output: Any inseq attribution output (or one sequence attribution).
        start: First generated unit of the span (0: the first generated token/word/...; negative: from the end).
        end: One past the last unit (default ``start + 1``: a single unit).
        reduce: ``"sum"`` (default), ``"mean"``, ``"max"`` or ``"absmax"``.
        sequence: Which sequence of the output.
        granularity: Units of both axes: ``"token"``, ``"word"``, ``"sentence"``, ``"line"``, ``"paragraph"``.
        tokenizer: Optional tokenizer (or inseq model) used to decode tokens.
        select: Layer/head for multi-dimensional outputs, e.g. ``{"layer": 1}``; default: inseq's aggregation.
    """
    if reduce not in SPAN_REDUCTIONS:
        raise ValueError(f"Unknown reduce {reduce!r}; choose one of {', '.join(SPAN_REDUCTIONS)}.")
    view = unit_view(output, sequence, granularity, tokenizer, select)
    first, last = resolve_span(view, start, end)
    return SpanAttribution(
        span=(first, last),
        generated=view.generated,
        source=view.source if view.source_scores is not None else [],
        source_scores=None if view.source_scores is None else reduce_steps(view.source_scores[:, first:last], reduce),
        target=view.target[: view.target_scores.shape[0]] if view.target_scores is not None else [],
        target_scores=None if view.target_scores is None else reduce_steps(view.target_scores[:, first:last], reduce),
        reduce=reduce,
    )

"""Look up one score: "when generating *Washington*, what is the importance of *America*?"."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

from .granularity import unit_view

_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u2026"


def _matches(texts: list[str], wanted: str) -> list[int]:
    """Indices of units whose stripped text equals ``wanted``; if none, ignoring surrounding punctuation."""
    wanted = wanted.strip()
    exact = [idx for idx, text in enumerate(texts) if text.strip() == wanted]
    if exact:
        return exact
    bare = wanted.strip(_PUNCTUATION)
    return [idx for idx, text in enumerate(texts) if bare and text.strip().strip(_PUNCTUATION) == bare]


def _pick(
    kind: str, wanted: str, candidates: list[int], occurrence: int | None, available: list[str], hint: str = ""
) -> int:
    if not candidates:
        shown = ", ".join(repr(text.strip()) for text in dict.fromkeys(available) if text.strip())
        raise ValueError(f"{kind} {wanted!r} is absent. Available {kind} units: {shown}.{hint}")
    if occurrence is None:
        if len(candidates) > 1:
            raise ValueError(
                f"{kind} {wanted!r} is ambiguous: it occurs {len(candidates)} times; pass "
                f"{kind}_occurrence=1..{len(candidates)} to choose one."
            )
        return candidates[0]
    if not isinstance(occurrence, int) or not 1 <= occurrence <= len(candidates):
        raise ValueError(
            f"{kind}_occurrence={occurrence!r} is out of range: {kind} {wanted!r} occurs {len(candidates)} time(s); "
            f"use 1..{len(candidates)}."
        )
    return candidates[occurrence - 1]


def score_of(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    source: str,
    target: str,
    source_occurrence: int | None = None,
    target_occurrence: int | None = None,
    granularity: str = "token",
    sequence: int = 0,
    tokenizer: Any = None,
    select: Mapping[str, int] | None = None,
) -> float:
    """The attribution score of ``source`` when the model generated ``target``.

    ``target`` is looked up among the generated units; ``source`` among the units attributed at that step, in
    reading order: the input text, then (decoder-only models, or encoder-decoders attributed with
    ``attribute_target=True``) the text generated before ``target``. Units match by their decoded text with
    surrounding blanks removed (``"America"`` matches the token ``ĠAmerica``), or, when nothing matches exactly,
    also ignoring surrounding punctuation (``"Washington"`` matches ``"Washington."``).

    Args:
        output: Any inseq attribution output (or one sequence attribution).
        source: Text of the attributed unit.
        target: Text of the generated unit.
        source_occurrence: Which occurrence of ``source`` (1 = first) when its text occurs several times; by
            default it must occur once, else a ``ValueError`` lists the choices.
        target_occurrence: The same for ``target``.
        granularity: ``"token"`` or ``"word"`` (or ``"sentence"``, ``"line"``, ``"paragraph"``).
        sequence: Which sequence of the output.
        tokenizer: Optional tokenizer (or inseq model) used to decode tokens.
        select: Layer/head for multi-dimensional outputs, e.g. ``{"layer": 1}``; default: inseq's aggregation.

    Returns:
        The score, a float: inseq's default aggregation (what ``out.show()`` shows), word scores summed over
        their tokens.
    """
    view = unit_view(output, sequence, granularity, tokenizer, select)
    hint = " (These are tokens; granularity='word' matches whole words.)" if granularity == "token" else ""
    generated = view.generated
    column = _pick("target", target, _matches(generated, target), target_occurrence, generated, hint)
    target_position = view.generated_start + column
    rows: list[tuple[str, int]] = []
    if view.source_scores is not None:
        rows += [("source", idx) for idx in range(len(view.source))]
    if view.target_scores is not None:
        rows += [("target", idx) for idx in range(min(target_position, view.target_scores.shape[0]))]
    texts = [view.source[idx] if axis == "source" else view.target[idx] for axis, idx in rows]
    axis, row = rows[_pick("source", source, _matches(texts, source), source_occurrence, texts, hint)]
    scores = view.source_scores if axis == "source" else view.target_scores
    return float(scores[row, column])

"""Attribution maps in the terminal (colored text) and as a top-k bar chart PNG.

The text view prints the attributed text with every unit's background colored by its score for one generated
unit or span (red: positive, blue: negative, stronger: larger magnitude). Without color (output not a terminal,
``NO_COLOR`` set, ``TERM=dumb`` or ``color=False``) each scored unit is followed by its score in brackets.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

from ..files import atomic_output
from .explorer import NEGATIVE_RGB, POSITIVE_RGB
from .granularity import unit_view
from .lookup import _matches, _pick
from .span import SpanAttribution, span_attribution

Output = FeatureAttributionOutput | FeatureAttributionSequenceOutput


def color_supported(stream: TextIO | None = None) -> bool:
    """Whether to emit ANSI colors: a terminal, ``NO_COLOR`` unset (https://no-color.org) and ``TERM`` not dumb."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def _span(
    output: Output,
    target: int | str,
    end: int | None,
    occurrence: int | None,
    sequence: int,
    granularity: str,
    tokenizer: Any,
    select: Mapping[str, int] | None,
    reduce: str,
) -> SpanAttribution:
    """The span map for a generated unit given by index or by text (``occurrence``-th, see ``score_of``)."""
    if isinstance(target, str):
        generated = unit_view(output, sequence, granularity, tokenizer, select).generated
        target = _pick("target", target, _matches(generated, target), occurrence, generated)
        end = target + 1 if end is None else end
    return span_attribution(output, target, end, reduce, sequence, granularity, tokenizer, select)


def _background(value: float, scale: float) -> str:
    """ANSI 24-bit background: white blended towards red/blue by ``|value| / scale``, with black text."""
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    base = POSITIVE_RGB if value >= 0 else NEGATIVE_RGB
    red, green, blue = (round(255 - alpha * (255 - channel)) for channel in base)
    return f"\x1b[30;48;2;{red};{green};{blue}m"


def format_attribution(
    output: Output,
    target: int | str,
    end: int | None = None,
    occurrence: int | None = None,
    granularity: str = "token",
    sequence: int = 0,
    color: bool | None = None,
    stream: TextIO | None = None,
    tokenizer: Any = None,
    select: Mapping[str, int] | None = None,
    reduce: str = "sum",
) -> str:
    """The attributed text with each unit colored (or followed by ``[score]``) for a generated unit or span.

    Args:
        output: Any inseq attribution output.
        target: The generated unit: its index among the generated units (negative: from the end) or its text.
        end: One past the last generated unit of a span (default: just ``target``).
        occurrence: Which occurrence of a ``target`` text (1 = first), when it occurs several times.
        granularity: ``"token"``, ``"word"``, ``"sentence"``, ``"line"`` or ``"paragraph"``.
        sequence: Which sequence of the output.
        color: Force ANSI colors on or off; default: :func:`color_supported` on ``stream``.
        stream: Where the text will be written (for color detection; default ``sys.stdout``).
        tokenizer: Optional tokenizer (or inseq model) used to decode tokens.
        select: Layer/head for multi-dimensional outputs, e.g. ``{"layer": 1}``.
        reduce: How the span's maps combine (see :mod:`inseq_ext.views.span`).
    """
    span = _span(output, target, end, occurrence, sequence, granularity, tokenizer, select, reduce)
    use_color = color_supported(stream) if color is None else color
    values = [v for scores in (span.source_scores, span.target_scores) if scores is not None for v in scores.tolist()]
    scale = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
    lines = [
        f"Generating {span.text.strip()!r} ({reduce} over generated units {span.span[0]}..{span.span[1] - 1}; "
        f"max |score| {scale:.3g})"
    ]
    view = unit_view(output, sequence, granularity, tokenizer, select)
    span_rows = range(view.generated_start + span.span[0], view.generated_start + span.span[1])
    pieces = []
    for axis, texts, scores in (
        ("source", span.source, span.source_scores),
        ("target", view.target, span.target_scores),
    ):
        if axis == "target" and span.source_scores is not None:
            pieces.append("\n=> ")  # encoder-decoder: the generation follows on its own line
        for idx, text in enumerate(texts):
            value = scores[idx].item() if scores is not None and idx < len(scores) else float("nan")
            in_span = axis == "target" and idx in span_rows
            if use_color:
                style = ("\x1b[1;4m" if in_span else "") + ("" if math.isnan(value) else _background(value, scale))
                pieces.append(f"{style}{text}\x1b[0m" if style else text)
            else:
                stripped = text.lstrip()
                marked = f"{text[: len(text) - len(stripped)]}[[{stripped}]]" if in_span else text
                pieces.append(marked if math.isnan(value) else f"{marked}[{value:.3g}]")
    lines.append("".join(pieces))
    return "\n".join(lines)


def print_attribution(output: Output, target: int | str, stream: TextIO | None = None, **kwargs: Any) -> None:
    """Print :func:`format_attribution` to ``stream`` (default ``sys.stdout``); same keyword arguments."""
    stream = stream if stream is not None else sys.stdout
    print(format_attribution(output, target, stream=stream, **kwargs), file=stream)


@dataclass(frozen=True)
class RankedUnit:
    """An attributed unit with its score; ``axis``/``index`` locate it in the span map."""

    text: str
    axis: str
    index: int
    score: float


def top_k(
    output: Output,
    target: int | str,
    k: int = 10,
    end: int | None = None,
    occurrence: int | None = None,
    granularity: str = "token",
    sequence: int = 0,
    tokenizer: Any = None,
    select: Mapping[str, int] | None = None,
    reduce: str = "sum",
) -> list[RankedUnit]:
    """The ``k`` attributed units of largest ``|score|`` for a generated unit or span, largest first."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: give a positive number of units to show.")
    span = _span(output, target, end, occurrence, sequence, granularity, tokenizer, select, reduce)
    ranked = [
        RankedUnit(text, axis, idx, value)
        for axis, texts, scores in (
            ("source", span.source, span.source_scores),
            ("target", span.target, span.target_scores),
        )
        if scores is not None
        for idx, (text, value) in enumerate(zip(texts, scores.tolist(), strict=False))
        if not math.isnan(value)
    ]
    return sorted(ranked, key=lambda unit: -abs(unit.score))[:k]


def top_k_bar_chart(
    output: Output,
    path: str | os.PathLike,
    target: int | str,
    k: int = 10,
    **kwargs: Any,
) -> Path:
    """Save a horizontal bar chart of the ``k`` most important attributed units as PNG (written atomically).

    Takes the arguments of :func:`top_k` (``end``, ``occurrence``, ``granularity``, ``sequence``, ``select``, ...).
    Bars are red for positive and blue for negative scores; labels carry the unit's position (``#i``) so that
    repeated words stay apart.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = top_k(output, target, k, **kwargs)
    span = _span(
        output,
        target,
        kwargs.get("end"),
        kwargs.get("occurrence"),
        kwargs.get("sequence", 0),
        kwargs.get("granularity", "token"),
        kwargs.get("tokenizer"),
        kwargs.get("select"),
        kwargs.get("reduce", "sum"),
    )
    labels = [f"{(unit.text.strip() or repr(unit.text))} #{unit.index}" for unit in ranked][::-1]
    scores = [unit.score for unit in ranked][::-1]
    figure = Figure(figsize=(6.5, 0.35 * len(ranked) + 1.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = [tuple(c / 255 for c in (POSITIVE_RGB if s >= 0 else NEGATIVE_RGB)) for s in scores]
    axes.barh(range(len(scores)), scores, color=colors)
    axes.set_yticks(range(len(labels)), labels, fontsize=9)
    axes.axvline(0, color="#444", linewidth=0.8)
    axes.set_xlabel("attribution score")
    axes.set_title(f"Top {len(ranked)} when generating {span.text.strip()!r}", fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return Path(path)

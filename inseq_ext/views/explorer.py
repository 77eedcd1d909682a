"""A standalone, offline HTML explorer of attribution outputs (one file, script and style inline).

Open the file in a browser: the prompt and the generation are shown as text. Hovering or clicking a generated
token colors the prompt (and the text generated before it) by that token's attribution; shift-click or drag
selects a span of generated tokens and shows its summed map (:func:`inseq_ext.views.span.span_attribution` with
``reduce="sum"``). Controls switch the granularity (token / word / sentence / line / paragraph), the layer and
head of multi-dimensional methods (inseq's ``attention``, ``block_gradient_x_input``) and the color scale; each
unit shows its raw score on hover. Several outputs or sequences go into one file, with a selector.

Python computes every token-level score matrix and the unit groupings (:mod:`inseq_ext.views.granularity`) and embeds
them as JSON; the page only sums cells, so the numbers it shows equal :func:`~inseq_ext.views.span.span_attribution`'s.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

from ..files import atomic_output
from .granularity import GRANULARITIES, extra_dimensions, group_tokens, special_token_mask, to_2d, token_texts

# Colors of positive and negative scores; the opacity is |score| / scale, capped at 1.
POSITIVE_RGB = (214, 39, 40)
NEGATIVE_RGB = (31, 119, 180)
ALL = "*"  # view key part meaning "reduced over this axis"


def score_color(value: float | None, scale: float) -> str:
    """CSS background of a score: red (positive) or blue (negative) with opacity ``min(1, |value| / scale)``.

    The explorer's script uses the same formula, rounding the opacity to 3 decimals.
    """
    if value is None or value != value or scale <= 0:
        return "transparent"
    red, green, blue = POSITIVE_RGB if value >= 0 else NEGATIVE_RGB
    alpha = round(min(1.0, abs(value) / scale), 3)
    return f"rgba({red}, {green}, {blue}, {alpha:g})"


def _number(value: float) -> float | None:
    """JSON-safe number: NaN becomes null, 7 significant digits are kept (float32 precision)."""
    return None if value != value or math.isinf(value) else float(f"{value:.7g}")


def _matrix(seq: FeatureAttributionSequenceOutput, columns: int) -> list[list[float | None]]:
    """Source rows (encoder-decoder) then one row per target token, by generated columns; NaN: not attributed."""
    parts = [] if seq.source_attributions is None else [seq.source_attributions]
    target = seq.target_attributions if seq.target_attributions is not None else torch.zeros((0, columns))
    missing = len(seq.target) - target.shape[0]
    parts += [target, torch.full((max(missing, 0), columns), float("nan"))]
    merged = torch.cat([part.float() for part in parts])
    return [[_number(v) for v in row] for row in merged.tolist()]


def _view_keys(sizes: list[int], max_views: int) -> list[tuple[Any, ...]]:
    """Layer/head combinations to embed: all of them if they fit, else one axis picked at a time."""
    options = [[ALL, *range(size)] for size in sizes]
    every = list(itertools.product(*options))
    if len(every) <= max_views:
        return every
    single = [tuple(ALL for _ in sizes)]
    for axis, size in enumerate(sizes):
        single += [tuple(idx if k == axis else ALL for k in range(len(sizes))) for idx in range(size)]
    return single if len(single) <= max_views else single[:1]


def _sequence_payload(
    seq: FeatureAttributionSequenceOutput,
    title: str,
    info: Mapping[str, Any],
    tokenizer: Any,
    granularities: Sequence[str],
    max_cells: int,
) -> dict[str, Any]:
    # Decoder-only outputs have no source scores: their prompt is the start of the target sequence.
    source_tokens = list(seq.source) if seq.source_attributions is not None else []
    target_texts = token_texts(seq.target, tokenizer)
    source_texts = token_texts(source_tokens, tokenizer) if source_tokens else []
    target_special = special_token_mask(seq.target, tokenizer)
    source_special = special_token_mask(source_tokens, tokenizer) if source_tokens else []
    offset = len(source_tokens)
    columns = seq.attr_pos_end - seq.attr_pos_start
    rows = [
        {"text": text, "raw": tok.token, "special": special, "axis": "source", "index": idx}
        for idx, (tok, text, special) in enumerate(zip(source_tokens, source_texts, source_special, strict=True))
    ]
    rows += [
        {"text": text, "raw": tok.token, "special": special, "axis": "target", "index": idx}
        for idx, (tok, text, special) in enumerate(zip(seq.target, target_texts, target_special, strict=True))
    ]

    units_by_granularity = {}
    for granularity in granularities:
        units = []
        source_groups = group_tokens(source_texts, granularity, source_special) if source_tokens else []
        target_groups = group_tokens(target_texts, granularity, target_special, breaks=(seq.attr_pos_start,))
        for axis, groups, texts, specials, base in (
            ("source", source_groups, source_texts, source_special, 0),
            ("target", target_groups, target_texts, target_special, offset),
        ):
            generated_index = 0
            for index, (start, end) in enumerate(groups):
                unit = {
                    "axis": axis,
                    "index": index,
                    "rows": [base + start, base + end],
                    "text": "".join(texts[start:end]),
                    "special": all(specials[start:end]),
                    "panel": "prompt" if axis == "source" or start < seq.attr_pos_start else "generation",
                }
                if axis == "target" and seq.attr_pos_start <= start < seq.attr_pos_end:
                    unit["columns"] = [start - seq.attr_pos_start, min(end, seq.attr_pos_end) - seq.attr_pos_start]
                    unit["generated"] = generated_index
                    generated_index += 1
                units.append(unit)
        units_by_granularity[granularity] = units

    dims = extra_dimensions(seq)
    sizes = [dim.size for dim in dims]
    cells = len(rows) * max(columns, 1)
    keys = _view_keys(sizes, max(1, max_cells // max(cells, 1)))
    views = {}
    for key in keys:
        select = {dim.name: idx for dim, idx in zip(dims, key, strict=True) if idx != ALL}
        flat = to_2d(seq, select or None)
        views["|".join(str(part) for part in key)] = _matrix(flat, columns)

    step_scores = {
        name: [_number(v) for v in scores.float().tolist()]
        for name, scores in (seq.step_scores or {}).items()
        if isinstance(scores, torch.Tensor) and scores.ndim == 1
    }
    return {
        "title": title,
        "method": info.get("attribution_method", ""),
        "model": str(info.get("model_name", "")),
        "rows": rows,
        "columns": columns,
        "units": units_by_granularity,
        "dims": [{"name": dim.name, "labels": dim.labels} for dim in dims],
        "views": views,
        "stepScores": step_scores,
    }


def _flatten(
    output_or_outputs: FeatureAttributionOutput | FeatureAttributionSequenceOutput | Sequence[Any],
) -> list[tuple[FeatureAttributionSequenceOutput, Mapping[str, Any]]]:
    items = output_or_outputs if isinstance(output_or_outputs, list | tuple) else [output_or_outputs]
    flat = []
    for item in items:
        if isinstance(item, FeatureAttributionOutput):
            flat += [(seq, item.info) for seq in item.sequence_attributions]
        elif isinstance(item, FeatureAttributionSequenceOutput):
            flat.append((item, {}))
        else:
            raise ValueError(
                f"write_explorer takes inseq attribution outputs (FeatureAttributionOutput or a sequence "
                f"attribution), or a list of them; got {type(item).__name__}."
            )
    if not flat:
        raise ValueError("Nothing to show: the output holds no sequence attribution.")
    return flat


def explorer_payload(
    output_or_outputs: FeatureAttributionOutput | FeatureAttributionSequenceOutput | Sequence[Any],
    tokenizer: Any = None,
    titles: Sequence[str] | None = None,
    granularities: Sequence[str] = ("token", "word", "sentence", "line", "paragraph"),
    max_cells: int = 4_000_000,
) -> dict[str, Any]:
    """The data embedded in the explorer (see :func:`write_explorer` for the arguments)."""
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise ValueError(f"Unknown granularity {granularity!r}; choose from {', '.join(GRANULARITIES)}.")
    flat = _flatten(output_or_outputs)
    if titles is not None and len(titles) != len(flat):
        raise ValueError(f"titles has {len(titles)} entries but there are {len(flat)} sequences to show.")
    sequences = []
    for idx, (seq, info) in enumerate(flat):
        method = info.get("attribution_method", "")
        prompt = "".join(token_texts(seq.target[: seq.attr_pos_start], tokenizer)).strip() or "".join(
            token_texts(seq.source, tokenizer)
        )
        title = titles[idx] if titles is not None else f"{idx + 1}. {method + ': ' if method else ''}{prompt[:60]}"
        sequences.append(_sequence_payload(seq, title, info, tokenizer, granularities, max_cells))
    return {"sequences": sequences, "granularities": list(granularities), "colors": [POSITIVE_RGB, NEGATIVE_RGB]}


def _asset(name: str) -> str:
    return resources.files("inseq_ext.views").joinpath("explorer_assets", name).read_text(encoding="utf-8")


def explorer_html(payload: Mapping[str, Any], title: str = "inseq_ext explorer") -> str:
    """The self-contained page for a payload from :func:`explorer_payload`."""
    # "</" inside the JSON could close the script element early; "<\/" is the same string to JSON.
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = _asset("explorer.html")
    return (
        page.replace("{{TITLE}}", html.escape(title))
        .replace("/*{{CSS}}*/", _asset("explorer.css"))
        .replace("/*{{JS}}*/", _asset("explorer.js"))
        .replace("{{DATA}}", data)
    )


def write_explorer(
    output_or_outputs: FeatureAttributionOutput | FeatureAttributionSequenceOutput | Sequence[Any],
    path: str | os.PathLike,
    tokenizer: Any = None,
    titles: Sequence[str] | None = None,
    granularities: Sequence[str] = ("token", "word", "sentence", "line", "paragraph"),
    max_cells: int = 4_000_000,
    title: str = "inseq_ext explorer",
) -> Path:
    """Write the interactive explorer of one or more attribution outputs to a single offline HTML file.

    Args:
        output_or_outputs: An inseq attribution output (any method: this package's or inseq's built-ins;
            decoder-only or encoder-decoder), a sequence attribution, or a list of them. Every sequence gets an
            entry in the page's selector.
        path: Where to write the HTML file (written whole or not at all).
        tokenizer: Optional Hugging Face tokenizer or inseq model used to decode tokens; by default token strings
            are decoded as byte-level BPE or SentencePiece (see :func:`inseq_ext.views.granularity.token_texts`).
        titles: Optional selector label per sequence.
        granularities: Granularities offered by the page.
        max_cells: Budget of embedded scores per sequence; when every layer x head combination does not fit,
            only one axis can be picked at a time (the other reduced), and if that does not fit either, only the
            default reduction is embedded.
        title: Page title.

    Returns:
        The path written.
    """
    page = explorer_html(explorer_payload(output_or_outputs, tokenizer, titles, granularities, max_cells), title)
    with atomic_output(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return Path(path)

"""A standalone, offline HTML explorer of attribution outputs (one file, script and style inline).

Open the file in a browser (:func:`write_explorer`) or show it in a notebook cell (:func:`explore`): the prompt and
the generation are shown as text. Hovering or clicking a generated unit colors the prompt (and the text generated
before it) by that unit's attribution and prints each unit's score on it when hovered; shift-click or drag selects a
span of generated units and shows its summed map (:func:`inseq_ext.views.span.span_attribution` with
``reduce="sum"``). A table under the text shows every score at once, like ``out.show()``, with the step scores
(e.g. the probability of each generated unit) as extra rows. Controls switch the sequence, the method (several
methods on the same generation, e.g. ``{"custom_saliency": out1, "attention": out2}``), the granularity (token /
word / sentence / line / paragraph), the layer and head of multi-dimensional methods (inseq's ``attention``,
``block_gradient_x_input``) and the color scale: sequential (white to red) for methods whose scores are never
negative, diverging (blue, white, red) for signed ones.

Python computes every score matrix and unit grouping (:mod:`inseq_ext.views.explorer_data`) and embeds them as
JSON; the page only sums cells, so the numbers it shows equal :func:`~inseq_ext.views.span.span_attribution`'s.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..files import atomic_output
from .explorer_data import (
    DEFAULT_GRANULARITIES,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    ExplorerInput,
    Metrics,
    explorer_payload,
    model_display_name,
)

__all__ = [
    "ExplorerView",
    "explore",
    "explorer_html",
    "explorer_payload",
    "model_display_name",
    "score_color",
    "write_explorer",
]


def score_color(value: float | None, scale: float) -> str:
    """CSS background of a score: red (positive) or blue (negative) with opacity ``min(1, |value| / scale)``.

    Sequential and diverging scales share this formula: a method whose scores are never negative only ever gets
    the red half (its legend then runs from 0 to the scale). The explorer's script rounds the opacity to 3 decimals.
    """
    if value is None or value != value or scale <= 0:
        return "transparent"
    red, green, blue = POSITIVE_RGB if value >= 0 else NEGATIVE_RGB
    alpha = round(min(1.0, abs(value) / scale), 3)
    return f"rgba({red}, {green}, {blue}, {alpha:g})"


def _asset(name: str) -> str:
    return resources.files("inseq_ext.views").joinpath("explorer_assets", name).read_text(encoding="utf-8")


def default_title(payload: Mapping[str, Any]) -> str:
    """``inseq_ext explorer: METHODS on MODEL`` from the payload's method labels and model names."""
    labels, models = [], []
    for sequence in payload["sequences"]:
        labels += [method["label"] for method in sequence["methods"] if method["label"] not in labels]
        if sequence["model"] and sequence["model"] not in models:
            models.append(sequence["model"])
    return f"inseq_ext explorer: {', '.join(labels)}" + (f" on {', '.join(models)}" if models else "")


def explorer_html(payload: Mapping[str, Any], title: str | None = None) -> str:
    """The self-contained page for a payload from :func:`explorer_payload` (title: see :func:`default_title`)."""
    # "</" inside the JSON could close the script element early; "<\/" is the same string to JSON.
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = _asset("explorer.html")
    return (
        page.replace("{{TITLE}}", html.escape(title if title is not None else default_title(payload)))
        .replace("/*{{CSS}}*/", _asset("explorer.css"))
        .replace("/*{{JS}}*/", _asset("explorer.js"))
        .replace("{{DATA}}", data)
    )


def write_explorer(
    outputs: ExplorerInput,
    path: str | os.PathLike,
    tokenizer: Any = None,
    titles: Sequence[str] | None = None,
    granularities: Sequence[str] = DEFAULT_GRANULARITIES,
    max_cells: int = 4_000_000,
    title: str | None = None,
    metrics: Metrics | None = None,
) -> Path:
    """Write the interactive explorer of one or more attribution outputs to a single offline HTML file.

    Args:
        outputs: What to show, in one of three forms:

            * an inseq attribution output (any method: this package's or inseq's built-ins; decoder-only or
              encoder-decoder) or one sequence attribution: each sequence is an entry of the page's
              "Sequence" menu;
            * a mapping ``{method label: output}`` of outputs of the **same generations** by different methods
              (same prompts, same generated tokens), e.g. ``{"custom_saliency": out, "attention": out_att}``: each
              generation is one entry, and a "Method" menu switches between the maps, keeping the selection;
            * a list mixing the two forms (each item adds its generations to the menu).
        path: Where to write the HTML file (written whole or not at all; missing parent folders are created).
        tokenizer: Optional Hugging Face tokenizer or inseq model used to decode tokens; by default token strings
            are decoded as byte-level BPE or SentencePiece (see :func:`inseq_ext.views.granularity.token_texts`).
        titles: Optional "Sequence" menu label per generation (default: number, method and prompt).
        granularities: Granularities offered by the page (default: all of
            :data:`inseq_ext.views.granularity.GRANULARITIES`).
        max_cells: Budget of embedded scores per method and generation; when every layer x head combination does
            not fit, only one axis can be picked at a time (the other reduced), and if that does not fit either,
            only the default reduction is embedded.
        title: Page title (default: ``inseq_ext explorer: METHODS on MODEL``; a local model folder is named by its
            last path component, an embedded demo model as ``demo:NAME``).
        metrics: Optional numbers to show next to each method, e.g. faithfulness scores:
            ``{method label: {metric name: value}}``, where a value applies to every generation of that method and
            a list gives one value per generation (in menu order). The page shows them in the method menu and
            beside the legend; they are stored in the payload as ``methods[i]["metrics"]``.

    Returns:
        The path written.

    Raises:
        ValueError: for anything that is not an attribution output, outputs of a mapping that attribute different
            generations, unknown granularities, ``titles`` or ``metrics`` that do not match the outputs.
    """
    payload = explorer_payload(outputs, tokenizer, titles, granularities, max_cells, metrics)
    page = explorer_html(payload, title)
    with atomic_output(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return Path(path)


class ExplorerView:
    """An explorer page shown inline in Jupyter / Colab (``_repr_html_``) and savable as a file.

    The page goes into an ``<iframe srcdoc=...>`` of its own, so several explorers in one notebook never share
    element ids, styles or script state; inside the frame the page fits the frame's height to its content.
    """

    def __init__(self, page: str, height: int = 640) -> None:
        self.html = page
        self.height = height

    def __repr__(self) -> str:
        return "<inseq_ext explorer: shown as HTML in a notebook cell; .save(path) writes it to a file>"

    def _repr_html_(self) -> str:
        # A fresh id per rendering: the same view displayed twice still gives two distinct frames.
        return (
            f'<iframe id="inseq-ext-explorer-{uuid.uuid4().hex[:12]}" class="inseq-ext-explorer" '
            f'data-inseq-ext-explorer="1" title="inseq_ext explorer" srcdoc="{html.escape(self.html, quote=True)}" '
            f'style="width: 100%; height: {int(self.height)}px; border: 1px solid #d9dce1; border-radius: 4px;">'
            "</iframe>"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` as a standalone file (whole or not at all)."""
        with atomic_output(path) as temporary:
            temporary.write_text(self.html, encoding="utf-8")
        return Path(path)


def explore(
    outputs: ExplorerInput,
    tokenizer: Any = None,
    *,
    titles: Sequence[str] | None = None,
    granularities: Sequence[str] = DEFAULT_GRANULARITIES,
    max_cells: int = 4_000_000,
    title: str | None = None,
    metrics: Metrics | None = None,
    height: int = 640,
) -> ExplorerView:
    """The explorer of :func:`write_explorer`, shown inline in a notebook cell.

    Make it the last expression of a cell (``inseq_ext.explore(out)``), or pass it to ``IPython.display.display``.
    The page is self-contained (no network) and isolated in its own frame, so a notebook can show several.

    Args:
        outputs: An output, a ``{method label: output}`` mapping of the same generations, or a list of these (see
            :func:`write_explorer`).
        tokenizer: Optional tokenizer or inseq model used to decode tokens.
        titles: Optional "Sequence" menu label per generation.
        granularities: Granularities offered by the page.
        max_cells: Budget of embedded scores per method and generation.
        title: Page title (default: ``inseq_ext explorer: METHODS on MODEL``).
        metrics: Optional ``{method label: {metric name: value}}`` shown next to each method.
        height: Initial frame height in pixels; where the notebook lets the frame reach its own element (Jupyter,
            VS Code: same origin), the frame then fits its content.

    Returns:
        An :class:`ExplorerView`: displayed by the notebook, ``.save(path)`` writes the page to a file.
    """
    payload = explorer_payload(outputs, tokenizer, titles, granularities, max_cells, metrics)
    return ExplorerView(explorer_html(payload, title), height)

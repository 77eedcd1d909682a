"""inseq's heatmap (``out.show()``) with readable token labels and a title that says what the scores are.

inseq labels rows and columns with the tokenizer's token strings, which for byte-level BPE are bytes spelled in
GPT-2's byte alphabet: ``Ġ`` for a space, ``Ã§`` for ``ç``, ``Ä°`` for ``İ``. :func:`show_heatmap` draws the same
heatmap (inseq's own ``show``, colors and aggregation unchanged) from a copy of the output whose tokens carry the
text each token contributes to the decoded string (:func:`~inseq_ext.views.granularity.token_texts`), and titles
it "Attention Heatmap" for methods whose scores are attention weights instead of inseq's fixed "Saliency Heatmap".
The output itself is not modified: saved files keep the tokenizer's tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import inseq.data.viz as inseq_viz
from inseq.data import FeatureAttributionOutput
from inseq.utils.typing import TokenWithId

from .granularity import special_token_mask, token_texts

#: Methods whose scores are attention weights (titled "Attention Heatmap").
ATTENTION_WEIGHT_METHODS = frozenset({"attention", "rotary_attention"})


def readable_label(text: str) -> str:
    """A token's decoded text as a heatmap label: line breaks and tabs escaped, a blank token shown as ``␣``
    (one per space), and a token that holds only part of a multi-byte character as ``�``."""
    if text == "":
        return "\ufffd"
    if not text.strip():
        return text.replace(" ", "\u2423").replace("\n", "\\n").replace("\t", "\\t")
    return text.replace("\n", "\\n").replace("\t", "\\t")


def readable_tokens(tokens: list[TokenWithId], tokenizer: Any) -> list[TokenWithId]:
    """The tokens with their decoded text as label (special tokens keep their own string)."""
    texts = token_texts(tokens, tokenizer)
    special = special_token_mask(tokens, tokenizer)
    return [
        TokenWithId(token.token if is_special else readable_label(text), token.id)
        for token, text, is_special in zip(tokens, texts, special, strict=True)
    ]


def with_readable_tokens(out: FeatureAttributionOutput, tokenizer: Any) -> FeatureAttributionOutput:
    """A shallow copy of ``out`` whose sequences' ``source``/``target`` tokens carry decoded text labels."""
    sequences = []
    for sequence in out.sequence_attributions:
        relabeled = copy.copy(sequence)
        relabeled.target = readable_tokens(sequence.target, tokenizer)
        if sequence.source is not None:
            relabeled.source = readable_tokens(sequence.source, tokenizer)
        sequences.append(relabeled)
    relabeled_out = copy.copy(out)
    relabeled_out.sequence_attributions = sequences
    return relabeled_out


def heatmap_kind(method: str | None) -> str:
    """``"Attention"`` for attention-weight methods, otherwise inseq's ``"Saliency"``."""
    return "Attention" if method in ATTENTION_WEIGHT_METHODS else "Saliency"


@contextmanager
def heatmap_title(kind: str) -> Iterator[None]:
    """While active, inseq's terminal and HTML heatmaps are titled ``"<Source|Target> <kind> Heatmap"``.

    inseq builds the title inside its table functions (``"{label} Saliency Heatmap"``); they are wrapped for the
    duration of one ``show`` call and restored afterwards.
    """
    rich_table, html_table = inseq_viz.get_saliency_heatmap_rich, inseq_viz.get_saliency_heatmap_html

    def titled_rich(*args: Any, label: str = "", **kwargs: Any) -> Any:
        table = rich_table(*args, label=label, **kwargs)
        table.title = f"{label + ' ' if label else ''}{kind} Heatmap"
        return table

    def titled_html(*args: Any, **kwargs: Any) -> str:
        return html_table(*args, **kwargs).replace("Saliency Heatmap", f"{kind} Heatmap", 1)

    inseq_viz.get_saliency_heatmap_rich, inseq_viz.get_saliency_heatmap_html = titled_rich, titled_html
    try:
        yield
    finally:
        inseq_viz.get_saliency_heatmap_rich, inseq_viz.get_saliency_heatmap_html = rich_table, html_table


def show_heatmap(
    out: FeatureAttributionOutput, tokenizer: Any, display: bool = True, return_html: bool = False, **kwargs: Any
) -> str | None:
    """``out.show(...)`` with decoded token labels and a title naming the kind of score.

    Args:
        out: An inseq attribution output (not modified).
        tokenizer: Its model's tokenizer (or the inseq model), used to decode the tokens.
        display: Print the heatmap (terminal) or display it (notebook).
        return_html: Also return inseq's HTML rendering (with the same labels and title).
        **kwargs: Passed to ``out.show`` (``min_val``, ``max_val``, ``aggregator``, ...).
    """
    with heatmap_title(heatmap_kind(out.info.get("attribution_method"))):
        return with_readable_tokens(out, tokenizer).show(display=display, return_html=return_html, **kwargs)

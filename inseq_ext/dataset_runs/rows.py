"""Between inseq's attribution outputs and table rows: one row per (example, generated token), and back.

A sequence output of inseq holds, for each generated token ``t`` at target position ``p = attr_pos_start + t``, a
column of scores over the tokens it was attributed to: the source tokens (encoder-decoder models) and the target
prefix ``target[0:p]`` (decoder-only models: the prompt and the tokens generated before ``t``; encoder-decoders
with ``attribute_target=True``: the decoder start token and the generated prefix). A row stores that column:

* ``attribution``: the scores after inseq's default aggregation, i.e. the map ``out.show()`` displays (e.g. the
  gradient norm over the hidden size, normalized, for ``saliency``; the mean over layers and heads for
  ``attention``); one number per attributed token.
* ``attribution_raw`` (when kept): the scores before aggregation, flattened in row-major order from the shape
  ``(attributed tokens, *raw_dims)``, e.g. ``raw_dims = [layers, heads]`` for ``attention``.

Each shard also keeps one record per example (its source and target tokens with ids, attribution positions,
prompt and generated text), from which :func:`rebuild_sequence` rebuilds the inseq sequence output exactly: the
scores of the rows, ``NaN`` where inseq has no score (positions after the attributed step), the output class of the
method, so that ``show()``, the explorer and the evaluation work on it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from inseq.data.attribution import (
    CoarseFeatureAttributionSequenceOutput,
    FeatureAttributionSequenceOutput,
    GranularFeatureAttributionSequenceOutput,
)
from inseq.utils.typing import TokenWithId

#: Columns every row has (step-score columns, one per step function, and ``attribution_raw`` come after them).
BASE_COLUMNS = (
    "example_index",
    "example_id",
    "step",
    "position",
    "token",
    "token_id",
    "n_source_tokens",
    "n_prompt_tokens",
    "attributed_tokens",
    "attributed_token_ids",
    "attribution",
)
RAW_COLUMN = "attribution_raw"
RAW_SCORE_MODES = ("auto", "always", "never")


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def load_sequence_class(path: str) -> type[FeatureAttributionSequenceOutput]:
    """The output class named by :func:`class_path` (only inseq's and this package's classes are imported)."""
    module_name, _, qualname = path.partition(":")
    if not (module_name.startswith("inseq.") or module_name.startswith("inseq_ext.")):
        raise ValueError(f"unexpected output class {path!r}: only inseq and inseq_ext classes are rebuilt")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, FeatureAttributionSequenceOutput)):
        raise ValueError(f"{path!r} is not an inseq sequence output class")
    return cls


def keeps_raw(sequence: FeatureAttributionSequenceOutput, mode: str) -> bool:
    """Whether rows keep the scores before aggregation.

    ``auto`` keeps them when they have extra dimensions other than the hidden size (layers, heads: the explorer
    and ``select_idx`` use them), not for per-hidden-unit scores (``saliency``-style granular outputs, hundreds to
    thousands of numbers per token, which inseq's default aggregation reduces anyway), nor for one number per token
    (there the raw scores are the aggregated ones).
    """
    if mode not in RAW_SCORE_MODES:
        raise ValueError(f"raw_scores must be one of {', '.join(RAW_SCORE_MODES)}; got {mode!r}")
    scores = sequence.target_attributions if sequence.target_attributions is not None else sequence.source_attributions
    has_extra_dims = scores is not None and scores.dim() > 2
    if mode == "never" or not has_extra_dims:
        return False
    return mode == "always" or not isinstance(sequence, GranularFeatureAttributionSequenceOutput)


def raw_dims(sequence: FeatureAttributionSequenceOutput) -> list[int]:
    scores = sequence.target_attributions if sequence.target_attributions is not None else sequence.source_attributions
    return list(scores.shape[2:]) if scores is not None else []


def _token_pairs(tokens: Sequence[TokenWithId] | None) -> list[list[Any]] | None:
    return None if tokens is None else [[token.token, int(token.id)] for token in tokens]


def sequence_rows(
    raw: FeatureAttributionSequenceOutput,
    aggregated: FeatureAttributionSequenceOutput,
    example_index: int,
    example_id: str,
    prompt: str,
    generated_text: str,
    keep_raw: bool,
    is_encoder_decoder: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of one attributed sequence and its example record.

    Args:
        raw: The sequence output as the method returned it.
        aggregated: The same after ``aggregate()`` with inseq's defaults (two-dimensional scores).
        keep_raw: Add ``attribution_raw`` (see :func:`keeps_raw`).
        is_encoder_decoder: The model's kind (the prompt is the source of an encoder-decoder).
    """
    start, end = raw.attr_pos_start, raw.attr_pos_end
    source_tokens, target_tokens = list(raw.source or []), list(raw.target)
    has_source = aggregated.source_attributions is not None
    has_target = aggregated.target_attributions is not None
    n_source = len(source_tokens) if has_source else 0
    rows = []
    for step, position in enumerate(range(start, end)):
        tokens = (source_tokens if has_source else []) + (target_tokens[:position] if has_target else [])
        parts, raw_parts = [], []
        if has_source:
            parts.append(aggregated.source_attributions[:, step])
            raw_parts.append(raw.source_attributions[:, step])
        if has_target:
            parts.append(aggregated.target_attributions[:position, step])
            raw_parts.append(raw.target_attributions[:position, step])
        row: dict[str, Any] = {
            "example_index": example_index,
            "example_id": example_id,
            "step": step,
            "position": position,
            "token": target_tokens[position].token,
            "token_id": int(target_tokens[position].id),
            "n_source_tokens": n_source,
            "n_prompt_tokens": n_source if is_encoder_decoder else start,
            "attributed_tokens": [token.token for token in tokens],
            "attributed_token_ids": [int(token.id) for token in tokens],
            "attribution": torch.cat(parts).to(torch.float32).tolist(),
        }
        for name, scores in (raw.step_scores or {}).items():
            row[name] = float(scores[step])
        if keep_raw:
            row[RAW_COLUMN] = torch.cat(raw_parts).to(torch.float32).flatten().tolist()
        rows.append(row)
    record = {
        "example_index": example_index,
        "example_id": example_id,
        "prompt": prompt,
        "generated_text": generated_text,
        "source": _token_pairs(raw.source),
        "target": _token_pairs(raw.target),
        "attr_pos_start": start,
        "attr_pos_end": end,
        "steps": end - start,
    }
    return rows, record


def rebuild_sequence(
    record: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    output_class: str,
    num_dimensions: int,
    dims: Sequence[int],
    step_score_names: Sequence[str],
    has_source: bool,
    has_target: bool,
) -> FeatureAttributionSequenceOutput:
    """The inseq sequence output of one example from its record and its rows (sorted by step).

    With ``attribution_raw`` in the rows the scores before aggregation are rebuilt in the method's own output class
    (``aggregate()``/``show()`` then give what they gave on the original); otherwise the aggregated scores are
    rebuilt in inseq's one-score-per-token class (``show()`` displays them as they are).
    """
    source = None if record["source"] is None else [TokenWithId(token, idx) for token, idx in record["source"]]
    target = [TokenWithId(token, idx) for token, idx in record["target"]]
    start, end = record["attr_pos_start"], record["attr_pos_end"]
    if len(rows) != end - start:
        raise ValueError(
            f"example {record['example_id']!r}: {len(rows)} rows for {end - start} attributed steps (damaged shard?)"
        )
    use_raw = bool(rows) and rows[0].get(RAW_COLUMN) is not None
    extra = list(dims) if use_raw else []
    n_source = len(source or []) if has_source else 0
    source_scores = torch.full((n_source, end - start, *extra), math.nan) if has_source else None
    target_scores = torch.full((len(target), end - start, *extra), math.nan) if has_target else None
    for step, row in enumerate(rows):
        values = torch.tensor(row[RAW_COLUMN] if use_raw else row["attribution"], dtype=torch.float32)
        values = values.reshape(-1, *extra)
        if has_source:
            source_scores[:, step] = values[:n_source]
        if has_target:
            target_scores[: start + step, step] = values[n_source:]
    step_scores = {name: torch.tensor([row[name] for row in rows], dtype=torch.float32) for name in step_score_names}
    if use_raw:
        cls = load_sequence_class(output_class)
        extra_kwargs = {"_num_dimensions": num_dimensions} if num_dimensions else {}
    else:
        cls, extra_kwargs = CoarseFeatureAttributionSequenceOutput, {}
    return cls(
        source=source,
        target=target,
        source_attributions=source_scores,
        target_attributions=target_scores,
        step_scores=step_scores,
        sequence_scores={},
        attr_pos_start=start,
        attr_pos_end=end,
        **extra_kwargs,
    )

"""The data behind the HTML explorer: token texts, unit groupings and score matrices of each generation, as JSON.

Python computes everything here; the page (``explorer_assets/explorer.js``) only sums cells, so the numbers it
shows equal :func:`~inseq_ext.views.span.span_attribution`'s.

Payload layout (``explorer_payload``; JSON keys in camelCase)::

    {"version": 2, "granularities": [...], "colors": {"positive": rgb, "negative": rgb},
     "sequences": [                                  # one entry per generation (the "Sequence" menu)
       {"title", "model", "encoderDecoder",
        "rows": [{"text", "raw", "special", "axis", "index"}],   # source tokens, then target tokens
        "columns": n,                                 # generated (attributed) tokens
        "units": {granularity: [unit]},               # see _units
        "stepScores": {name: [value per column]},     # e.g. probability
        "methods": [                                  # one per method (the "Method" menu)
          {"label", "method", "signed",               # signed: some score < 0 -> diverging color scale
           "dims": [{"name": "layer"|"head", "labels"}],
           "views": {"<layer>|<head>": rows x columns},   # "*" = reduced over that axis
           "metrics": {name: value}}]}]}              # optional, e.g. faithfulness (write_explorer(metrics=))

A unit is ``{"axis", "index", "rows": [start, end), "text", "special", "role", "position"}``, with
``role`` one of ``"prompt"``, ``"generated"`` or ``"start"`` (the decoder start tokens of an encoder-decoder, e.g.
BART's ``</s> <s>``: not the model's choice, so not selectable) and ``position`` its index among the units of its
role. Units on the generated axis also have ``"columns": [start, end)`` and ``"generated"``, the unit's index among
generated units as :func:`~inseq_ext.views.span.span_attribution` counts them (start tokens included).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput

from ..demo_models import DEMO_MODELS_DIR
from .granularity import GRANULARITIES, extra_dimensions, group_tokens, special_token_mask, to_2d, token_texts

Output = FeatureAttributionOutput | FeatureAttributionSequenceOutput
# What write_explorer accepts: an output, a {method label: output} mapping of the same generations, or a list of
# those (each generation of each item is one entry of the sequence menu).
ExplorerInput = Output | Mapping[str, Output] | Sequence[Output | Mapping[str, Output]]
# {method label: {metric name: value}}: one value for every sequence of that method, or a list with one per sequence.
Metrics = Mapping[str, Mapping[str, float | None | Sequence[float | None]]]

POSITIVE_RGB = (214, 39, 40)
NEGATIVE_RGB = (31, 119, 180)
ALL = "*"  # view key part meaning "reduced over this axis"
DEFAULT_GRANULARITIES = ("token", "word", "sentence", "line", "paragraph")


def model_display_name(name_or_path: Any) -> str:
    """A model name fit for a page header: no absolute machine path.

    An embedded demo model becomes ``demo:NAME``, a local folder its last path component, a hub name stays as it is.
    """
    name = str(name_or_path or "").strip()
    if not name:
        return ""
    path = Path(name).expanduser()
    try:
        resolved = path.resolve()
        if resolved.parent == DEMO_MODELS_DIR:
            return f"demo:{resolved.name}"
    except OSError:
        pass
    if path.is_absolute() or path.exists() or name.startswith((".", "~")):
        return path.name or name
    return name


def _number(value: float) -> float | None:
    """JSON-safe number: NaN and infinities become null, 7 significant digits are kept (float32 precision)."""
    return None if value != value or math.isinf(value) else float(f"{value:.7g}")


@dataclass
class _Generation:
    """One generation, attributed by one or more methods (``(label, sequence attribution, output info)``)."""

    methods: list[tuple[str, FeatureAttributionSequenceOutput, Mapping[str, Any]]] = field(default_factory=list)

    @property
    def sequence(self) -> FeatureAttributionSequenceOutput:
        return self.methods[0][1]

    @property
    def encoder_decoder(self) -> bool:
        """Decoder-only outputs have no source scores: their prompt is the start of the target sequence."""
        return any(seq.source_attributions is not None for _, seq, _ in self.methods)

    @property
    def info(self) -> Mapping[str, Any]:
        return self.methods[0][2]


def _sequences_of(item: Any, where: str) -> tuple[list[FeatureAttributionSequenceOutput], Mapping[str, Any]]:
    if isinstance(item, FeatureAttributionOutput):
        return list(item.sequence_attributions), item.info
    if isinstance(item, FeatureAttributionSequenceOutput):
        return [item], {}
    raise ValueError(
        f"write_explorer takes inseq attribution outputs (FeatureAttributionOutput or a sequence attribution), a "
        f"{{method label: output}} mapping of them, or a list of these; {where} is a {type(item).__name__}."
    )


def _token_strings(tokens: Sequence[Any]) -> list[str]:
    return [getattr(tok, "token", str(tok)) for tok in tokens]


def _check_same_generation(
    label: str,
    seq: FeatureAttributionSequenceOutput,
    first_label: str,
    first: FeatureAttributionSequenceOutput,
    k: int,
) -> None:
    """Outputs compared in one explorer must attribute the very same tokens (prompt and generation)."""
    problems = []
    for name in ("source", "target"):
        ours, theirs = _token_strings(getattr(seq, name) or []), _token_strings(getattr(first, name) or [])
        if ours != theirs:
            problems.append(f"{name} tokens {''.join(ours)[:80]!r} vs {''.join(theirs)[:80]!r}")
    if (seq.attr_pos_start, seq.attr_pos_end) != (first.attr_pos_start, first.attr_pos_end):
        problems.append(
            f"attributed positions {seq.attr_pos_start}..{seq.attr_pos_end} vs "
            f"{first.attr_pos_start}..{first.attr_pos_end}"
        )
    if problems:
        raise ValueError(
            f"The outputs of a {{method label: output}} mapping must attribute the same generations: sequence {k} "
            f"of {label!r} differs from {first_label!r} ({'; '.join(problems)}). Attribute the same prompt and "
            f"generation with each method, e.g. model.attribute(prompt, generated_text, method=...)."
        )


def _generations(inputs: ExplorerInput) -> list[_Generation]:
    items = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    generations: list[_Generation] = []
    for position, item in enumerate(items):
        where = "the argument" if len(items) == 1 and not isinstance(inputs, list | tuple) else f"item {position}"
        if isinstance(item, Mapping):
            if not item:
                raise ValueError(f"The {{method label: output}} mapping ({where}) is empty.")
            group: list[_Generation] = []
            for label, output in item.items():
                if not isinstance(label, str) or not label:
                    raise ValueError(f"Method labels must be non-empty strings; got {label!r} in {where}.")
                sequences, info = _sequences_of(output, f"the value of {label!r} in {where}")
                if not group:
                    group = [_Generation() for _ in sequences]
                    first_label = label
                elif len(sequences) != len(group):
                    raise ValueError(
                        f"The outputs of a {{method label: output}} mapping must attribute the same generations: "
                        f"{label!r} holds {len(sequences)} sequence(s), {first_label!r} holds {len(group)}."
                    )
                for k, (generation, seq) in enumerate(zip(group, sequences, strict=True)):
                    if generation.methods:
                        _check_same_generation(label, seq, first_label, generation.sequence, k)
                    generation.methods.append((label, seq, info))
            generations += group
        else:
            sequences, info = _sequences_of(item, where)
            label = str(info.get("attribution_method", "")) or "scores"
            generations += [_Generation([(label, seq, info)]) for seq in sequences]
    if not generations:
        raise ValueError("Nothing to show: the output holds no sequence attribution.")
    return generations


def _decoder_start_count(target_special: list[bool]) -> int:
    """Leading special target tokens of an encoder-decoder (decoder start ``</s>``, forced BOS ``<s>``)."""
    count = 0
    while count < len(target_special) - 1 and target_special[count]:
        count += 1
    return count


def _units(
    seq: FeatureAttributionSequenceOutput,
    granularity: str,
    source_texts: list[str],
    target_texts: list[str],
    source_special: list[bool],
    target_special: list[bool],
    encoder_decoder: bool,
) -> list[dict[str, Any]]:
    """The units of one granularity, source axis first; see the module docstring for the fields."""
    starts = _decoder_start_count(target_special) if encoder_decoder else 0
    source_groups = group_tokens(source_texts, granularity, source_special) if encoder_decoder else []
    # Special tokens are units of their own, so the start tokens never share a unit with generated text.
    target_groups = group_tokens(target_texts, granularity, target_special, breaks=(seq.attr_pos_start,))
    units: list[dict[str, Any]] = []
    positions = {"prompt": 0, "generated": 0, "start": 0}
    generated_index = 0
    for axis, groups, texts, specials, base in (
        ("source", source_groups, source_texts, source_special, 0),
        ("target", target_groups, target_texts, target_special, len(source_texts)),
    ):
        for index, (start, end) in enumerate(groups):
            if axis == "target" and end <= starts:
                role = "start"
            elif axis == "source" or start < seq.attr_pos_start:
                role = "prompt"
            else:
                role = "generated"
            unit = {
                "axis": axis,
                "index": index,
                "rows": [base + start, base + end],
                "text": "".join(texts[start:end]),
                "special": all(specials[start:end]),
                "role": role,
                "position": positions[role],
            }
            positions[role] += 1
            if axis == "target" and seq.attr_pos_start <= start < seq.attr_pos_end:
                unit["columns"] = [start - seq.attr_pos_start, min(end, seq.attr_pos_end) - seq.attr_pos_start]
                unit["generated"] = generated_index
                generated_index += 1
            units.append(unit)
    return units


def _matrix(seq: FeatureAttributionSequenceOutput, columns: int) -> list[list[float | None]]:
    """Source rows (encoder-decoder) then one row per target token, by generated columns; null: not attributed."""
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


def _method_payload(
    label: str, seq: FeatureAttributionSequenceOutput, info: Mapping[str, Any], rows: int, max_cells: int
) -> dict[str, Any]:
    columns = seq.attr_pos_end - seq.attr_pos_start
    dims = extra_dimensions(seq)
    keys = _view_keys([dim.size for dim in dims], max(1, max_cells // max(rows * max(columns, 1), 1)))
    views = {}
    for key in keys:
        select = {dim.name: idx for dim, idx in zip(dims, key, strict=True) if idx != ALL}
        views["|".join(str(part) for part in key)] = _matrix(to_2d(seq, select or None), columns)
    return {
        "label": label,
        "method": str(info.get("attribution_method", "")),
        "dims": [{"name": dim.name, "labels": dim.labels} for dim in dims],
        "views": views,
        "signed": False,  # set once every sequence of this label is known (see explorer_payload)
        "metrics": {},
    }


def _step_scores(generation: _Generation) -> dict[str, list[float | None]]:
    """Per-step scores (probability, entropy, ...): one value per generated token, from any method that has them."""
    scores: dict[str, list[float | None]] = {}
    for _, seq, _ in generation.methods:
        for name, values in (seq.step_scores or {}).items():
            if name not in scores and isinstance(values, torch.Tensor) and values.ndim == 1:
                scores[name] = [_number(v) for v in values.float().tolist()]
    return scores


def _generation_payload(
    generation: _Generation,
    title: str,
    tokenizer: Any,
    granularities: Sequence[str],
    max_cells: int,
) -> dict[str, Any]:
    seq = generation.sequence
    encoder_decoder = generation.encoder_decoder
    source_tokens = list(seq.source) if encoder_decoder else []
    source_texts = token_texts(source_tokens, tokenizer) if source_tokens else []
    source_special = special_token_mask(source_tokens, tokenizer) if source_tokens else []
    target_texts = token_texts(seq.target, tokenizer)
    target_special = special_token_mask(seq.target, tokenizer)
    rows = [
        {"text": text, "raw": tok.token, "special": special, "axis": axis, "index": idx}
        for axis, tokens, texts, specials in (
            ("source", source_tokens, source_texts, source_special),
            ("target", seq.target, target_texts, target_special),
        )
        for idx, (tok, text, special) in enumerate(zip(tokens, texts, specials, strict=True))
    ]
    units = {
        granularity: _units(
            seq, granularity, source_texts, target_texts, source_special, target_special, encoder_decoder
        )
        for granularity in granularities
    }
    return {
        "title": title,
        "model": model_display_name(generation.info.get("model_name", "")),
        "encoderDecoder": encoder_decoder,
        "rows": rows,
        "columns": seq.attr_pos_end - seq.attr_pos_start,
        "units": units,
        "stepScores": _step_scores(generation),
        "methods": [_method_payload(label, s, info, len(rows), max_cells) for label, s, info in generation.methods],
    }


def prompt_text(
    seq: FeatureAttributionSequenceOutput, tokenizer: Any = None, encoder_decoder: bool | None = None
) -> str:
    """The prompt as plain text without special tokens: the source sentence (encoder-decoder) or the target
    tokens before the generation (decoder-only)."""
    if encoder_decoder is None:
        encoder_decoder = seq.source_attributions is not None
    tokens = list(seq.source) if encoder_decoder else list(seq.target[: seq.attr_pos_start])
    texts = token_texts(tokens, tokenizer)
    special = special_token_mask(tokens, tokenizer)
    return "".join(text for text, is_special in zip(texts, special, strict=True) if not is_special).strip()


def _attach_metrics(payload: dict[str, Any], metrics: Metrics) -> None:
    """Put ``metrics[label][name]`` (one value, or one per generation holding that label) into the method entries."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for sequence in payload["sequences"]:
        for method in sequence["methods"]:
            entries.setdefault(method["label"], []).append(method)
    for label, values in metrics.items():
        if label not in entries:
            raise ValueError(
                f"metrics names the method {label!r}, which is not in the explorer; its methods are: "
                f"{', '.join(repr(name) for name in entries)}."
            )
        if not isinstance(values, Mapping):
            raise ValueError(f"metrics[{label!r}] must map metric names to values, e.g. {{'sufficiency': 0.4}}.")
        for name, value in values.items():
            per_sequence = list(value) if isinstance(value, list | tuple) else [value] * len(entries[label])
            if len(per_sequence) != len(entries[label]):
                raise ValueError(
                    f"metrics[{label!r}][{name!r}] has {len(per_sequence)} values but {label!r} has "
                    f"{len(entries[label])} sequence(s): give one value, or one per sequence."
                )
            for entry, single in zip(entries[label], per_sequence, strict=True):
                if single is not None and not isinstance(single, int | float):
                    raise ValueError(f"metrics[{label!r}][{name!r}] must be numbers (or None); got {single!r}.")
                entry["metrics"][str(name)] = None if single is None else _number(float(single))


def explorer_payload(
    outputs: ExplorerInput,
    tokenizer: Any = None,
    titles: Sequence[str] | None = None,
    granularities: Sequence[str] = DEFAULT_GRANULARITIES,
    max_cells: int = 4_000_000,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """The data embedded in the explorer (see :func:`inseq_ext.views.explorer.write_explorer` for the arguments)."""
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise ValueError(f"Unknown granularity {granularity!r}; choose from {', '.join(GRANULARITIES)}.")
    if not granularities:
        raise ValueError(f"granularities is empty; choose from {', '.join(GRANULARITIES)}.")
    generations = _generations(outputs)
    if titles is not None and len(titles) != len(generations):
        raise ValueError(f"titles has {len(titles)} entries but there are {len(generations)} sequences to show.")
    sequences = []
    for idx, generation in enumerate(generations):
        if titles is not None:
            title = titles[idx]
        else:
            labels = [label for label, _, _ in generation.methods]
            prefix = f"{labels[0]}: " if len(labels) == 1 else ""
            title = (
                f"{idx + 1}. {prefix}{prompt_text(generation.sequence, tokenizer, generation.encoder_decoder)[:60]}"
            )
        sequences.append(_generation_payload(generation, title, tokenizer, granularities, max_cells))
    # A method's color scale is diverging when any of its scores, in any sequence, is negative; else sequential.
    signed: dict[str, bool] = {}
    for sequence in sequences:
        for method in sequence["methods"]:
            negative = any(v is not None and v < 0 for view in method["views"].values() for row in view for v in row)
            signed[method["label"]] = signed.get(method["label"], False) or negative
    for sequence in sequences:
        for method in sequence["methods"]:
            method["signed"] = signed[method["label"]]
    payload = {
        "version": 2,
        "sequences": sequences,
        "granularities": list(granularities),
        "colors": {"positive": list(POSITIVE_RGB), "negative": list(NEGATIVE_RGB)},
    }
    if metrics:
        _attach_metrics(payload, metrics)
    return payload

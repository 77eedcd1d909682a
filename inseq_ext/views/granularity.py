"""Coarser units than tokens: words, sentences, lines and paragraphs, on both axes of any inseq attribution output.

Span boundaries come from the *detokenized* text, not from tokenizer-specific markers: every token gets the
characters it contributes to the decoded text (byte-level BPE ``Ġ``/``Ċ`` pieces and partial UTF-8 bytes,
SentencePiece ``▁`` pieces and ``<0xNN>`` byte fallbacks), units are found in that text with regular expressions,
and each token joins the unit of its first non-blank character. The resulting contiguous token spans are then
merged with inseq's own :class:`~inseq.data.aggregator.ContiguousSpanAggregator` (``aggregate("spans", ...)``), on
the attributed axis and on the generated axis at once, with the NaN-aware sum registered here as ``"nansum"``.

Word score = sum of its token scores (NaN entries, i.e. positions not attributed at that step, are skipped; a
cell is NaN only when all its entries are). Sums are the natural choice for additive attributions (gradient x
input, attention mass) and for normalized saliency, whose columns sum to one before and after merging.
"""

from __future__ import annotations

import bisect
import codecs
import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq.data.aggregation_functions import DEFAULT_ATTRIBUTION_AGGREGATE_DICT, AggregationFunction
from inseq.data.attribution import MultiDimensionalFeatureAttributionSequenceOutput

GRANULARITIES = ("token", "word", "sentence", "line", "paragraph")

# Words: letters/digits with inner apostrophes or hyphens ("don't", "state-of-the-art"); any other run of
# non-blank characters (punctuation) is a unit of its own.
_WORD = re.compile(r"\w+(?:['\u2019\-]\w+)*|[^\w\s]+")
# A sentence ends after terminal punctuation (plus closing quotes/brackets) followed by blank space.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SPECIAL = re.compile(r"<\|[^<>|]*\|>|</?[A-Za-z_][\w\-]*>|\[/?[A-Z_]+\]")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character map (Radford et al., 2019), character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1)]
    printable += range(ord("\u00ae"), ord("\u00ff") + 1)
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[chr(byte)] = byte
        else:
            mapping[chr(256 + extra)] = byte
            extra += 1
    return mapping


_BYTE_OF_CHAR = _byte_level_alphabet()


class NanSumAggregationFunction(AggregationFunction):
    """Sum that skips NaN entries; NaN only where every entry is NaN. Registered in inseq as ``"nansum"``."""

    aggregation_function_name = "nansum"

    def __call__(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.nansum(dim).masked_fill(scores.isnan().all(dim), float("nan"))


class NanMeanAggregationFunction(AggregationFunction):
    """Mean over the non-NaN entries; NaN only where every entry is NaN. Registered in inseq as ``"nanmean"``."""

    aggregation_function_name = "nanmean"

    def __call__(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.nanmean(dim)


def _token_strings(tokens: Sequence[Any]) -> list[str]:
    return [tok.token if hasattr(tok, "token") else str(tok) for tok in tokens]


def special_token_mask(tokens: Sequence[Any], tokenizer: Any = None) -> list[bool]:
    """Which tokens are special (``<s>``, ``<|im_start|>``, ...): the tokenizer's list, else their look."""
    strings = _token_strings(tokens)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # an inseq AttributionModel carries one
    if tokenizer is not None:
        specials = set(tokenizer.all_special_tokens)
        specials |= {tok.content for tok in getattr(tokenizer, "added_tokens_decoder", {}).values() if tok.special}
        return [tok in specials for tok in strings]
    return [bool(_SPECIAL.fullmatch(tok)) and not _BYTE_FALLBACK.fullmatch(tok) for tok in strings]


def token_texts(tokens: Sequence[Any], tokenizer: Any = None) -> list[str]:
    """The characters each token contributes to the decoded text; their concatenation is the decoded text.

    Special tokens keep their own string. With a ``tokenizer`` (Hugging Face tokenizer or inseq model) and real
    token ids, every piece between special tokens is decoded by the tokenizer itself (prefix by prefix); otherwise
    the token strings are decoded here: byte-level BPE when every character belongs to GPT-2's byte alphabet,
    SentencePiece when ``▁`` marks spaces, plain text otherwise. A token holding only part of a multi-byte
    character contributes nothing; the token that completes the character gets it.

    Args:
        tokens: inseq ``TokenWithId`` objects or token strings.
        tokenizer: Optional tokenizer used to decode.
    """
    strings = _token_strings(tokens)
    special = special_token_mask(tokens, tokenizer)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    ids = [getattr(tok, "id", -1) for tok in tokens]
    if tokenizer is not None and all(isinstance(idx, int) and idx >= 0 for idx in ids):
        return _texts_from_tokenizer(strings, ids, special, tokenizer)
    return _texts_from_strings(strings, special)


def _texts_from_tokenizer(strings: list[str], ids: list[int], special: list[bool], tokenizer: Any) -> list[str]:
    texts: list[str] = []
    start = 0
    while start < len(ids):
        if special[start]:
            texts.append(strings[start])
            start += 1
            continue
        end = start
        while end < len(ids) and not special[end]:
            end += 1
        # Decode after the preceding special token, as the tokenizer does in a whole sequence (a SentencePiece
        # decoder drops the first word's space only at the very start).
        context = ids[start - 1 : start]
        texts += _decode_pieces(context + ids[start:end], tokenizer)[len(context) :]
        start = end
    return texts


def _decode_pieces(segment: list[int], tokenizer: Any, window: int = 8) -> list[str]:
    """Per-token pieces of ``tokenizer.decode(segment)``, from short windows (linear time), else from prefixes.

    A token's piece is ``decode(window + token)`` minus ``decode(window)``, the window being the few tokens before
    it: both decodes start at the same token, so a decoder's first-word space stripping cancels out. A trailing
    U+FFFD (dangling partial UTF-8 character) is left for the token that completes the character.
    """

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    full = decode(segment)
    pieces = []
    for idx in range(len(segment)):
        low = max(0, idx - window)
        before = decode(segment[low:idx]).rstrip("\ufffd") if idx > low else ""
        pieces.append(decode(segment[low : idx + 1]).rstrip("\ufffd")[len(before) :])
    if "".join(pieces) == full:
        return pieces
    # Decoders with context-dependent output: fall back to prefixes of the whole segment (quadratic time).
    pieces, done = [], 0
    for count in range(1, len(segment) + 1):
        length = (
            len(full)
            if count == len(segment)
            else max(done, min(len(decode(segment[:count]).rstrip("\ufffd")), len(full)))
        )
        pieces.append(full[done:length])
        done = length
    return pieces


def _texts_from_strings(strings: list[str], special: list[bool]) -> list[str]:
    plain = [tok for tok, is_special in zip(strings, special, strict=True) if not is_special]
    if all(char in _BYTE_OF_CHAR for tok in plain for char in tok):
        mode = "byte_level"
    elif any("\u2581" in tok for tok in plain):
        mode = "sentencepiece"
    else:
        mode = "plain"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts: list[str] = []
    for position, (tok, is_special) in enumerate(zip(strings, special, strict=True)):
        if is_special:
            if texts:
                texts[-1] += decoder.decode(b"", final=True)
            decoder.reset()
            texts.append(tok)
            continue
        if mode == "byte_level":
            data = bytes(_BYTE_OF_CHAR[char] for char in tok)
        elif mode == "sentencepiece":
            fallback = _BYTE_FALLBACK.fullmatch(tok)
            data = bytes([int(fallback.group(1), 16)]) if fallback else tok.replace("\u2581", " ").encode()
            if position == 0 and data.startswith(b" "):
                data = data[1:]  # SentencePiece decoders drop the space they prepend to the first word
        else:
            data = tok.encode()
        texts.append(decoder.decode(data))
    if texts:
        texts[-1] += decoder.decode(b"", final=True)
    return texts


def _unit_starts(text: str, granularity: str) -> list[int]:
    """Character offsets where units of the given granularity start (sorted)."""
    if granularity == "word":
        return [match.start() for match in _WORD.finditer(text)]
    starts = {0}
    if granularity in ("sentence", "paragraph"):
        starts |= {match.end() for match in _PARAGRAPH_BREAK.finditer(text)}
    if granularity == "sentence":
        starts |= {match.end() for match in _SENTENCE_END.finditer(text)}
    if granularity == "line":
        starts |= {match.end() for match in re.finditer("\n", text)}
    return sorted(starts)


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}.")
    return granularity


def group_tokens(
    texts: Sequence[str],
    granularity: str,
    special: Sequence[bool] | None = None,
    breaks: Sequence[int] = (),
) -> list[tuple[int, int]]:
    """Split a token sequence into contiguous ``(start, end)`` token spans, one per unit; they cover every token.

    Each token joins the unit holding its first non-blank character; blank tokens (spaces, newlines) join the
    next unit (the last one at the end); special tokens are units of their own.

    Args:
        texts: Per-token text, as given by :func:`token_texts`.
        granularity: One of :data:`GRANULARITIES`.
        special: Per-token special flags (default: none special).
        breaks: Token indices where a unit must start anyway (e.g. the first generated token).
    """
    check_granularity(granularity)
    special = list(special) if special is not None else [False] * len(texts)
    if granularity == "token":
        return [(idx, idx + 1) for idx in range(len(texts))]
    text = "".join(texts)
    starts = _unit_starts(text, granularity)
    keys: list[Any] = []
    offset = 0
    for idx, piece in enumerate(texts):
        blank = len(piece) - len(piece.lstrip())
        if special[idx]:
            keys.append(("special", idx))
        elif blank == len(piece):
            keys.append(None)
        else:
            keys.append(max(0, bisect.bisect_right(starts, offset + blank) - 1))
        offset += len(piece)

    bounds = sorted({0, len(texts), *(b for b in breaks if 0 < b < len(texts))})
    groups: list[tuple[int, int]] = []
    for low, high in zip(bounds, bounds[1:], strict=False):
        current: list[Any] | None = None  # [start, end, key]
        pending: int | None = None
        for idx in range(low, high):
            key = keys[idx]
            if key is None:
                pending = idx if pending is None else pending
                continue
            if current is not None and key == current[2] and not special[idx]:
                current[1] = idx + 1
            elif special[idx]:
                if current is not None:
                    groups.append((current[0], idx))
                elif pending is not None:
                    groups.append((pending, idx))
                groups.append((idx, idx + 1))
                current = None
            else:
                if current is not None:
                    groups.append((current[0], pending if pending is not None else idx))
                current = [pending if pending is not None else idx, idx + 1, key]
            pending = None
        if current is not None:
            groups.append((current[0], high))
        elif pending is not None:
            groups.append((pending, high))
    return groups


@dataclass(frozen=True)
class ExtraDimension:
    """A layer or head axis of a multi-dimensional attribution (e.g. inseq's ``attention``)."""

    name: str  # "layer", "head", or "dim<k>"
    size: int
    labels: list[str]
    reduction: str  # inseq aggregation function applied over this axis when it is not selected


def extra_dimensions(seq: FeatureAttributionSequenceOutput) -> list[ExtraDimension]:
    """Layer/head axes a user can pick from; empty for token-level outputs and for per-hidden-unit gradients."""
    scores = seq.source_attributions if seq.source_attributions is not None else seq.target_attributions
    if not isinstance(seq, MultiDimensionalFeatureAttributionSequenceOutput) or scores is None or scores.ndim <= 2:
        return []
    field = "source_attributions" if seq.source_attributions is not None else "target_attributions"
    names = getattr(seq, "_attribution_dim_names", {}).get(field, {})
    reductions = seq._aggregator if isinstance(seq._aggregator, list) else []
    dims = []
    for k in range(scores.ndim - 2):
        described = str(names.get(2 + k, ""))
        name = "head" if "Head" in described else "layer" if "Layer" in described else f"dim{k}"
        size = scores.shape[2 + k]
        if "embeddings" in described:  # block_gradient_x_input: 0 is the embeddings, l is block l-1
            labels = ["embeddings"] + [f"block {idx}" for idx in range(size - 1)]
        else:
            labels = [f"{name} {idx}" for idx in range(size)]
        # inseq's pipeline reduces the last axis first: reductions[0] applies to the last extra axis.
        position = scores.ndim - 3 - k
        reduction = (
            reductions[position] if position < len(reductions) and isinstance(reductions[position], str) else "mean"
        )
        dims.append(ExtraDimension(name, size, labels, reduction))
    return dims


def to_2d(
    seq: FeatureAttributionSequenceOutput, select: Mapping[str, int] | None = None
) -> FeatureAttributionSequenceOutput:
    """One score per (attributed token, generated token).

    Without ``select`` this is inseq's default ``aggregate()``, exactly what ``out.show()`` displays. With
    ``select`` (e.g. ``{"layer": 3}`` or ``{"layer": 3, "head": 0}``) the chosen layer/head entries are taken
    raw, and the remaining layer/head axes are reduced with the method's own per-axis function (inseq's
    ``attention``: mean; ``block_gradient_x_input``: absmax), without renormalization.
    """
    scores = seq.source_attributions if seq.source_attributions is not None else seq.target_attributions
    if scores is None or scores.ndim == 2:
        if select:
            raise ValueError(f"select={dict(select)} given, but this output has no layer or head axis.")
        return seq
    if not select:
        return seq.aggregate()
    dims = extra_dimensions(seq)
    by_name = {dim.name: k for k, dim in enumerate(dims)}
    for name, index in select.items():
        if name not in by_name:
            raise ValueError(
                f"Unknown axis {name!r} in select; this output has {', '.join(by_name) or 'no layer/head axes'}."
            )
        size = dims[by_name[name]].size
        if not isinstance(index, int) or not 0 <= index < size:
            raise ValueError(f"select[{name!r}]={index!r} is out of range: choose 0..{size - 1}.")
    reduced = copy.copy(seq)
    for field in ("source_attributions", "target_attributions"):
        tensor = getattr(seq, field)
        if tensor is None:
            continue
        for k in reversed(range(len(dims))):  # last axis first, so earlier axis positions stay valid
            axis = 2 + k
            if dims[k].name in select:
                tensor = tensor.select(axis, select[dims[k].name])
            else:
                tensor = AggregationFunction.available_classes()[dims[k].reduction]()(tensor, dim=axis)
        setattr(reduced, field, tensor)
    reduced._num_dimensions = 0
    reduced._aggregator = []
    return reduced


def sequence_groups(
    seq: FeatureAttributionSequenceOutput, granularity: str, tokenizer: Any = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[str], list[str]]:
    """Units of both axes of one sequence: ``(source_groups, target_groups, source_texts, target_texts)``.

    Texts are per token. Target units never straddle the first generated token, so prompt and generation keep
    their own units (a word the generation completes is split there).
    """
    source_texts = token_texts(seq.source, tokenizer)
    target_texts = token_texts(seq.target, tokenizer)
    source_groups = group_tokens(source_texts, granularity, special_token_mask(seq.source, tokenizer))
    target_groups = group_tokens(
        target_texts, granularity, special_token_mask(seq.target, tokenizer), breaks=(seq.attr_pos_start,)
    )
    return source_groups, target_groups, source_texts, target_texts


def aggregate_sequence(
    seq: FeatureAttributionSequenceOutput,
    granularity: str = "word",
    tokenizer: Any = None,
    aggregate_fn: str = "nansum",
    select: Mapping[str, int] | None = None,
) -> FeatureAttributionSequenceOutput:
    """:func:`aggregate_granularity` for one sequence attribution."""
    check_granularity(granularity)
    if aggregate_fn not in AggregationFunction.available_classes():
        raise ValueError(
            f"Unknown aggregate_fn {aggregate_fn!r}; "
            f"choose one of {', '.join(AggregationFunction.available_classes())}."
        )
    flat = to_2d(seq, select)
    if granularity == "token":
        return flat
    source_groups, target_groups, _, _ = sequence_groups(flat, granularity, tokenizer)
    return merge_token_spans(flat, source_groups, target_groups, aggregate_fn)


def merge_token_spans(
    seq: FeatureAttributionSequenceOutput,
    source_spans: Sequence[tuple[int, int]] = (),
    target_spans: Sequence[tuple[int, int]] = (),
    aggregate_fn: str = "nansum",
) -> FeatureAttributionSequenceOutput:
    """Merge contiguous ``(start, end)`` token spans (sorted, non-overlapping) with inseq's ``"spans"`` aggregator.

    ``seq`` must hold one score per token pair (see :func:`to_2d`); merged cells get ``aggregate_fn``.
    """
    merged = copy.copy(seq)
    merged._dict_aggregate_fn = copy.deepcopy(seq._dict_aggregate_fn)
    for field in ("source_attributions", "target_attributions"):
        merged._dict_aggregate_fn.setdefault(field, {})["spans"] = aggregate_fn
    # inseq 0.7.1 writes every new output's aggregation functions into its module-level defaults (and shares that
    # dict between outputs): without the restore, "nansum" would become every later span aggregation's default.
    saved_defaults = copy.deepcopy(DEFAULT_ATTRIBUTION_AGGREGATE_DICT)
    try:
        # Single-token spans are no-ops for inseq's span aggregator; pass only the merges.
        return merged.aggregate(
            "spans",
            source_spans=[tuple(span) for span in source_spans if span[1] - span[0] > 1],
            target_spans=[tuple(span) for span in target_spans if span[1] - span[0] > 1],
        )
    finally:
        DEFAULT_ATTRIBUTION_AGGREGATE_DICT.clear()
        DEFAULT_ATTRIBUTION_AGGREGATE_DICT.update(saved_defaults)


def merged_index(spans: Sequence[tuple[int, int]], position: int) -> int:
    """Index, after :func:`merge_token_spans` merged ``spans``, of the unit holding token ``position``."""
    first = next((start for start, end in spans if start <= position < end), position)
    return first - sum(end - start - 1 for start, end in spans if end <= first)


def char_spans_to_token_spans(
    texts: Sequence[str], char_spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int] | None]:
    """Token ``(start, end)`` of each character span of the text ``"".join(texts)``; ``None`` when no token is in it.

    As in :func:`group_tokens`, a token belongs where its first non-blank character is; blank tokens belong
    nowhere. ``char_spans`` must be sorted and non-overlapping.
    """
    firsts: list[int | None] = []
    offset = 0
    for piece in texts:
        blank = len(piece) - len(piece.lstrip())
        firsts.append(None if blank == len(piece) else offset + blank)
        offset += len(piece)
    result: list[tuple[int, int] | None] = []
    for low, high in char_spans:
        inside = [idx for idx, first in enumerate(firsts) if first is not None and low <= first < high]
        result.append((inside[0], inside[-1] + 1) if inside else None)
    return result


def aggregate_granularity(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    granularity: str = "word",
    tokenizer: Any = None,
    aggregate_fn: str = "nansum",
    select: Mapping[str, int] | None = None,
) -> FeatureAttributionOutput | FeatureAttributionSequenceOutput:
    """Merge tokens into words, sentences, lines or paragraphs on both axes (attributed and generated tokens).

    Works on any inseq attribution output (this package's methods and inseq's built-ins, decoder-only and
    encoder-decoder). Multi-dimensional scores are first reduced to one score per token pair with :func:`to_2d`
    (inseq's default aggregation, unless ``select`` picks a layer/head); then inseq's ``"spans"`` aggregator merges
    the units found by :func:`sequence_groups`.

    Args:
        output: An attribution output or one of its sequence attributions.
        granularity: ``"token"`` (only the reduction to 2D), ``"word"``, ``"sentence"``, ``"line"`` or
            ``"paragraph"``.
        tokenizer: Optional Hugging Face tokenizer or inseq model used to decode tokens (see :func:`token_texts`).
        aggregate_fn: inseq aggregation function for merged cells: ``"nansum"`` (default: a unit's score is the
            sum of its tokens' scores), ``"nanmean"``, or inseq's ``"absmax"``, ``"max"``, ... (these see NaN).
        select: Layer/head to show, e.g. ``{"layer": 1, "head": 0}`` (see :func:`to_2d`).

    Returns:
        An output of the same kind, with merged tokens (their strings concatenated) and merged scores.
    """
    if isinstance(output, FeatureAttributionSequenceOutput):
        return aggregate_sequence(output, granularity, tokenizer, aggregate_fn, select)
    sequences = [
        aggregate_sequence(seq, granularity, tokenizer, aggregate_fn, select) for seq in output.sequence_attributions
    ]
    return FeatureAttributionOutput(sequence_attributions=sequences, step_attributions=None, info=dict(output.info))


@dataclass
class UnitView:
    """One sequence at a granularity: unit texts on both axes and 2D scores (units x generated units).

    For decoder-only models ``source`` repeats the prompt units and ``source_scores`` is ``None``: the prompt and
    the earlier generated units are the rows of ``target_scores``.
    """

    source: list[str]
    target: list[str]
    source_scores: torch.Tensor | None
    target_scores: torch.Tensor | None
    generated_start: int
    generated_end: int

    @property
    def generated(self) -> list[str]:
        """Texts of the generated (attributed) units, in order; column ``t`` of the scores is ``generated[t]``."""
        return self.target[self.generated_start : self.generated_end]


def pick_sequence(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput, sequence: int = 0
) -> FeatureAttributionSequenceOutput:
    """The ``sequence``-th sequence attribution of an output (a sequence attribution is returned as is)."""
    if isinstance(output, FeatureAttributionSequenceOutput):
        return output
    count = len(output.sequence_attributions)
    if not isinstance(sequence, int) or not 0 <= sequence < count:
        raise ValueError(
            f"sequence={sequence!r} is out of range: this output holds {count} sequence(s), 0..{count - 1}."
        )
    return output.sequence_attributions[sequence]


def unit_view(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    sequence: int = 0,
    granularity: str = "token",
    tokenizer: Any = None,
    select: Mapping[str, int] | None = None,
    aggregate_fn: str = "nansum",
) -> UnitView:
    """Unit texts (decoded, not raw token strings) and merged 2D scores of one sequence; see
    :func:`aggregate_granularity` for the arguments."""
    flat = to_2d(pick_sequence(output, sequence), select)
    source_groups, target_groups, source_texts, target_texts = sequence_groups(flat, granularity, tokenizer)
    merged = aggregate_sequence(flat, granularity, tokenizer, aggregate_fn)
    start = len([span for span in target_groups if span[1] <= flat.attr_pos_start])
    return UnitView(
        source=["".join(source_texts[a:b]) for a, b in source_groups],
        target=["".join(target_texts[a:b]) for a, b in target_groups],
        source_scores=merged.source_attributions,
        target_scores=merged.target_attributions,
        generated_start=start,
        generated_end=start + (merged.attr_pos_end - merged.attr_pos_start),
    )

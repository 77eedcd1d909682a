"""Alignment accuracy of attribution methods on the translation demo model (an encoder-decoder).

The translation demo model turns English into an invented language word by word, with known reordering (adjectives
after their noun, verb last, time adverb first), so every target word has exactly one aligned source word; each
probe of ``probes.json`` lists it (``alignment``: indices into ``source_tokens``). For a method, the reference
translation of a probe is attributed as a forced target, and each target word counts as a hit when the source token
with the largest score magnitude at that generation step is its aligned source word. Special tokens (``<s>``,
``</s>``) are never candidates, and the final stop is not scored (its alignment to the source stop is trivial).
The random baseline is the expected hit rate of picking a candidate source token uniformly.

This is the "alignment error rate" style of evaluation of attributions on translation models (e.g. Ding, Xu & Koehn,
2019, "Saliency-driven word alignment interpretation for neural machine translation"), made exact by a synthetic
language whose alignment is known rather than annotated.

Scores are source attributions after inseq's default aggregation of each method; for ``attention`` these are the
decoder's cross-attention weights (mean over layers and heads).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import inseq
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from ..demo_models import demo_model, demo_probes
from .hit_rates import (
    RANDOM_BASELINE,
    GroundTruthResult,
    attention_implementation,
    check_methods,
    quiet_inseq_logging,
    summarize_hits,
)

TRANSLATION_MODEL = "translation"
WORD_CLASSES = ("det", "noun", "adj", "verb", "adv")
DEFAULT_TRANSLATION_METHODS = (
    "custom_saliency",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "attention",
    "attnlrp",
    "rotary_attention",
    "attention_rollout",
    RANDOM_BASELINE,
)
# inseq's first generation step of an encoder-decoder predicts "<s>" after the decoder start token; target word i
# (0-based) is predicted at step i + 1.
FIRST_WORD_STEP = 1


def load_translation_model(
    name: str = TRANSLATION_MODEL, attn_implementation: str = "eager"
) -> inseq.models.AttributionModel:
    """The translation demo model wrapped by inseq: ``"eager"`` attention for ``attention`` (which reads the
    weights), ``"sdpa"`` (the Hugging Face default) for the other methods."""
    directory = demo_model(name)
    model = AutoModelForSeq2SeqLM.from_pretrained(directory, attn_implementation=attn_implementation).eval()
    return inseq.load_model(model, "saliency", tokenizer=AutoTokenizer.from_pretrained(directory))


def source_candidates(probe: dict[str, Any], special_tokens: set[str]) -> list[int]:
    """Source positions that may be chosen: every source token except special ones."""
    return [index for index, token in enumerate(probe["source_tokens"]) if token not in special_tokens]


def scored_words(probe: dict[str, Any]) -> list[int]:
    """Indices of the target words that are scored (all but punctuation)."""
    return [index for index, word_class in enumerate(probe["word_classes"]) if word_class != "punct"]


def top_source_positions(
    attribution_model: inseq.models.AttributionModel, probe: dict[str, Any], method: str, **method_kwargs: Any
) -> list[int]:
    """Per target word of the probe's reference translation, the source position with the largest |score|."""
    out = attribution_model.attribute(
        probe["source"], probe["target"], method=method, show_progress=False, **method_kwargs
    )
    sequence = out.aggregate().sequence_attributions[0]
    source_tokens = [token.token for token in sequence.source]
    if source_tokens != probe["source_tokens"]:
        raise ValueError(f"inseq tokenized {probe['source']!r} differently from probes.json: {source_tokens}")
    # Columns of source_attributions are the target tokens from attr_pos_start on: "<s>", the words, "</s>".
    generated = [token.token for token in sequence.target][sequence.attr_pos_start :]
    words = generated[FIRST_WORD_STEP : FIRST_WORD_STEP + len(probe["target_words"])]
    if words != probe["target_words"]:
        raise ValueError(f"inseq tokenized the target {probe['target']!r} unexpectedly: {generated}")
    special = set(attribution_model.tokenizer.all_special_tokens)
    candidates = source_candidates(probe, special)
    scores = sequence.source_attributions.abs().nan_to_num(nan=-math.inf)
    positions = []
    for word_index in range(len(probe["target_words"])):
        column = scores[candidates, FIRST_WORD_STEP + word_index]
        positions.append(candidates[int(torch.argmax(column))])
    return positions


def evaluate_translation(
    methods: Sequence[str] = DEFAULT_TRANSLATION_METHODS, probes: int | None = None, name: str = TRANSLATION_MODEL
) -> list[GroundTruthResult]:
    """Alignment accuracy (share of target words whose top source token is the aligned one) of each method.

    Args:
        methods: inseq method names (``import inseq_ext`` registers this package's) and/or ``"random"``.
        probes: Number of probes to use (the first ones of ``probes.json``); ``None`` for all.
        name: The demo model (an encoder-decoder whose probes carry an ``alignment``).

    Returns:
        One :class:`~inseq_ext.evaluation.hit_rates.GroundTruthResult` per method: ``per_task`` holds the accuracy
        per word class (determiner, noun, adjective, verb, adverb), ``overall`` over all scored words, ``hits`` one
        0/1 per scored word (expected hit for the random baseline).

    Raises:
        ValueError: for an unknown method or a non-positive number of probes.
    """
    check_methods(methods)
    if probes is not None and probes < 1:
        raise ValueError(f"probes must be a positive number, got {probes}.")
    selected = demo_probes(name)[:probes]
    loaded: dict[str, inseq.models.AttributionModel] = {}
    results = []
    with quiet_inseq_logging():
        for method in methods:
            started = time.perf_counter()
            implementation = attention_implementation(method)
            if implementation not in loaded:
                loaded[implementation] = load_translation_model(name, implementation)
            attribution_model = loaded[implementation]
            special = set(attribution_model.tokenizer.all_special_tokens)
            hits: list[float] = []
            classes: list[str] = []
            for probe in selected:
                words = scored_words(probe)
                if method == RANDOM_BASELINE:
                    chance = 1 / len(source_candidates(probe, special))
                    hits += [chance] * len(words)
                else:
                    top = top_source_positions(attribution_model, probe, method)
                    hits += [float(top[index] == probe["alignment"][index]) for index in words]
                classes += [probe["word_classes"][index] for index in words]
            results.append(summarize_hits(name, method, hits, classes, WORD_CLASSES, len(selected), started))
    return results

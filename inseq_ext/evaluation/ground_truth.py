"""Ground-truth check of attribution methods on the demo models' probe sets.

Every probe of a demo model (``probes.json``) is a prompt whose answer depends on one known prompt token: the
subject of a fact, the opinion word of a review, the hour on the asked service's line, the first word of a code to
repeat. For each method, each probe's first answer token is attributed as a forced target, and the probe counts as
a hit when the prompt token with the largest score magnitude is a ground-truth token (special tokens such as
``<s>`` are never candidates). The random baseline is the expected hit rate of picking a candidate uniformly:
the mean over probes of ``|truth| / |candidates|``.

Scores are taken after inseq's default aggregation of each method (e.g. the L2 norm over the hidden size for
``saliency``, the mean over layers and heads for ``attention``); magnitudes are compared because a large negative
contribution is as decisive as a large positive one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import inseq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..demo_models import DEMO_MODEL_NAMES, ENCODER_DECODER_DEMO_MODEL_NAMES, demo_model, demo_probes
from .hit_rates import (
    EAGER_ATTENTION_METHODS,
    RANDOM_BASELINE,
    GroundTruthResult,
    attention_implementation,
    check_methods,
    markdown_table,
    quiet_inseq_logging,
    summarize_hits,
)
from .translation_truth import evaluate_translation

DEFAULT_METHODS = (
    "custom_saliency",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "attention",
    "rotary_attention",
    "attention_rollout",
    "block_gradient_x_input",
    "attnlrp",
    RANDOM_BASELINE,
)
TASKS = ("facts", "sentiment", "lookup", "copy")
# Methods for decoder-only models: left out for the encoder-decoder demo model when several models are evaluated.
# None at present: rotary_attention and attention_rollout rebuild encoder-decoder attention too.
DECODER_ONLY_METHODS: frozenset[str] = frozenset()


def load_for_evaluation(name: str, attn_implementation: str = "sdpa") -> inseq.models.AttributionModel:
    """A demo model wrapped by inseq.

    Args:
        name: A demo model name.
        attn_implementation: ``"eager"`` for methods that read ``output_attentions`` (inseq's ``attention``),
            ``"sdpa"`` (the Hugging Face default a user gets) for the others.
    """
    directory = demo_model(name)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation=attn_implementation).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return inseq.load_model(model, "saliency", tokenizer=tokenizer)


def select_probes(probes: list[dict[str, Any]], per_task: int | None) -> list[dict[str, Any]]:
    """The first ``per_task`` probes of each task (all when ``None``), in file order."""
    if per_task is None:
        return list(probes)
    counts: dict[str, int] = {}
    selected = []
    for probe in probes:
        if counts.get(probe["task"], 0) < per_task:
            counts[probe["task"]] = counts.get(probe["task"], 0) + 1
            selected.append(probe)
    return selected


def candidate_positions(probe: dict[str, Any], special_tokens: set[str]) -> list[int]:
    """Prompt positions that may be chosen: every prompt token except special ones."""
    return [index for index, token in enumerate(probe["prompt_tokens"]) if token not in special_tokens]


def top_token_hit(
    attribution_model: inseq.models.AttributionModel, probe: dict[str, Any], method: str, **method_kwargs: Any
) -> float:
    """1.0 when ``method``'s top-scored prompt token for the probe's first answer token is a ground-truth one."""
    prompt = probe["prompt"]
    out = attribution_model.attribute(
        prompt, prompt + probe["answer_first_token"], method=method, show_progress=False, **method_kwargs
    )
    sequence = out.aggregate().sequence_attributions[0]
    tokens = [token.token for token in sequence.target]
    prompt_tokens = probe["prompt_tokens"]
    if tokens[: len(prompt_tokens)] != prompt_tokens:
        raise ValueError(f"inseq tokenized the probe {prompt!r} differently from probes.json: {tokens}")
    # One generation step is attributed: the first answer token; rows are the tokens of prompt + answer.
    scores = sequence.target_attributions[: len(prompt_tokens), 0].abs().nan_to_num(nan=-math.inf)
    special = set(attribution_model.tokenizer.all_special_tokens)
    candidates = candidate_positions(probe, special)
    best = candidates[int(torch.argmax(scores[candidates]))]
    return float(best in probe["truth_positions"])


def random_hit(probe: dict[str, Any], special_tokens: set[str]) -> float:
    """Expected hit of a uniformly random candidate token."""
    candidates = candidate_positions(probe, special_tokens)
    return sum(position in candidates for position in set(probe["truth_positions"])) / len(candidates)


def evaluate_model(
    name: str, methods: Sequence[str] = DEFAULT_METHODS, per_task: int | None = None
) -> list[GroundTruthResult]:
    """Hit rates of ``methods`` (inseq method names, or ``"random"``) on demo model ``name``'s probes.

    Args:
        name: A demo model name (see :data:`~inseq_ext.demo_models.DEMO_MODEL_NAMES`).
        methods: Attribution methods registered in inseq (``import inseq_ext`` adds this package's), and/or
            ``"random"`` for the random baseline. New methods are evaluated by adding their name.
        per_task: Probes per task (the first ones of the file); ``None`` for all.

    Raises:
        ValueError: for an unknown model or method name (the message lists the valid choices).
    """
    check_methods(methods)
    if per_task is not None and per_task < 1:
        raise ValueError(f"per_task must be a positive number of probes, got {per_task}.")
    probes = select_probes(demo_probes(name), per_task)
    loaded: dict[str, inseq.models.AttributionModel] = {}
    results = []
    with quiet_inseq_logging():
        for method in methods:
            started = time.perf_counter()
            implementation = attention_implementation(method)
            if implementation not in loaded:
                loaded[implementation] = load_for_evaluation(name, implementation)
            attribution_model = loaded[implementation]
            special = set(attribution_model.tokenizer.all_special_tokens)
            if method == RANDOM_BASELINE:
                hits = [random_hit(probe, special) for probe in probes]
            else:
                hits = [top_token_hit(attribution_model, probe, method) for probe in probes]
            groups = [probe["task"] for probe in probes]
            results.append(summarize_hits(name, method, hits, groups, TASKS, len(probes), started))
    return results


def evaluate(
    models: Sequence[str] = DEMO_MODEL_NAMES, methods: Sequence[str] = DEFAULT_METHODS, per_task: int | None = None
) -> list[GroundTruthResult]:
    """:func:`evaluate_model` for each demo model in ``models``.

    The encoder-decoder demo model (``"translation"``) is scored by its alignment accuracy instead
    (:func:`inseq_ext.evaluation.translation_truth.evaluate_translation`, ``per_task`` sentences), without the
    :data:`DECODER_ONLY_METHODS`.
    """
    results = []
    for name in models:
        usable = [method for method in methods if applies_to(method, name)]
        if name in ENCODER_DECODER_DEMO_MODEL_NAMES:
            results += evaluate_translation(usable, per_task, name)
        else:
            results += evaluate_model(name, usable, per_task)
    return results


def applies_to(method: str, name: str) -> bool:
    """Whether ``method`` can attribute demo model ``name`` (decoder-only methods skip encoder-decoders)."""
    return not (name in ENCODER_DECODER_DEMO_MODEL_NAMES and method in DECODER_ONLY_METHODS)


__all__ = [
    "DEFAULT_METHODS",
    "EAGER_ATTENTION_METHODS",
    "RANDOM_BASELINE",
    "TASKS",
    "GroundTruthResult",
    "applies_to",
    "evaluate",
    "evaluate_model",
    "markdown_table",
]

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

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import inseq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .demo_models import DEMO_MODEL_NAMES, ENCODER_DECODER_DEMO_MODEL_NAMES, demo_model, demo_probes

RANDOM_BASELINE = "random"
DEFAULT_METHODS = (
    "custom_saliency",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "attention",
    "rotary_attention",
    "block_gradient_x_input",
    RANDOM_BASELINE,
)
TASKS = ("facts", "sentiment", "lookup", "copy")
# Methods that read attention weights from ``output_attentions``, which PyTorch's fused (SDPA) attention does not
# return; every other method (``rotary_attention`` included, which rebuilds the weights) runs on the SDPA model.
EAGER_ATTENTION_METHODS = frozenset({"attention"})
# Methods for decoder-only models: left out for the encoder-decoder demo model when several models are evaluated.
DECODER_ONLY_METHODS = frozenset({"rotary_attention"})


@dataclass
class GroundTruthResult:
    """Top-1 hit rates of one method on one demo model, per task and overall (probes weighted equally)."""

    model: str
    method: str
    per_task: dict[str, float]
    overall: float
    probes: int
    seconds: float
    hits: list[float] = field(default_factory=list, repr=False)


@contextmanager
def quiet_inseq_logging() -> Iterator[None]:
    """Silence inseq's per-call log lines during an evaluation loop; the previous level comes back after."""
    inseq_logger = logging.getLogger("inseq")
    previous_level = inseq_logger.level
    inseq_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        inseq_logger.setLevel(previous_level)


def summarize_hits(
    model: str,
    method: str,
    hits: list[float],
    groups: list[str],
    group_order: Sequence[str],
    probes: int,
    started: float,
) -> GroundTruthResult:
    """Hit rate overall and per group (task or word class; ``groups[i]`` is the group of ``hits[i]``)."""
    per_group = {
        group: sum(hit for hit, of in zip(hits, groups, strict=True) if of == group) / groups.count(group)
        for group in group_order
        if group in groups
    }
    return GroundTruthResult(
        model=model,
        method=method,
        per_task=per_group,
        overall=sum(hits) / len(hits),
        probes=probes,
        seconds=time.perf_counter() - started,
        hits=hits,
    )


def check_methods(methods: Sequence[str]) -> None:
    """A ``ValueError`` listing the valid choices when a name is neither an inseq method nor the random baseline."""
    valid = set(inseq.list_feature_attribution_methods()) | {RANDOM_BASELINE}
    unknown = [method for method in methods if method not in valid]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; choose from: {', '.join(sorted(valid))}.")


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
            implementation = "eager" if method in EAGER_ATTENTION_METHODS else "sdpa"
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
    (:func:`inseq_ext.translation_truth.evaluate_translation`, ``per_task`` sentences), without the
    :data:`DECODER_ONLY_METHODS`.
    """
    from .translation_truth import evaluate_translation  # it builds on this module

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


def markdown_table(results: Sequence[GroundTruthResult]) -> str:
    """A Markdown table: one row per (model, method), top-1 hit rate per task and overall, in percent.

    The columns are the keys of the results' ``per_task`` in order of appearance (the tasks of the causal demo
    models, or the word classes of the translation model's alignment accuracy).
    """
    tasks = list(dict.fromkeys(task for result in results for task in result.per_task))
    header = ["model", "method", *tasks, "overall", "probes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for result in results:
        cells = [result.model, f"`{result.method}`" if result.method != RANDOM_BASELINE else "random baseline"]
        cells += [f"{100 * result.per_task[task]:.0f}%" if task in result.per_task else "" for task in tasks]
        cells += [f"**{100 * result.overall:.0f}%**", str(result.probes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

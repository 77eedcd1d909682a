"""The published comparison: every method on the three demo models, faithfulness next to ground truth.

For the causal demo models (``gpt2``, ``llama``) each probe of ``probes.json`` is attributed on its first answer
token (forced: prompt + answer), and its known source token (``truth_positions``) is the rationale. For the
translation model each probe's reference translation is attributed, every target word is a step, and its aligned
source word is the rationale of that step. Each method is then evaluated with
:func:`~inseq_ext.evaluation.faithfulness.compare.compare_methods`: comprehensiveness and sufficiency AOPC, Soft-NC,
Soft-NS and pointing accuracy, with the random baseline and bootstrap intervals over probes and tokens.

A new method is evaluated by adding its registered name to ``methods`` (all registered methods by default).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...demo_models import DEMO_MODEL_NAMES, ENCODER_DECODER_DEMO_MODEL_NAMES, demo_probes
from .compare import RANDOM_ROW, MethodComparison, compare_methods
from .evaluate import DEFAULT_METRICS
from .metrics import HIGHER_IS_BETTER, LABELS, POINTING_ACCURACY

#: Registered names that are not attribution methods to compare.
NOT_METHODS = frozenset({"dummy"})
DEMO_METRICS = DEFAULT_METRICS + (POINTING_ACCURACY,)


def default_demo_methods() -> list[str]:
    """Every method in inseq's registry (this package's included), except placeholders."""
    import inseq

    return sorted(set(inseq.list_feature_attribution_methods()) - NOT_METHODS)


def _probes(name: str, per_task: int | None) -> list[dict[str, Any]]:
    from ..ground_truth import select_probes

    if name in ENCODER_DECODER_DEMO_MODEL_NAMES:
        probes = demo_probes(name)
        return probes if per_task is None else probes[:per_task]
    return select_probes(demo_probes(name), per_task)


def _load(name: str, implementation: str) -> Any:
    from ..ground_truth import load_for_evaluation
    from ..translation_truth import load_translation_model

    if name in ENCODER_DECODER_DEMO_MODEL_NAMES:
        return load_translation_model(name)  # eager attention: inseq's attention reads the cross-attention weights
    return load_for_evaluation(name, implementation)


def _attribute(model: Any, name: str, probe: dict[str, Any], method: str) -> Any:
    """The probe attributed with ``method``; its tokens are checked against ``probes.json`` (rationale positions)."""
    if name in ENCODER_DECODER_DEMO_MODEL_NAMES:
        out = model.attribute(probe["source"], probe["target"], method=method, show_progress=False)
        tokens, expected = [token.token for token in out.sequence_attributions[0].source], probe["source_tokens"]
    else:
        prompt = probe["prompt"]
        out = model.attribute(prompt, prompt + probe["answer_first_token"], method=method, show_progress=False)
        expected = probe["prompt_tokens"]
        tokens = [token.token for token in out.sequence_attributions[0].target][: len(expected)]
    if tokens != expected:
        raise ValueError(f"inseq tokenized the probe differently from probes.json: {tokens} != {expected}")
    return out


def _rationales_and_steps(name: str, probes: list[dict[str, Any]]) -> tuple[list[Any], list[Any] | None]:
    """Per probe: the rationale (positions of the perturbed input) and the steps to evaluate."""
    if name not in ENCODER_DECODER_DEMO_MODEL_NAMES:
        return [list(probe["truth_positions"]) for probe in probes], None
    from ..translation_truth import FIRST_WORD_STEP, scored_words

    rationales, steps = [], []
    for probe in probes:
        words = scored_words(probe)  # every target word but punctuation
        rationales.append({FIRST_WORD_STEP + i: [probe["alignment"][i]] for i in words})
        steps.append([FIRST_WORD_STEP + i for i in words])
    return rationales, steps


def demo_comparison(
    name: str,
    methods: Sequence[str] | None = None,
    per_task: int | None = None,
    progress: Callable[[str], None] | None = None,
    **evaluate_kwargs: Any,
) -> MethodComparison:
    """Faithfulness and pointing accuracy of ``methods`` on demo model ``name``'s probes.

    Args:
        name: A demo model (``gpt2``, ``llama``, ``translation``).
        methods: Registered method names (default: all); a method that fails on this model is reported in
            ``failures`` and left out of the table. Decoder-only methods are skipped on the translation model.
        per_task: Probes per task for the causal models, sentences for the translation model (default: all).
        progress: Called with one line per method (e.g. ``print`` to stderr).
        **evaluate_kwargs: Passed to :func:`~inseq_ext.evaluation.evaluate_faithfulness`.
    """
    from ..ground_truth import DECODER_ONLY_METHODS, EAGER_ATTENTION_METHODS
    from ..hit_rates import quiet_inseq_logging

    if name not in DEMO_MODEL_NAMES:
        raise ValueError(f"Unknown demo model {name!r}; choose one of: {', '.join(DEMO_MODEL_NAMES)}.")
    methods = list(methods) if methods is not None else default_demo_methods()
    probes = _probes(name, per_task)
    rationales, steps = _rationales_and_steps(name, probes)
    outputs: dict[str, list[Any]] = {}
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    with quiet_inseq_logging():
        scoring_model = _load(name, "sdpa")
        for method in methods:
            if name in ENCODER_DECODER_DEMO_MODEL_NAMES and method in DECODER_ONLY_METHODS:
                failures[method] = "a method for decoder-only models"
                continue
            # A fresh model per method: a method that fails half-way may leave hooks behind (inseq's
            # value_zeroing does), which would break the methods after it.
            model = _load(name, "eager" if method in EAGER_ATTENTION_METHODS else "sdpa")
            started = time.perf_counter()
            try:
                outputs[method] = [_attribute(model, name, probe, method) for probe in probes]
            except Exception as error:  # noqa: BLE001  (any method of the registry may fail in its own way)
                failures[method] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120]}"
                if progress:
                    progress(f"{name} {method}: fails ({failures[method]})")
                continue
            seconds[method] = time.perf_counter() - started
            if progress:
                progress(f"{name} {method}: attributed {len(probes)} probes in {seconds[method]:.1f} s")
        evaluate_kwargs.setdefault("metrics", DEMO_METRICS)
        comparison = compare_methods(
            scoring_model, outputs, rationales=rationales, steps=steps, title=f"demo model {name}", **evaluate_kwargs
        )
    comparison.failures = failures
    return comparison


def demo_markdown(comparisons: dict[str, MethodComparison], digits: int = 2) -> str:
    """One Markdown table: per demo model, its methods ranked by comprehensiveness AOPC, then the random baseline.

    Cells are ``mean [95% CI]``; ``*`` marks a method that beats the random baseline (paired interval excludes 0).
    """
    metrics = list(DEMO_METRICS)
    header = ["model", "method"] + [f"{LABELS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    notes = []
    for name, comparison in comparisons.items():
        for method in comparison.ranked():
            result = comparison.results[method]
            cells = []
            for metric in metrics:
                entry = result.metrics.get(metric)
                mark = "*" if entry is not None and entry.beats_random else ""
                cells.append("" if entry is None else entry.estimate.format(digits) + mark)
            lines.append("| " + " | ".join([name, f"`{method}`", *cells]) + " |")
        first = next(iter(comparison.results.values()), None)
        if first is not None:
            random_cells = [first.metrics[m].random.format(digits) if m in first.metrics and first.metrics[m].random
                            else "" for m in metrics]  # fmt: skip
            lines.append("| " + " | ".join([name, RANDOM_ROW, *random_cells]) + " |")
            probes, tokens = first.sequences, first.steps
            notes.append(f"{name}: {probes} probes, {tokens} evaluated tokens")
        for method, message in comparison.failures.items():
            notes.append(f"{name} `{method}`: not evaluated ({message})")
    first = next((c for c in comparisons.values() if c.results), None)
    legend = first.legend() if first else ""
    return "\n".join(lines) + "\n\n" + legend + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def stderr_progress(line: str) -> None:
    """Progress lines on stderr (the table goes to stdout)."""
    print(line, file=sys.stderr, flush=True)

"""``evaluate_faithfulness``: how well an inseq attribution output reflects what the model used.

The attribution output's own generation is re-scored under perturbed inputs (see
:mod:`~inseq_ext.evaluation.faithfulness.metrics` for the metrics and their formulas). Every perturbed input of
every step, for the attribution and for the random baseline, is collected first and then scored by a
:class:`~inseq_ext.evaluation.faithfulness.scorer.ProbabilityScorer` in batched, gradient-free forward passes that
share identical and prefix-related inputs across steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

from inseq.data import FeatureAttributionOutput

from .metrics import (
    CURVE_METRICS,
    METRICS,
    PLAUSIBILITY_METRICS,
    REMOVAL_METRICS,
    SOFT_METRICS,
    StepSettings,
    StepValues,
    evaluate_step,
)
from .ranking import DEFAULT_KS, REMOVALS, Perturber, Ranking, attribution_ranking, check_ks, k_label, random_ranking
from .result import CurveResult, FaithfulnessResult, MetricResult
from .scorer import DEFAULT_BATCH_TOKENS, ProbabilityScorer, Query, stable_seed
from .statistics import bootstrap_estimate, paired_differences
from .steps import AttributedStep, Rationale, attributed_steps

#: Metrics computed when none are named: the hard and soft removal metrics (plausibility is added when rationales
#: are given).
DEFAULT_METRICS = REMOVAL_METRICS + SOFT_METRICS
DEFAULT_SOFT_SAMPLES = 1  # one mask per input, as in Zhao & Aletras (2023)
DEFAULT_RANDOM_SEEDS = 3
DEFAULT_CURVE_POINTS = 11


def evaluate_faithfulness(
    attribution_model: Any,
    output: FeatureAttributionOutput | Sequence[FeatureAttributionOutput],
    metrics: Sequence[str] | str | None = None,
    ks: Sequence[int | float] = DEFAULT_KS,
    removal: str = "delete",
    baseline_token: str | int | None = None,
    rationales: Sequence[Rationale] | None = None,
    steps: Sequence[Collection[int] | None] | None = None,
    soft_samples: int = DEFAULT_SOFT_SAMPLES,
    random_seeds: int = DEFAULT_RANDOM_SEEDS,
    curve_points: int = DEFAULT_CURVE_POINTS,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    method: str | None = None,
    scorer: ProbabilityScorer | None = None,
) -> FaithfulnessResult:
    """Faithfulness (and, with rationales, plausibility) of an attribution output, with a random baseline.

    Works for any inseq attribution output: this package's methods and inseq's built-ins; multi-dimensional outputs
    (``attention``, ``block_gradient_x_input``, ``saliency`` before aggregation) are first reduced by inseq's
    default aggregation, the map ``out.show()`` shows. For decoder-only models each step's attributed prefix is
    perturbed; for encoder-decoder models, the source. Special tokens (``<s>``, ...) are never ranked nor removed.

    Args:
        attribution_model: The inseq model the output was computed with (``inseq.load_model(...)``); its weights
            score the perturbed inputs.
        output: An attribution output, or several (their sequences are pooled, e.g. one output per prompt).
        metrics: Names from :data:`~inseq_ext.evaluation.faithfulness.metrics.METRICS`, or ``"all"``. Default:
            comprehensiveness, sufficiency, soft comprehensiveness and soft sufficiency, plus the plausibility
            metrics (pointing accuracy, token F1, AUPRC) when ``rationales`` are given.
        ks: How many top tokens comprehensiveness/sufficiency remove/keep: ints are token counts, floats in (0, 1]
            fractions of the step's rankable tokens (rounded up, at least one). AOPC is the mean over ``ks``.
        removal: ``"delete"`` (tokens are dropped from the input) or ``"replace"`` (by ``baseline_token``).
        baseline_token: Token text or id put in place of removed tokens with ``removal="replace"``. Default: the
            tokenizer's unknown token, else its pad token, else its end-of-sequence token.
        rationales: Known rationales, one per sequence: positions of the perturbable input (prefix token indices
            for decoder-only models, source token indices for encoder-decoder ones, from 0), for all steps, or a
            mapping ``{step: positions}``.
        steps: Optional, one per sequence: the steps (indices among its attributed tokens) to evaluate; ``None``
            for all.
        soft_samples: Bernoulli masks drawn per step for each soft metric (seeded).
        random_seeds: Random rankings averaged into the random baseline; 0 for no baseline.
        curve_points: Points of the deletion/insertion curves, evenly spaced fractions from 0 to 1.
        bootstrap: Bootstrap resamples for the confidence intervals; 0 for none.
        confidence: Coverage of the intervals.
        seed: Seed of everything random: tie-breaking, random rankings, soft masks, bootstrap.
        batch_tokens: Padded tokens per forward pass at most.
        method: Name shown for the attribution (default: the method recorded in the output).
        scorer: A :class:`~inseq_ext.evaluation.faithfulness.scorer.ProbabilityScorer` for this model to reuse
            across calls: answers are cached, so evaluating several methods on the same generation computes the
            random baseline once.

    Returns:
        A :class:`~inseq_ext.evaluation.faithfulness.result.FaithfulnessResult`: per-sequence, per-token values,
        means with bootstrap intervals, the random baseline and the paired difference to it; ``.summary()``,
        ``.to_dict()``, ``.plot_curves(path)``.

    Raises:
        ValueError: for an unknown metric or removal, bad ``ks`` or options, plausibility metrics without
            rationales, or an output that does not fit the model.
    """
    model = getattr(attribution_model, "model", None)
    tokenizer = getattr(attribution_model, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ValueError("attribution_model must be an inseq AttributionModel (inseq.load_model(...)).")
    outputs = [output] if isinstance(output, FeatureAttributionOutput) else list(output)
    if not outputs or not all(isinstance(item, FeatureAttributionOutput) for item in outputs):
        raise ValueError("output must be an inseq FeatureAttributionOutput or a non-empty list of them.")
    chosen = resolve_metrics(metrics, rationales is not None)
    ks = check_ks(ks)
    _check_options(removal, soft_samples, random_seeds, curve_points, bootstrap, confidence)
    if scorer is None:
        scorer = ProbabilityScorer(model, batch_tokens=batch_tokens)
    elif scorer.model is not model:
        raise ValueError("scorer was made for another model; pass ProbabilityScorer(attribution_model.model).")
    is_encoder_decoder = bool(attribution_model.is_encoder_decoder)
    perturber = Perturber(
        removal=removal,
        baseline_id=resolve_baseline(tokenizer, baseline_token, removal),
        start_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
    )
    per_sequence = _collect_steps(outputs, tokenizer.all_special_ids, is_encoder_decoder, rationales, steps)
    settings = StepSettings(
        metrics=frozenset(chosen),
        ks=ks,
        perturber=perturber,
        soft_samples=soft_samples,
        curve_fractions=tuple(i / (curve_points - 1) for i in range(curve_points)),
        seed=seed,
    )
    rankers: list[Callable[[AttributedStep], Ranking]] = [lambda step: attribution_ranking(step, seed)]
    rankers += [
        lambda step, r=r: random_ranking(step, stable_seed("random baseline", seed, r)) for r in range(random_seeds)
    ]

    def compute(probability: Callable[[Query], float]) -> list[list[list[StepValues]]]:
        return [
            [[evaluate_step(step, ranker(step), settings, probability) for step in row] for row in per_sequence]
            for ranker in rankers
        ]

    recorded: list[Query] = []
    compute(lambda query: recorded.append(query) or 0.5)  # the queries do not depend on the answers
    passes = scorer.forward_passes
    scorer.prefetch(recorded)
    values = compute(scorer.cached)

    name = method or str(outputs[0].info.get("attribution_method") or "attribution")
    result = _assemble(name, chosen, ks, settings, values, per_sequence, bootstrap, confidence, seed)
    result.forward_passes = scorer.forward_passes - passes
    result.settings = {
        "metrics": list(chosen),
        "ks": list(ks),
        "k_labels": [k_label(k) for k in ks],
        "removal": removal,
        "baseline_token_id": perturber.baseline_id,
        "soft_samples": soft_samples,
        "random_seeds": random_seeds,
        "curve_points": curve_points,
        "bootstrap": bootstrap,
        "confidence": confidence,
        "seed": seed,
    }
    return result


def resolve_metrics(metrics: Sequence[str] | str | None, have_rationales: bool) -> tuple[str, ...]:
    """The metric names to compute, checked (``ValueError`` naming the valid choices)."""
    if metrics is None:
        return DEFAULT_METRICS + (PLAUSIBILITY_METRICS if have_rationales else ())
    if metrics == "all":
        return tuple(name for name in METRICS if have_rationales or name not in PLAUSIBILITY_METRICS)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"Unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from: "
            f"{', '.join(METRICS)}, or 'all'."
        )
    if not have_rationales and any(name in PLAUSIBILITY_METRICS for name in names):
        raise ValueError(
            f"{', '.join(name for name in names if name in PLAUSIBILITY_METRICS)} compare the map with a known "
            "rationale: pass rationales=[positions per sequence] (or leave these metrics out)."
        )
    return tuple(dict.fromkeys(names))


def _check_options(
    removal: str, soft_samples: int, random_seeds: int, curve_points: int, bootstrap: int, confidence: float
) -> None:
    if removal not in REMOVALS:
        raise ValueError(f"Unknown removal {removal!r}; choose one of: {', '.join(REMOVALS)}.")
    for name, value, least in (
        ("soft_samples", soft_samples, 1),
        ("random_seeds", random_seeds, 0),
        ("curve_points", curve_points, 2),
        ("bootstrap", bootstrap, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}.")


def resolve_baseline(tokenizer: Any, baseline_token: str | int | None, removal: str) -> int | None:
    """The id of the replacement token for ``removal="replace"`` (``None`` for deletion)."""
    if removal != "replace":
        if baseline_token is not None:
            raise ValueError("baseline_token is only used with removal='replace'.")
        return None
    if baseline_token is None:
        for candidate in (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        raise ValueError("The tokenizer has no unk/pad/eos token to replace removed tokens with; pass baseline_token.")
    if isinstance(baseline_token, int) and not isinstance(baseline_token, bool):
        if not 0 <= baseline_token < len(tokenizer):
            raise ValueError(f"baseline_token id {baseline_token} is not in the vocabulary (0..{len(tokenizer) - 1}).")
        return baseline_token
    if isinstance(baseline_token, str):
        token_id = tokenizer.convert_tokens_to_ids(baseline_token)
        if token_id is not None and (token_id != tokenizer.unk_token_id or baseline_token == tokenizer.unk_token):
            return int(token_id)
        ids = tokenizer(baseline_token, add_special_tokens=False).input_ids
        if len(ids) == 1:
            return int(ids[0])
        raise ValueError(f"baseline_token {baseline_token!r} is not a single token of the vocabulary ({ids}).")
    raise ValueError(f"baseline_token must be a token text or id, got {baseline_token!r}.")


def _collect_steps(
    outputs: list[FeatureAttributionOutput],
    special_ids: Collection[int],
    is_encoder_decoder: bool,
    rationales: Sequence[Rationale] | None,
    steps: Sequence[Collection[int] | None] | None,
) -> list[list[AttributedStep]]:
    total = sum(len(output.sequence_attributions) for output in outputs)
    for name, given in (("rationales", rationales), ("steps", steps)):
        if given is not None and len(given) != total:
            raise ValueError(f"{name} has {len(given)} entries for {total} attributed sequences.")
    per_sequence: list[list[AttributedStep]] = []
    for output in outputs:
        count = len(output.sequence_attributions)
        offset = len(per_sequence)
        chunk = list(rationales[offset : offset + count]) if rationales is not None else None
        for index, row in enumerate(attributed_steps(output, special_ids, is_encoder_decoder, chunk)):
            selected = steps[offset + index] if steps is not None else None
            if selected is not None:
                wanted = set(selected)
                unknown = wanted - {step.step for step in row}
                if unknown:
                    raise ValueError(f"steps {sorted(unknown)} of sequence {offset + index} were not attributed.")
                row = [step for step in row if step.step in wanted]
            per_sequence.append([dataclasses.replace(step, sequence=offset + index) for step in row])
    if not any(per_sequence):
        raise ValueError("The output has no attributed generation steps to evaluate.")
    return per_sequence


def _mean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan


def _assemble(
    name: str,
    chosen: tuple[str, ...],
    ks: tuple[int | float, ...],
    settings: StepSettings,
    values: list[list[list[StepValues]]],
    per_sequence: list[list[AttributedStep]],
    bootstrap: int,
    confidence: float,
    seed: int,
) -> FaithfulnessResult:
    attribution, randoms = values[0], values[1:]

    def metric_result(label: str, read: Callable[[StepValues], float]) -> MetricResult:
        own = [[read(step) for step in row] for row in attribution]
        estimate = bootstrap_estimate(own, bootstrap, confidence, seed)
        if not randoms:
            return MetricResult(label, own, estimate)
        random_values = [
            [_mean([read(run[s][t]) for run in randoms]) for t in range(len(row))] for s, row in enumerate(attribution)
        ]
        return MetricResult(
            label,
            own,
            estimate,
            random_values,
            bootstrap_estimate(random_values, bootstrap, confidence, seed),
            bootstrap_estimate(paired_differences(own, random_values), bootstrap, confidence, seed),
        )

    metrics = {metric: metric_result(metric, lambda v, m=metric: v.metrics.get(m, math.nan)) for metric in chosen}
    per_k = {
        metric: {
            k_label(k): metric_result(
                f"{metric}@{k_label(k)}", lambda v, m=metric, k=k: v.per_k.get(m, {}).get(k_label(k), math.nan)
            )
            for k in ks
        }
        for metric in chosen
        if metric in REMOVAL_METRICS
    }
    curves = {}
    for metric in chosen:
        if metric not in CURVE_METRICS:
            continue
        fractions = settings.curve_fractions

        def mean_curve(runs: list[list[list[StepValues]]], metric: str = metric) -> list[float]:
            rows = [v.curves[metric] for run in runs for row in run for v in row if metric in v.curves]
            return [_mean([row[i] for row in rows]) for i in range(len(settings.curve_fractions))]

        curves[metric] = CurveResult(fractions, mean_curve([attribution]), mean_curve(randoms) if randoms else None)
    tokens = [[{"step": s.step, "position": s.position, "token": s.token} for s in row] for row in per_sequence]
    return FaithfulnessResult(name, metrics, per_k, curves, tokens)

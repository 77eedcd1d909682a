"""Per-step faithfulness and plausibility metrics, for one ranking of one generation step.

Notation: step ``t`` generates token ``y`` with probability ``p = p(y | x)`` given its input ``x`` (decoder-only:
the prefix; encoder-decoder: the source, with the decoder prefix unchanged). The step's rankable tokens (every
non-special input token, ``n`` of them) are ranked by importance; ``r_k`` are the ``k`` most important ones.

* Comprehensiveness (DeYoung et al., 2020, "ERASER: A Benchmark to Evaluate Rationalized NLP Models", ACL):
  ``comp_k = p - p(y | x without r_k)``; high when removing the top tokens hurts the prediction.
* Sufficiency (same paper): ``suff_k = p - p(y | r_k and the special tokens, in their order)``; low when the top
  tokens alone support the prediction.
* AOPC (area over the perturbation curve; Samek et al., 2017, "Evaluating the visualization of what a deep neural
  network has learned", IEEE TNNLS; the ERASER aggregation): the mean of ``comp_k`` (``suff_k``) over the ``ks``.
* Soft-NC / Soft-NS (Zhao & Aletras, 2023, "Incorporating Attribution Importance for Improving Faithfulness
  Metrics", ACL): every embedding element of input token ``i`` is kept with probability ``a_i`` (soft
  sufficiency) or ``1 - a_i`` (soft comprehensiveness) and zeroed otherwise, where ``a_i`` is the importance
  min-max scaled to [0, 1] over the step's rankable tokens; special tokens are kept. With ``p_s``, ``p_c`` the
  perturbed probabilities and ``p_0`` the probability with every rankable embedding zeroed (the empty rationale):
  ``S(p') = 1 - max(0, p - p')``, ``Soft-NS = clip((S(p_s) - S(p_0)) / (1 - S(p_0)), 0, 1)``,
  ``Soft-NC = clip(max(0, p - p_c) / (1 - S(p_0)), 0, 1)`` (the normalisation of Carton et al., 2020, the paper
  adopts). Both are averaged over ``soft_samples`` seeded masks; undefined (NaN) when ``p_0 >= p``.
* Deletion / insertion curves (Petsiuk et al., 2018, "RISE", BMVC; the MoRF curve of Samek et al., 2017): the
  probability ``p(y | x without r_{k(f)})`` (deletion) and ``p(y | r_{k(f)} and the special tokens)`` (insertion)
  at fractions ``f`` of the rankable tokens from 0 to 1, ``k(f) = round(f n)``; the metric is the area under the
  curve (trapezoidal rule over ``f``): low for deletion, high for insertion.
* Plausibility against a known rationale ``R`` (DeYoung et al., 2020; as in ferret, Attanasio et al., 2023):
  pointing accuracy ``[r_1 in R]``; token F1 of the top ``|R|`` tokens; AUPRC, the average precision of the
  importance scores as a detector of ``R``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .ranking import Perturber, Ranking, curve_count, k_label, resolve_k
from .scorer import EmbeddingQuery, Query, stable_seed
from .steps import AttributedStep

COMPREHENSIVENESS = "comprehensiveness"
SUFFICIENCY = "sufficiency"
SOFT_COMPREHENSIVENESS = "soft_comprehensiveness"
SOFT_SUFFICIENCY = "soft_sufficiency"
DELETION = "deletion"
INSERTION = "insertion"
POINTING_ACCURACY = "pointing_accuracy"
TOKEN_F1 = "token_f1"
AUPRC = "auprc"

REMOVAL_METRICS = (COMPREHENSIVENESS, SUFFICIENCY)
SOFT_METRICS = (SOFT_COMPREHENSIVENESS, SOFT_SUFFICIENCY)
CURVE_METRICS = (DELETION, INSERTION)
PLAUSIBILITY_METRICS = (POINTING_ACCURACY, TOKEN_F1, AUPRC)
METRICS = REMOVAL_METRICS + SOFT_METRICS + CURVE_METRICS + PLAUSIBILITY_METRICS

#: Whether a higher value means a more faithful (or plausible) attribution.
HIGHER_IS_BETTER = {
    COMPREHENSIVENESS: True,
    SUFFICIENCY: False,
    SOFT_COMPREHENSIVENESS: True,
    SOFT_SUFFICIENCY: True,
    DELETION: False,
    INSERTION: True,
    POINTING_ACCURACY: True,
    TOKEN_F1: True,
    AUPRC: True,
}

#: Short column labels.
LABELS = {
    COMPREHENSIVENESS: "comp AOPC",
    SUFFICIENCY: "suff AOPC",
    SOFT_COMPREHENSIVENESS: "Soft-NC",
    SOFT_SUFFICIENCY: "Soft-NS",
    DELETION: "deletion AUC",
    INSERTION: "insertion AUC",
    POINTING_ACCURACY: "pointing",
    TOKEN_F1: "token F1",
    AUPRC: "AUPRC",
}

NAN = float("nan")
EPSILON = 1e-12


@dataclass(frozen=True)
class StepSettings:
    """What to compute for every step (shared by the attribution's ranking and the random ones)."""

    metrics: frozenset[str]
    ks: tuple[int | float, ...]
    perturber: Perturber
    soft_samples: int
    curve_fractions: tuple[float, ...]
    seed: int


@dataclass
class StepValues:
    """Metric values of one step under one ranking (NaN where undefined)."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_k: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)


def evaluate_step(
    step: AttributedStep, ranking: Ranking, settings: StepSettings, probability: Callable[[Query], float]
) -> StepValues:
    """Every requested metric of ``step`` for ``ranking``; ``probability`` answers the model queries.

    The queries asked do not depend on the answers, so a first pass with a recording ``probability`` can collect
    them all for one batched computation, and a second pass reads the answers.
    """
    values = StepValues()
    if not step.candidates:  # nothing to rank (e.g. a prompt of special tokens only)
        values.metrics = dict.fromkeys(settings.metrics, NAN)
        return values
    perturber = settings.perturber
    original = probability(perturber.without(step, frozenset()))
    available = len(step.candidates)
    for metric in REMOVAL_METRICS:
        if metric not in settings.metrics:
            continue
        per_k = {}
        for k in settings.ks:
            top = ranking.top(resolve_k(k, available))
            query = perturber.without(step, top) if metric == COMPREHENSIVENESS else perturber.only(step, top)
            per_k[k_label(k)] = original - probability(query)
        values.per_k[metric] = per_k
        values.metrics[metric] = sum(per_k.values()) / len(per_k)
    if settings.metrics & set(SOFT_METRICS):
        values.metrics.update(_soft_values(step, ranking, settings, probability, original))
    for metric in CURVE_METRICS:
        if metric not in settings.metrics:
            continue
        curve = []
        for fraction in settings.curve_fractions:
            top = ranking.top(curve_count(fraction, available))
            query = perturber.without(step, top) if metric == DELETION else perturber.only(step, top)
            curve.append(probability(query))
        values.curves[metric] = curve
        values.metrics[metric] = trapezoid_area(settings.curve_fractions, curve)
    if settings.metrics & set(PLAUSIBILITY_METRICS):
        plausibility = plausibility_values(ranking, step.rationale)
        values.metrics.update({name: plausibility[name] for name in PLAUSIBILITY_METRICS if name in settings.metrics})
    return values


def _soft_values(
    step: AttributedStep,
    ranking: Ranking,
    settings: StepSettings,
    probability: Callable[[Query], float],
    original: float,
) -> dict[str, float]:
    importance = ranking.normalised()
    keep_none = tuple(0.0 if i in importance else 1.0 for i in range(len(step.input_ids)))
    empty_drop = max(0.0, original - probability(_embedding_query(step, keep_none, 0)))  # 1 - S(p_0)
    result = {}
    for metric in SOFT_METRICS:
        if metric not in settings.metrics:
            continue
        keep = tuple(
            (importance[i] if metric == SOFT_SUFFICIENCY else 1.0 - importance[i]) if i in importance else 1.0
            for i in range(len(step.input_ids))
        )
        drops = []
        for sample in range(settings.soft_samples):
            # Common random numbers: the attribution and the random baselines share the noise of a step/sample.
            noise_seed = stable_seed("soft", metric, settings.seed, sample, step.sequence, step.step)
            drops.append(max(0.0, original - probability(_embedding_query(step, keep, noise_seed))))
        if empty_drop <= EPSILON:  # erasing everything does not lower p: nothing to normalise by
            result[metric] = NAN
            continue
        if metric == SOFT_SUFFICIENCY:  # (S(p_s) - S(p_0)) / (1 - S(p_0)) = (d_0 - d_s) / d_0
            samples = [(empty_drop - drop) / empty_drop for drop in drops]
        else:  # Soft-C / (1 - S(p_0)) = d_c / d_0
            samples = [drop / empty_drop for drop in drops]
        result[metric] = sum(min(1.0, max(0.0, value)) for value in samples) / len(samples)
    return result


def _embedding_query(step: AttributedStep, keep: tuple[float, ...], noise_seed: int) -> EmbeddingQuery:
    if step.decoder_ids is not None:
        return EmbeddingQuery(step.decoder_ids, step.target_id, keep, noise_seed, encoder_ids=step.input_ids)
    return EmbeddingQuery(step.input_ids, step.target_id, keep, noise_seed)


def trapezoid_area(xs: tuple[float, ...], ys: list[float]) -> float:
    """Area under the piecewise-linear curve through ``(xs[i], ys[i])``."""
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))


def plausibility_values(ranking: Ranking, rationale: tuple[int, ...] | None) -> dict[str, float]:
    """Pointing accuracy, top-``|R|`` token F1 and AUPRC of a ranking against rationale ``R`` (NaN without one)."""
    if not rationale:
        return dict.fromkeys(PLAUSIBILITY_METRICS, NAN)
    truth = set(rationale)
    top = set(ranking.order[: len(truth)])
    hits = len(top & truth)
    # With k = |R| precision equals recall, and so does F1.
    return {
        POINTING_ACCURACY: float(ranking.order[0] in truth),
        TOKEN_F1: hits / len(truth),
        AUPRC: average_precision(ranking.magnitudes, truth),
    }


def average_precision(scores: dict[int, float], positives: set[int]) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest first.

    Tied scores enter together (one threshold), as in scikit-learn's ``average_precision_score``.
    """
    if not positives:
        return NAN
    ordered = sorted(scores.items(), key=lambda item: -item[1])
    area, true_positives, seen, index = 0.0, 0, 0, 0
    previous_recall = 0.0
    while index < len(ordered):
        threshold = ordered[index][1]
        while index < len(ordered) and ordered[index][1] == threshold:
            true_positives += ordered[index][0] in positives
            seen += 1
            index += 1
        recall = true_positives / len(positives)
        area += (recall - previous_recall) * true_positives / seen
        previous_recall = recall
    return area

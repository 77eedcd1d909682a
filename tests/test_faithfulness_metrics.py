"""Faithfulness metrics on hand-computable cases: a mocked scorer whose probabilities follow a known formula.

The mocked model gives the generated token the probability ``p = 0.1 + 0.8 * sum_i w_i keep_i`` over the tokens
``i`` present in the input (``keep_i = 1`` for a token query, the keep probability for an embedding query, i.e. the
expected value of the soft perturbation). With prompt weights ``w = (0.5, 0.3, 0.2, 0)`` and an attribution equal
to the weights, every metric below is worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from inseq_ext.evaluation import evaluate_faithfulness
from inseq_ext.evaluation.faithfulness import EmbeddingQuery, ProbabilityScorer
from inseq_ext.evaluation.faithfulness.metrics import average_precision
from inseq_ext.evaluation.faithfulness.ranking import check_ks, resolve_k
from inseq_ext.evaluation.faithfulness.statistics import bootstrap_estimate

PROMPT = "The first"  # 4 distinct tokens with the tiny tokenizer
FORCED = "The first president"
WEIGHTS = (0.5, 0.3, 0.2, 0.0)


class BagOfTokensScorer(ProbabilityScorer):
    """``p = 0.1 + 0.8 * sum(w[token] * keep)``; records every query it answers."""

    def __init__(self, model, weights: dict[int, float]) -> None:
        super().__init__(model)
        self.weights = weights
        self.queries = []

    def prefetch(self, queries) -> None:
        for query in queries:
            if query in self.cache:
                continue
            self.queries.append(query)
            ids = query.encoder_ids if query.encoder_ids is not None else query.decoder_ids
            keep = query.keep if isinstance(query, EmbeddingQuery) else (1.0,) * len(ids)
            mass = sum(self.weights.get(token, 0.0) * k for token, k in zip(ids, keep, strict=True))
            self.cache[query] = 0.1 + 0.8 * mass


@pytest.fixture(scope="module")
def weighted_output(attribution_models):
    """Tiny GPT-2 output whose first-step scores are the weights; the scorer that follows them."""
    model = attribution_models("gpt2")
    out = model.attribute(PROMPT, FORCED, method="saliency", show_progress=False).aggregate()
    sequence = out.sequence_attributions[0]
    ids = [token.id for token in sequence.target]
    assert len(set(ids[:4])) == 4 and sequence.attr_pos_start == 4
    scores = sequence.target_attributions.clone()
    scores[:4, 0] = torch.tensor(WEIGHTS)
    sequence.target_attributions = scores
    return model, out, dict(zip(ids[:4], WEIGHTS, strict=True))


def evaluate(model, out, weights, **kwargs):
    scorer = BagOfTokensScorer(model.model, weights)
    kwargs.setdefault("steps", [[0]])
    kwargs.setdefault("random_seeds", 0)
    kwargs.setdefault("bootstrap", 0)
    return evaluate_faithfulness(model, out, scorer=scorer, **kwargs), scorer


def test_comprehensiveness_and_sufficiency_by_hand(weighted_output):
    model, out, weights = weighted_output
    result, _ = evaluate(model, out, weights, metrics=["comprehensiveness", "sufficiency"], ks=[1, 2])
    # p = 0.9. Without the top token (w 0.5): 0.5, comp_1 = 0.4; without the top two (0.8): 0.26, comp_2 = 0.64.
    comp = result.per_k["comprehensiveness"]
    assert comp["1"].values[0][0] == pytest.approx(0.4)
    assert comp["2"].values[0][0] == pytest.approx(0.64)
    assert result["comprehensiveness"].mean == pytest.approx((0.4 + 0.64) / 2)  # AOPC
    # Only the top token: 0.5, suff_1 = 0.4; only the top two: 0.74, suff_2 = 0.16.
    suff = result.per_k["sufficiency"]
    assert suff["1"].values[0][0] == pytest.approx(0.4)
    assert suff["2"].values[0][0] == pytest.approx(0.16)
    assert result["sufficiency"].mean == pytest.approx(0.28)


def test_fractions_round_up_to_at_least_one_token(weighted_output):
    model, out, weights = weighted_output
    by_count, _ = evaluate(model, out, weights, metrics=["comprehensiveness"], ks=[1, 2])
    by_fraction, _ = evaluate(model, out, weights, metrics=["comprehensiveness"], ks=[0.01, 0.5])
    assert by_fraction["comprehensiveness"].mean == pytest.approx(by_count["comprehensiveness"].mean)
    assert list(by_fraction.per_k["comprehensiveness"]) == ["1%", "50%"]
    assert [resolve_k(k, 4) for k in (0.01, 0.25, 0.26, 0.5, 1.0, 7)] == [1, 1, 2, 2, 4, 4]
    assert resolve_k(0.2, 5) == 1  # 0.2 * 5 is 1.0000000000000002 in floating point


def test_replacement_keeps_length_and_uses_the_baseline_token(weighted_output):
    model, out, weights = weighted_output
    unk = model.tokenizer.unk_token_id
    result, scorer = evaluate(model, out, weights, metrics=["comprehensiveness"], ks=[1], removal="replace")
    assert result["comprehensiveness"].mean == pytest.approx(0.4)
    prompt_ids = tuple(out.sequence_attributions[0].target[i].id for i in range(4))
    replaced = [query.decoder_ids for query in scorer.queries if query.decoder_ids != prompt_ids]
    assert replaced == [(unk,) + prompt_ids[1:]]
    result, scorer = evaluate(
        model, out, weights, metrics=["comprehensiveness"], ks=[1], removal="replace", baseline_token=prompt_ids[3]
    )
    replaced = [query.decoder_ids for query in scorer.queries if query.decoder_ids != prompt_ids]
    assert replaced == [(prompt_ids[3],) + prompt_ids[1:]]


def test_soft_metrics_by_hand(weighted_output):
    model, out, weights = weighted_output
    result, _ = evaluate(model, out, weights, metrics=["soft_comprehensiveness", "soft_sufficiency"], soft_samples=2)
    # Importances min-max scaled: a = (1, 0.6, 0.4, 0). Erasing every embedding: p_0 = 0.1, d_0 = 0.8.
    # Soft sufficiency keeps a: mass 0.5 + 0.18 + 0.08 = 0.76, p_s = 0.708, d_s = 0.192, Soft-NS = (0.8 - 0.192)/0.8.
    assert result["soft_sufficiency"].mean == pytest.approx(0.76)
    # Soft comprehensiveness keeps 1 - a = (0, 0.4, 0.6, 1): mass 0.24, p_c = 0.292, d_c = 0.608, Soft-NC = 0.76.
    assert result["soft_comprehensiveness"].mean == pytest.approx(0.76)


def test_curves_by_hand(weighted_output):
    model, out, weights = weighted_output
    result, _ = evaluate(model, out, weights, metrics=["deletion", "insertion"], curve_points=5)
    # Fractions 0, .25, .5, .75, 1 remove 0..4 tokens; an input emptied by deletion becomes <s> (weight 0).
    assert result.curves["deletion"].attribution == pytest.approx([0.9, 0.5, 0.26, 0.1, 0.1])
    assert result["deletion"].mean == pytest.approx(0.25 * (0.7 + 0.38 + 0.18 + 0.1))
    assert result.curves["insertion"].attribution == pytest.approx([0.1, 0.5, 0.74, 0.9, 0.9])
    assert result["insertion"].mean == pytest.approx(0.25 * (0.3 + 0.62 + 0.82 + 0.9))


def test_plausibility_by_hand(weighted_output):
    model, out, weights = weighted_output
    on_top, _ = evaluate(model, out, weights, metrics=["pointing_accuracy", "token_f1", "auprc"], rationales=[[0]])
    assert [on_top[m].mean for m in ("pointing_accuracy", "token_f1", "auprc")] == [1.0, 1.0, 1.0]
    third, _ = evaluate(model, out, weights, metrics=["pointing_accuracy", "token_f1", "auprc"], rationales=[[2]])
    # Ranked third: not pointed at, not in the top 1, precision 1/3 when it is recalled.
    assert [third[m].mean for m in ("pointing_accuracy", "token_f1", "auprc")] == pytest.approx([0.0, 0.0, 1 / 3])
    two, _ = evaluate(model, out, weights, metrics=["token_f1", "auprc"], rationales=[{0: [0, 2]}])
    # Top 2 = {0, 1}: one of two rationale tokens; AP = 0.5 * 1 (at rank 1) + 0.5 * 2/3 (at rank 3).
    assert two["token_f1"].mean == pytest.approx(0.5)
    assert two["auprc"].mean == pytest.approx(0.5 + 1 / 3)


def test_average_precision_with_ties():
    # Positions 0 and 1 tie at the top: one threshold, precision 1/2 at recall 1/2; then position 2 at 2/3.
    assert average_precision({0: 1.0, 1: 1.0, 2: 0.5, 3: 0.0}, {0, 2}) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert math.isnan(average_precision({0: 1.0}, set()))


def test_random_baseline_matches_its_expectation(weighted_output):
    model, out, weights = weighted_output
    result, _ = evaluate(model, out, weights, metrics=["comprehensiveness", "pointing_accuracy"], ks=[1, 2],
                         rationales=[[0]], random_seeds=300)  # fmt: skip
    # A random top-1 removes weight 0.25 on average, a random top-2 0.5: comp = 0.8 * (0.25 + 0.5) / 2 = 0.3.
    assert result["comprehensiveness"].random.mean == pytest.approx(0.3, abs=0.02)
    assert result["pointing_accuracy"].random.mean == pytest.approx(0.25, abs=0.05)
    assert result["comprehensiveness"].difference.mean == pytest.approx(0.52 - result["comprehensiveness"].random.mean)


def test_special_tokens_are_never_removed_nor_ranked(attribution_models):
    model = attribution_models("llama")  # its tokenizer prepends <s>
    out = model.attribute(PROMPT, FORCED, method="saliency", show_progress=False)
    sequence = out.sequence_attributions[0]
    bos = model.tokenizer.bos_token_id
    assert sequence.target[0].id == bos
    weights = {token.id: 0.1 for token in sequence.target}
    weights[bos] = 0.0
    result, scorer = evaluate(model, out, weights, metrics="all", steps=None, curve_points=3, ks=[1.0])
    assert scorer.queries and all(query.decoder_ids[0] == bos for query in scorer.queries)
    token_queries = [query for query in scorer.queries if not isinstance(query, EmbeddingQuery)]
    assert (bos,) in {query.decoder_ids for query in token_queries}  # sufficiency with nothing kept: <s> stays
    for query in scorer.queries:
        if isinstance(query, EmbeddingQuery):
            assert query.keep[0] == 1.0


def test_bootstrap_interval_of_a_mean():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, 400).astype(float).tolist()
    estimate = bootstrap_estimate([values], resamples=2000, seed=0)
    half_width = 1.96 * np.std(values) / math.sqrt(len(values))
    assert estimate.mean == pytest.approx(np.mean(values))
    assert estimate.low == pytest.approx(estimate.mean - half_width, abs=0.01)
    assert estimate.high == pytest.approx(estimate.mean + half_width, abs=0.01)
    constant = bootstrap_estimate([[0.3] * 5, [0.3, float("nan")]], resamples=100)
    assert (constant.mean, constant.low, constant.high, constant.count) == pytest.approx((0.3, 0.3, 0.3, 6))


def test_bootstrap_resamples_prompts_as_well_as_tokens():
    # Two prompts, constant within each: tokens alone look certain, but which prompts were drawn is not.
    estimate = bootstrap_estimate([[0.0] * 20, [1.0] * 20], resamples=2000, seed=0)
    assert (estimate.low, estimate.high) == (0.0, 1.0)


def test_result_summary_and_dict(weighted_output):
    model, out, weights = weighted_output
    result, _ = evaluate(model, out, weights, metrics="all", rationales=[{0: [0]}], steps=None, random_seeds=2,
                         bootstrap=50, curve_points=3)  # fmt: skip
    text = result.summary()
    for label in ("comp AOPC", "suff AOPC", "Soft-NC", "Soft-NS", "deletion AUC", "pointing", "random baseline"):
        assert label in text
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["steps"] == 4 and len(payload["metrics"]["comprehensiveness"]["values"][0]) == 4
    # The rationale was given for step 0 only: plausibility is undefined at the other steps.
    assert payload["metrics"]["pointing_accuracy"]["values"][0] == [1.0, None, None, None]
    summary = result.explorer_summary()
    assert summary["method"] == "saliency" and {m["name"] for m in summary["metrics"]} == set(result.metrics)
    menu = result.explorer_metrics()
    assert menu["comp AOPC"] == round(result["comprehensiveness"].mean, 3)
    assert result.explorer_metrics(per_generation=True)["pointing"] == [1.0]  # one generation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ["comprehensivness"]}, "choose from: comprehensiveness"),
        ({"metrics": ["auprc"]}, "rationales"),
        ({"ks": [0]}, "at least 1"),
        ({"ks": [1.5]}, "(0, 1]"),
        ({"ks": [True]}, "ints"),
        ({"ks": []}, "non-empty"),
        ({"removal": "mask"}, "delete, replace"),
        ({"baseline_token": "<unk>"}, "removal='replace'"),
        ({"removal": "replace", "baseline_token": "no such token"}, "single token"),
        ({"soft_samples": 0}, "soft_samples"),
        ({"confidence": 95}, "confidence"),
        ({"rationales": [[99]]}, "outside"),
        ({"steps": [[7]]}, "not attributed"),
    ],
)
def test_bad_arguments_name_the_problem(weighted_output, kwargs, message):
    model, out, weights = weighted_output
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        evaluate(model, out, weights, **kwargs)


def test_check_ks_accepts_counts_and_fractions():
    assert check_ks([1, 0.5, np.int64(3)]) == (1, 0.5, 3)

"""Parsing, aligning and comparing an LLM's (word, score) explanation; rank statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from inseq_ext.evaluation.explanations import (
    align_explanation,
    attribution_word_scores,
    average_ranks,
    compare_with_attribution,
    kendall_tau_b,
    normalize_word,
    parse_explanation,
    spearman_rho,
    top_k_positions,
    word_spans,
)

# --- parse_explanation ---------------------------------------------------------------------------------------------


def test_parse_plain_list():
    assert parse_explanation("[('great', 0.9), ('boring', -0.7)]") == [("great", 0.9), ("boring", -0.7)]


def test_parse_with_stray_text_and_line_breaks():
    reply = (
        'Sure! Here is the list:\n[\n  ("film", 0.2),\n  ("compelling", 0.95),\n]\n'
        "Hope this helps (let me know if you need more)."
    )
    assert parse_explanation(reply) == [("film", 0.2), ("compelling", 0.95)]


@pytest.mark.parametrize(
    "text",
    [
        "[('drama', 1), ('the', 0)]",
        '[("drama", 1), ("the", 0)]',
        "[(\u2018drama\u2019, 1), (\u2018the\u2019, 0)]",
        "[(\u201cdrama\u201d, 1), (\u201cthe\u201d, 0)]",
        "[(drama, 1), (the, 0)]",
        "[ ( 'drama' ,1 ) ,( 'the',0, ) , ]",
        "[['drama', 1], ['the', 0]]",
        "[(`drama`, '1'), (`the`, \"0\")]",
    ],
)
def test_parse_tolerates_quotes_spacing_and_trailing_commas(text):
    assert parse_explanation(text) == [("drama", 1.0), ("the", 0.0)]


def test_parse_number_forms():
    text = "[('a', 3), ('b', -2.5), ('c', +.25), ('d', 1e-3), ('e', \u22120.5), ('f', 2.)]"
    assert parse_explanation(text) == [("a", 3.0), ("b", -2.5), ("c", 0.25), ("d", 0.001), ("e", -0.5), ("f", 2.0)]


def test_parse_keeps_apostrophes_and_commas_inside_words():
    text = """[("don't", -0.4), ('it's', 0.1), ("well, yes", 0.3)]"""
    assert parse_explanation(text) == [("don't", -0.4), ("it's", 0.1), ("well, yes", 0.3)]


def test_parse_skips_empty_words_and_keeps_repeats():
    assert parse_explanation("[('', 0.5), ('the', 0.1), ('the', 0.2)]") == [("the", 0.1), ("the", 0.2)]


@pytest.mark.parametrize("text", ["", "I cannot answer that.", "[('great')]", "great: 0.9, boring: -0.7"])
def test_parse_nothing_raises_with_start_of_text(text):
    with pytest.raises(ValueError, match="No \\(word, score\\) pairs found") as error:
        parse_explanation(text)
    assert repr(text.strip()[:80]) in str(error.value)


def test_parse_quotes_only_the_start_of_long_text():
    text = "x" * 500
    with pytest.raises(ValueError) as error:
        parse_explanation(text)
    assert "x" * 80 in str(error.value) and "x" * 81 not in str(error.value)


def test_parse_rejects_non_string():
    with pytest.raises(ValueError, match="string"):
        parse_explanation([("a", 1.0)])


# --- align_explanation ---------------------------------------------------------------------------------------------


def test_normalize_word():
    assert normalize_word("\u0120Terrible.") == normalize_word("terrible") == "terrible"
    assert normalize_word("\u2581Don't") == "dont"
    assert normalize_word("...") == ""


def test_align_is_case_and_punctuation_insensitive_and_reports_unmatched():
    words = ["The", "movie", "was", "boring.", "Sentiment:"]
    alignment = align_explanation([("BORING", -0.8), ("movie", 0.1), ("plot", 0.3), ("sentiment", 0.0)], words)
    assert [pair.position for pair in alignment.pairs] == [3, 1, None, 4]
    assert alignment.unmatched == ["plot"]
    assert alignment.scores_by_position == {3: -0.8, 1: 0.1, 4: 0.0}
    assert alignment.unmentioned_positions == [0, 2]


def test_align_matches_repeated_words_in_order():
    words = ["the", "acting", "and", "the", "plot", "the"]
    alignment = align_explanation([("the", 0.1), ("The", 0.2), ("the", 0.3), ("the", 0.4)], words)
    assert [pair.position for pair in alignment.pairs] == [0, 3, 5, None]
    assert alignment.unmatched == ["the"]


def test_align_strips_token_space_markers():
    alignment = align_explanation([("film", 1.0)], ["\u0120This", "\u0120film"])
    assert alignment.matched[0].position == 1


# --- rank statistics -----------------------------------------------------------------------------------------------


def test_average_ranks_share_ties():
    assert average_ranks([10, 30, 20, 30]) == [1.0, 3.5, 2.0, 3.5]


def test_rank_correlations_without_ties():
    # d = [0, 1, -1, 0]: rho = 1 - 6 * 2 / (4 * 15) = 0.8; one discordant pair of six: tau = (5 - 1) / 6.
    x, y = [1, 2, 3, 4], [1, 3, 2, 4]
    assert spearman_rho(x, y) == pytest.approx(0.8)
    assert kendall_tau_b(x, y) == pytest.approx(2 / 3)


def test_rank_correlations_with_ties_in_one_side():
    # ranks y = [1, 2, 3.5, 5, 3.5]; centred ranks give covariance 8, spreads 10 and 9.5: rho = 8 / sqrt(95).
    # Pairs: 8 concordant, 1 discordant (8 vs 7), 1 tied in y: tau-b = 7 / sqrt(10 * 9).
    x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    assert spearman_rho(x, y) == pytest.approx(8 / math.sqrt(95))
    assert kendall_tau_b(x, y) == pytest.approx(7 / math.sqrt(90))


def test_rank_correlations_with_ties_in_both_sides():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3.5, 3.5]: covariance 3.75, spreads 4.5 each: rho = 3.75 / 4.5.
    # Pairs: 4 concordant, 0 discordant, 1 tied in x, 1 tied in y: tau-b = 4 / sqrt(5 * 5).
    x, y = [1, 2, 2, 3], [1, 2, 3, 3]
    assert spearman_rho(x, y) == pytest.approx(3.75 / 4.5)
    assert kendall_tau_b(x, y) == pytest.approx(0.8)


def test_rank_correlations_are_invariant_to_monotone_maps_and_flip_with_order():
    x = [0.3, 0.1, 0.9, 0.5, 0.2]
    y = [value**3 + 7 for value in x]
    assert spearman_rho(x, y) == pytest.approx(1.0)
    assert kendall_tau_b(x, y) == pytest.approx(1.0)
    assert spearman_rho(x, [-value for value in x]) == pytest.approx(-1.0)
    assert kendall_tau_b(x, [-value for value in x]) == pytest.approx(-1.0)


def test_rank_correlations_of_a_constant_are_nan_and_bad_lengths_raise():
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau_b([1, 2, 3], [4, 4, 4]))
    with pytest.raises(ValueError, match="same length"):
        spearman_rho([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least two"):
        kendall_tau_b([1], [1])


def test_top_k_by_magnitude_ties_in_position_order():
    assert top_k_positions([0.1, -0.9, 0.5, 0.9], 3) == [1, 3, 2]


# --- compare_with_attribution --------------------------------------------------------------------------------------

WORDS = ["The", "movie", "was", "boring", "and", "the", "acting", "terrible."]


def test_compare_identical_ranking_agrees_fully():
    attribution = list(zip(WORDS, [0.05, 0.2, 0.01, 0.9, 0.02, 0.03, 0.3, 0.8], strict=True))
    explanation = "Here you go: [('boring', 0.95), ('terrible', 0.85), ('acting', 0.4), ('movie', 0.3)] Hope it helps"
    result = compare_with_attribution(explanation, attribution, k=2)
    assert result.spearman == pytest.approx(1.0)
    assert result.kendall_tau_b == pytest.approx(1.0)
    assert result.top_k_overlap == 1.0 and result.k == 2
    assert result.sign_agreement is None  # neither side has negative scores
    assert [word for word, _, _ in result.compared] == ["movie", "boring", "acting", "terrible."]
    assert result.unmentioned_words == ("The", "was", "and", "the")
    assert result.unmatched_explanation_words == ()


def test_compare_hand_computed_with_signed_scores():
    words = ["a", "b", "c", "d"]
    explanation = [("a", 0.5), ("b", -0.2), ("c", 0.3), ("d", 0.0), ("zebra", 1.0)]
    attribution = list(zip(words, [0.1, -0.4, -0.2, 0.5], strict=True))
    result = compare_with_attribution(explanation, attribution, k=2)
    # explanation ranks [4, 1, 3, 2], attribution ranks [3, 1, 2, 4]: d = [1, 0, 1, -2], rho = 1 - 6 * 6 / 60.
    assert result.spearman == pytest.approx(0.4)
    # pairs (a,b) C, (a,c) C, (a,d) D, (b,c) C, (b,d) C, (c,d) D: tau = (4 - 2) / 6.
    assert result.kendall_tau_b == pytest.approx(1 / 3)
    # top-2 magnitudes: explanation {a, c}, attribution {d, b}: no overlap.
    assert result.top_k_overlap == 0.0
    # both signed; non-zero on both sides: a (+,+), b (-,-), c (+,-): 2 of 3 agree.
    assert result.sign_agreement == pytest.approx(2 / 3)
    assert result.unmatched_explanation_words == ("zebra",)
    assert "zebra" in result.summary() and "Spearman rho:   +0.400" in result.summary()


def test_compare_magnitude_mode_compares_absolute_values():
    words = ["great", "film", "awful"]
    attribution = list(zip(words, [0.7, 0.1, 0.6], strict=True))
    result = compare_with_attribution([("great", 0.9), ("film", 0.0), ("awful", -0.8)], attribution, magnitude=True)
    assert result.spearman == pytest.approx(1.0)
    assert result.sign_agreement is None
    assert [e for _, e, _ in result.compared] == [0.9, 0.0, 0.8]


def test_compare_unmentioned_zero_includes_the_other_words():
    words = ["the", "plot", "was", "dull", "."]
    attribution = list(zip(words, [0.1, 0.2, 0.05, 0.6, float("nan")], strict=True))
    dropped = compare_with_attribution([("dull", 1.0), ("plot", 0.5)], attribution, unmentioned="drop")
    zeroed = compare_with_attribution([("dull", 1.0), ("plot", 0.5)], attribution, unmentioned="zero")
    assert [w for w, _, _ in dropped.compared] == ["plot", "dull"]
    # "." has a NaN attribution and no letters: never compared.
    assert [(w, e) for w, e, _ in zeroed.compared] == [("the", 0.0), ("plot", 0.5), ("was", 0.0), ("dull", 1.0)]
    # explanation ranks [1.5, 3, 1.5, 4], attribution ranks [2, 3, 1, 4]: covariance 4.5, spreads 4.5 and 5.
    assert zeroed.spearman == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_compare_caps_k_at_the_number_of_words():
    attribution = [("good", 0.9), ("film", 0.1)]
    result = compare_with_attribution([("good", 2), ("film", 1)], attribution, k=10)
    assert result.k == 2 and result.top_k_overlap == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unmentioned": "ignore"}, "valid choices: drop, zero"),
        ({"k": 0}, "k must be a positive integer"),
        ({"k": 1.5}, "k must be a positive integer"),
    ],
)
def test_compare_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare_with_attribution([("a", 1), ("b", 2)], [("a", 1.0), ("b", 2.0)], **kwargs)


def test_compare_needs_two_aligned_words_and_names_the_unmatched():
    with pytest.raises(ValueError, match="at least two are needed.*'plot'"):
        compare_with_attribution("[('dull', 1), ('plot', 0.5)]", [("dull", 0.3), ("film", 0.2)])
    with pytest.raises(ValueError, match="No \\(word, score\\) pairs"):
        compare_with_attribution("no list here", [("dull", 0.3), ("film", 0.2)])


# --- word scores from an inseq attribution -------------------------------------------------------------------------

PROMPT = "The movie was boring, and the acting was terrible. Sentiment:"


def token_word_index(prompt: str, tokenizer, architecture: str) -> list[int | None]:
    """Word (whitespace-separated) of each prompt token from the tokenizer's character offsets; None: special."""
    encoded = tokenizer(prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
    indices = []
    for (start, end), special in zip(encoded["offset_mapping"], encoded["special_tokens_mask"], strict=True):
        if special:
            indices.append(None)
            continue
        # A token of spaces only (byte-level "Ġ") belongs to the word it precedes.
        first_letter = next((pos for pos in range(start, end) if not prompt[pos].isspace()), end)
        indices.append(prompt[:first_letter].count(" "))
    return indices


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "bart"])
def test_attribution_word_scores_merge_tokens_into_the_prompt_words(attribution_models, architecture):
    model = attribution_models(architecture)
    target = "George Washington." if model.is_encoder_decoder else PROMPT + " George Washington."
    out = model.attribute(PROMPT, target, method="custom_saliency", show_progress=False)
    sequence = out[0]
    raw = sequence.source_attributions if model.is_encoder_decoder else sequence.target_attributions
    raw_before = raw.clone()

    pairs = attribution_word_scores(out, model.tokenizer, generated_token=1)

    assert [word for word, _ in pairs] == PROMPT.split()  # special tokens (<s>, </s>) left out
    word_of_token = token_word_index(PROMPT, model.tokenizer, architecture)
    assert len(word_of_token) == (len(sequence.source) if model.is_encoder_decoder else sequence.attr_pos_start)
    for word_index, (_, score) in enumerate(pairs):
        token_scores = raw[[idx for idx, word in enumerate(word_of_token) if word == word_index], 1]
        assert score == pytest.approx(token_scores.max().item())  # saliency >= 0: absmax is the max
    torch.testing.assert_close(raw, raw_before, rtol=0, atol=0, equal_nan=True)  # not aggregated in place


def test_attribution_word_scores_feed_the_comparison(attribution_models):
    model = attribution_models("gpt2")
    out = model.attribute(PROMPT, PROMPT + " George", method="custom_saliency", show_progress=False)
    pairs = attribution_word_scores(out, model.tokenizer, generated_token=-1)
    # An explanation that ranks the words exactly as the attribution does, written as an LLM would.
    explanation = "Here: [" + ", ".join(f"('{word}', {10 * score:.6f})" for word, score in pairs) + "]"
    result = compare_with_attribution(explanation, pairs, k=3)
    assert len(result.compared) == len(PROMPT.split())
    assert result.spearman == pytest.approx(1.0) and result.kendall_tau_b == pytest.approx(1.0)
    assert result.top_k_overlap == 1.0


def test_attribution_word_scores_rejects_bad_input(attribution_models):
    model = attribution_models("gpt2")
    out = model.attribute(PROMPT, PROMPT + " George", method="custom_saliency", show_progress=False)
    steps = out[0].target_attributions.shape[1]
    with pytest.raises(ValueError, match=f"out of range: {steps} attributed"):
        attribution_word_scores(out, model.tokenizer, generated_token=steps)
    with pytest.raises(ValueError, match="out of range"):
        attribution_word_scores(out, model.tokenizer, generated_token=-steps - 1)
    layered = model.attribute(PROMPT, PROMPT + " George", method="block_gradient_x_input", show_progress=False)
    with pytest.raises(ValueError, match="aggregate"):
        attribution_word_scores(layered, model.tokenizer)


def test_word_spans():
    tokens = ["<s>", "The", "\u0120mo", "vie", "\u0120was", "\u0120t", "er", "rible", ".", "</s>"]
    assert word_spans(tokens, special_tokens=["<s>", "</s>"]) == [(2, 4), (5, 9)]
    # Without knowing <s> is special it joins the first word.
    assert word_spans(tokens[:2]) == [(0, 2)]
    assert word_spans(["\u2581Hel", "lo", "\u2581world"]) == [(0, 2)]

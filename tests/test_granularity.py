"""Granularity (words, sentences, ...), span targets and lookups on byte-level BPE and SentencePiece tokenizers."""

from __future__ import annotations

import copy

import inseq
import pytest
import torch

from inseq_ext.tiny_models import build_model, build_sentencepiece_tokenizer
from inseq_ext.views.granularity import (
    aggregate_granularity,
    group_tokens,
    sequence_groups,
    to_2d,
    token_texts,
)
from inseq_ext.views.lookup import score_of
from inseq_ext.views.span import span_attribution

PROMPT = "The first president of America is"
FORCED = "The first president of America is George Washington. He was born in America, in Paris."


@pytest.fixture(scope="module")
def sentencepiece_model():
    tokenizer = build_sentencepiece_tokenizer()
    model, tokenizer = build_model("llama", tokenizer=tokenizer)
    return inseq.load_model(model, "saliency", tokenizer=tokenizer)


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece"])
def forced_output(request, attribution_models, sentencepiece_model):
    """A forced decoder-only generation on each tokenizer kind, with its inseq model."""
    model = attribution_models("gpt2") if request.param == "byte_level" else sentencepiece_model
    return model, model.attribute(PROMPT, FORCED, show_progress=False)


def _expected_word_texts(text: str) -> list[str]:
    import re

    return re.findall(r"\w+|[^\w\s]+", text)


def test_token_texts_concatenate_to_the_decoded_text(forced_output):
    model, out = forced_output
    seq = out.sequence_attributions[0]
    ids = [tok.id for tok in seq.target]
    from_strings = token_texts(seq.target)
    from_tokenizer = token_texts(seq.target, model.tokenizer)
    assert from_strings == from_tokenizer
    decoded = model.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    specials = set(model.tokenizer.all_special_tokens)
    joined = "".join(text for text, tok in zip(from_strings, seq.target, strict=True) if tok.token not in specials)
    assert joined.strip() == decoded.strip() == FORCED


def test_partial_utf8_bytes_go_to_the_token_completing_the_character():
    # Byte-level pieces of "café": "Ã©" are the two UTF-8 bytes of "é".
    assert token_texts(["Ġcaf", "Ã", "©", "!"]) == [" caf", "", "\u00e9", "!"]
    # SentencePiece byte fallback; the space of the first word is dropped at the very start only (as Hugging Face
    # decodes "<s> café").
    assert token_texts(["\u2581caf", "<0xC3>", "<0xA9>"]) == ["caf", "", "\u00e9"]
    assert token_texts(["<s>", "\u2581caf", "<0xC3>", "<0xA9>"]) == ["<s>", " caf", "", "\u00e9"]


def test_word_groups_follow_the_text(forced_output):
    model, out = forced_output
    seq = out.sequence_attributions[0]
    _, target_groups, _, target_texts = sequence_groups(seq, "word", model.tokenizer)
    words = ["".join(target_texts[a:b]).strip() for a, b in target_groups]
    words = [w for w in words if w not in model.tokenizer.all_special_tokens]
    # A token may hold a word and its punctuation ("▁Washington."): then they form one unit.
    assert "".join(words) == "".join(_expected_word_texts(FORCED))
    assert {"America", "president", "George"} <= set(words)
    # No unit straddles the first generated token.
    assert any(a == seq.attr_pos_start for a, _ in target_groups)


@pytest.mark.parametrize(
    ("granularity", "expected"),
    [
        ("sentence", ["One two.", "Three four?", "Five.", "Six"]),
        ("line", ["One two. Three four?", "Five.", "Six"]),
        ("paragraph", ["One two. Three four?\nFive.", "Six"]),
    ],
)
def test_sentence_line_paragraph_units(granularity, expected):
    texts = ["One", " two", ".", " Three", " four", "?", "\n", "Five", ".", "\n", "\n", "Six"]
    groups = group_tokens(texts, granularity)
    assert [a for a, _ in groups] == sorted(a for a, _ in groups)
    assert groups[0][0] == 0 and groups[-1][1] == len(texts)
    assert ["".join(texts[a:b]).strip() for a, b in groups] == expected


def test_special_tokens_are_units_of_their_own():
    texts = ["<s>", "Hello", " wor", "ld", "</s>"]
    assert group_tokens(texts, "sentence", special=[True, False, False, False, True]) == [(0, 1), (1, 4), (4, 5)]


def _independent_block_sum(matrix: torch.Tensor, rows: tuple[int, int], columns: tuple[int, int]) -> float:
    block = matrix[rows[0] : rows[1], columns[0] : columns[1]]
    values = [v for v in block.flatten().tolist() if v == v]
    return sum(values) if values else float("nan")


@pytest.mark.parametrize("granularity", ["word", "sentence"])
def test_unit_score_is_the_sum_of_its_token_scores(forced_output, granularity):
    model, out = forced_output
    seq = out.sequence_attributions[0]
    token_level = seq.aggregate().target_attributions
    _, target_groups, _, _ = sequence_groups(seq, granularity, model.tokenizer)
    merged = aggregate_granularity(out, granularity, tokenizer=model.tokenizer).sequence_attributions[0]
    assert merged.target_attributions.shape[0] == len(target_groups)
    generated_groups = [
        (a - seq.attr_pos_start, b - seq.attr_pos_start) for a, b in target_groups if a >= seq.attr_pos_start
    ]
    assert merged.target_attributions.shape[1] == len(generated_groups)
    for row, rows in enumerate(target_groups):
        for column, columns in enumerate(generated_groups):
            expected = _independent_block_sum(token_level, rows, columns)
            actual = merged.target_attributions[row, column].item()
            assert (expected != expected and actual != actual) or actual == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_encoder_decoder_source_words(attribution_models):
    model = attribution_models("bart")
    out = model.attribute(PROMPT, " George Washington.", attribute_target=True, show_progress=False)
    seq = out.sequence_attributions[0]
    source_groups, _, source_texts, _ = sequence_groups(seq, "word")
    merged = aggregate_granularity(seq, "word")
    token_level = seq.aggregate().source_attributions
    assert [t.token for t in merged.source][:2] == ["The", "\u0120first"]
    for row, rows in enumerate(source_groups):
        expected = token_level[rows[0] : rows[1]].sum(0)
        assert torch.allclose(merged.source_attributions[row].sum(), expected.sum(), atol=1e-6)
    view_column = [t.token.strip("\u0120") for t in merged.target[merged.attr_pos_start : merged.attr_pos_end]]
    row = [t.token for t in merged.source].index("\u0120America")
    column = view_column.index("Washington")
    assert score_of(out, "America", "Washington", granularity="word") == pytest.approx(
        merged.source_attributions[row, column].item(), abs=1e-7
    )
    # Earlier generated words are attributed too when the target prefix is.
    assert score_of(out, "George", "Washington", granularity="word") == pytest.approx(
        _independent_block_sum(seq.aggregate().target_attributions, *_target_word_blocks(seq, "George", "Washington")),
        abs=1e-6,
    )


def _target_word_blocks(seq, row_word: str, column_word: str):
    _, groups, _, texts = sequence_groups(seq, "word")
    by_text: dict[str, tuple[int, int]] = {}
    for a, b in groups:
        by_text.setdefault("".join(texts[a:b]).strip(" ."), (a, b))  # first occurrence
    rows = by_text[row_word]
    a, b = by_text[column_word]
    return rows, (a - seq.attr_pos_start, b - seq.attr_pos_start)


def test_lookup_answers_the_course_question(forced_output):
    model, out = forced_output
    seq = out.sequence_attributions[0]
    token_level = seq.aggregate().target_attributions
    texts = token_texts(seq.target)
    _, groups, _, _ = sequence_groups(seq, "word")
    words: dict[str, tuple[int, int]] = {}
    for a, b in groups:
        words.setdefault("".join(texts[a:b]).strip(" ."), (a, b))  # first occurrence
    america, washington = words["America"], words["Washington"]
    expected = _independent_block_sum(
        token_level, america, (washington[0] - seq.attr_pos_start, washington[1] - seq.attr_pos_start)
    )
    assert score_of(out, "America", "Washington", granularity="word") == pytest.approx(expected, abs=1e-6)
    # Token level: the first token of the generated " George" when the token "America" exists (SentencePiece).
    if " America" in texts:
        row = texts.index(" America")
        column = texts.index(" George") - seq.attr_pos_start
        assert score_of(out, "America", "George") == pytest.approx(token_level[row, column].item(), abs=1e-7)


def test_lookup_errors_name_the_problem(forced_output):
    _, out = forced_output
    with pytest.raises(ValueError, match="'Berlin' is absent.*'America'"):
        score_of(out, "Berlin", "Washington", granularity="word")
    with pytest.raises(ValueError, match="target 'president' is absent.*'George'"):
        score_of(out, "The", "president", granularity="word")
    # "America" is in the prompt and in the generation before "Paris".
    with pytest.raises(ValueError, match="'America' is ambiguous: it occurs 2 times; pass source_occurrence=1..2"):
        score_of(out, "America", "Paris", granularity="word")
    first = score_of(out, "America", "Paris", source_occurrence=1, granularity="word")
    second = score_of(out, "America", "Paris", source_occurrence=2, granularity="word")
    assert first != second
    with pytest.raises(ValueError, match="granularity='word' matches whole words"):
        score_of(out, "America", "Lincoln")
    with pytest.raises(ValueError, match="source_occurrence=3 is out of range"):
        score_of(out, "America", "Paris", source_occurrence=3, granularity="word")
    with pytest.raises(ValueError, match="Unknown granularity 'words'; choose one of token, word"):
        score_of(out, "America", "Paris", granularity="words")


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "absmax"])
def test_span_combines_the_generated_columns(forced_output, reduce):
    model, out = forced_output
    seq = out.sequence_attributions[0]
    token_level = seq.aggregate().target_attributions
    span = span_attribution(out, 1, 4, reduce=reduce)
    assert span.span == (1, 4) and span.source_scores is None
    block = token_level[:, 1:4]
    for row in range(block.shape[0]):
        values = [v for v in block[row].tolist() if v == v]
        actual = span.target_scores[row].item()
        if not values:
            assert actual != actual
            continue
        expected = {
            "sum": sum(values),
            "mean": sum(values) / len(values),
            "max": max(values),
            "absmax": max(values, key=abs),
        }[reduce]
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert span.text == "".join(token_texts(seq.target)[seq.attr_pos_start + 1 : seq.attr_pos_start + 4])


def test_span_at_word_granularity_and_errors(forced_output):
    model, out = forced_output
    words = span_attribution(out, 0, 2, granularity="word", tokenizer=model.tokenizer)
    assert words.text.strip() == "George Washington." or words.text.strip() == "George Washington"
    total = sum(
        score_of(out, "America", target, granularity="word", tokenizer=model.tokenizer)
        for target in ("George", "Washington")
    )
    america = [text.strip() for text in words.target].index("America")
    assert words.target_scores[america].item() == pytest.approx(total, rel=1e-5)
    with pytest.raises(ValueError, match="Unknown reduce 'median'; choose one of sum, mean, max, absmax"):
        span_attribution(out, 0, 2, reduce="median")
    with pytest.raises(ValueError, match="Span \\(3, 1\\) is not a non-empty range"):
        span_attribution(out, 3, 1)


def test_layer_and_head_selection(attribution_models, tiny_models):
    model, tokenizer = tiny_models("gpt2")
    model.set_attn_implementation("eager")  # attention weights are returned by the eager implementation only
    try:
        out = attribution_models("gpt2").attribute(PROMPT, FORCED, method="attention", show_progress=False)
    finally:
        model.set_attn_implementation("sdpa")
    seq = out.sequence_attributions[0]
    raw = seq.target_attributions  # tokens x steps x layers x heads
    assert torch.equal(
        to_2d(seq, {"layer": 1, "head": 2}).target_attributions.nan_to_num(), raw[..., 1, 2].nan_to_num()
    )
    assert torch.allclose(
        to_2d(seq, {"layer": 0}).target_attributions.nan_to_num(), raw[..., 0, :].mean(-1).nan_to_num()
    )
    assert torch.allclose(to_2d(seq, {"head": 3}).target_attributions.nan_to_num(), raw[..., 3].mean(-1).nan_to_num())
    assert torch.allclose(
        to_2d(seq).target_attributions.nan_to_num(), seq.aggregate().target_attributions.nan_to_num()
    )
    with pytest.raises(ValueError, match="Unknown axis 'block'.*layer, head"):
        to_2d(seq, {"block": 0})
    with pytest.raises(ValueError, match="select\\['head'\\]=9 is out of range: choose 0..3"):
        to_2d(seq, {"head": 9})
    layer_word = score_of(out, "America", "Washington", granularity="word", select={"layer": 1, "head": 2})
    rows, columns = _target_word_blocks(seq, "America", "Washington")
    assert layer_word == pytest.approx(_independent_block_sum(raw[..., 1, 2], rows, columns), rel=1e-5)


def test_multibyte_text_round_trips_with_and_without_the_tokenizer(tiny_models):
    from inseq.utils.typing import TokenWithId

    _, tokenizer = tiny_models("gpt2")
    text = "Un caf\u00e9 \u2615, s'il vous pla\u00eet.\n\nFin."
    ids = tokenizer(text).input_ids
    tokens = [TokenWithId(token, idx) for token, idx in zip(tokenizer.convert_ids_to_tokens(ids), ids, strict=True)]
    assert len(tokens) > len(text.split())  # the accented letters and the emoji are split into byte tokens
    from_strings = token_texts(tokens)
    assert from_strings == token_texts(tokens, tokenizer)
    assert "".join(from_strings) == text
    words = ["".join(from_strings[a:b]).strip() for a, b in group_tokens(from_strings, "word")]
    # A run of symbols and punctuation ("☕,") is one unit, like "...".
    assert words == ["Un", "caf\u00e9", "\u2615,", "s'il", "vous", "pla\u00eet", ".", "Fin", "."]
    paragraphs = ["".join(from_strings[a:b]).strip() for a, b in group_tokens(from_strings, "paragraph")]
    assert paragraphs == ["Un caf\u00e9 \u2615, s'il vous pla\u00eet.", "Fin."]


def test_word_merging_leaves_inseq_span_defaults_alone(forced_output):
    """inseq shares its default aggregation dict between outputs; merging with nansum must not change it."""
    from inseq.data.aggregation_functions import DEFAULT_ATTRIBUTION_AGGREGATE_DICT

    model, out = forced_output
    before = copy.deepcopy(DEFAULT_ATTRIBUTION_AGGREGATE_DICT)
    aggregate_granularity(out, "word", tokenizer=model.tokenizer)
    assert DEFAULT_ATTRIBUTION_AGGREGATE_DICT == before
    # A plain inseq span merge afterwards still keeps the score of largest magnitude (inseq's absmax).
    seq = out.sequence_attributions[0].aggregate()
    merged = seq.aggregate("spans", target_spans=[(1, 3)]).target_attributions
    expected = seq.target_attributions[1:3].abs().max(0).values
    assert torch.allclose(merged[1].abs(), expected, equal_nan=True)

"""The course-style question on the trained demo model: importance of "America" when generating "Washington"."""

from __future__ import annotations

import inseq
import pytest

import inseq_ext
from inseq_ext import aggregate_granularity, score_of

PROMPT = "The first president of America is"
ANSWER = PROMPT + " George Washington."
PROMPT_WORDS = ["The", "first", "president", "of", "America", "is"]


@pytest.fixture(scope="module")
def demo_output():
    model = inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency")
    return model.attribute(PROMPT, ANSWER, show_progress=False)


def word_row(output, generated_word: str) -> dict[str, float]:
    """Prompt word -> score when generating ``generated_word``, read from the word-level heatmap."""
    words = aggregate_granularity(output, "word")[0]
    tokens = [token.token.strip().lstrip("\u0120") for token in words.target]
    column = tokens.index(generated_word) - words.attr_pos_start
    scores = words.target_attributions[:, column]
    return {token: scores[idx].item() for idx, token in enumerate(tokens[: words.attr_pos_start])}


@pytest.mark.parametrize("generated", ["George", "Washington"])
def test_lookup_answers_the_course_question(demo_output, generated):
    row = word_row(demo_output, generated)
    assert list(row) == PROMPT_WORDS
    answer = score_of(demo_output, "America", generated, granularity="word")
    assert answer == pytest.approx(row["America"], abs=1e-6)
    # The trained model answers from the subject: "America" is the most important prompt word.
    assert max(row, key=row.get) == "America"


def test_lookup_of_absent_word_names_the_choices(demo_output):
    with pytest.raises(ValueError, match="Canada.*absent.*America"):
        score_of(demo_output, "Canada", "Washington", granularity="word")

"""Terminal text view (colored and plain) and the top-k bar chart."""

from __future__ import annotations

import io
import math

import pytest

from inseq_ext.views.lookup import score_of
from inseq_ext.views.span import span_attribution
from inseq_ext.views.terminal import color_supported, format_attribution, print_attribution, top_k, top_k_bar_chart

PROMPT = "The first president of America is"
FORCED = "The first president of America is George Washington."


@pytest.fixture(scope="module")
def output(attribution_models):
    return attribution_models("gpt2").attribute(PROMPT, FORCED, show_progress=False)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_text_shows_every_score(output):
    text = format_attribution(output, "Washington", granularity="word", color=False)
    assert "\x1b[" not in text
    for word in ("The", "first", "president", "of", "America", "is", "George"):
        expected = score_of(output, word, "Washington", granularity="word")
        assert f"{word}[{expected:.3g}]" in text
    assert "[[Washington]]" in text


def test_colored_text_uses_the_score_colors(output):
    span = span_attribution(output, 1, granularity="word")
    text = format_attribution(output, 1, granularity="word", color=True)
    strongest = max(
        range(len(span.target)), key=lambda i: -1 if math.isnan(span.target_scores[i]) else abs(span.target_scores[i])
    )
    # The unit with the largest |score| gets the full color, underlined when it is the span itself.
    assert f"\x1b[30;48;2;214;39;40m{span.target[strongest]}\x1b[0m" in text
    assert "[" not in text.split("\n", 1)[1].replace("\x1b[", "")  # no plain-text scores


def test_color_detection(monkeypatch, output):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert color_supported(FakeTerminal()) and not color_supported(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_supported(FakeTerminal())
    stream = FakeTerminal()
    print_attribution(output, 0, stream=stream)
    assert "\x1b[" not in stream.getvalue() and "[" in stream.getvalue()


def test_top_k_and_bar_chart(output, tmp_path):
    ranked = top_k(output, "Washington", k=4, granularity="word")
    span = span_attribution(output, 1, granularity="word")
    values = sorted((abs(v) for v in span.target_scores.tolist() if not math.isnan(v)), reverse=True)
    assert [abs(unit.score) for unit in ranked] == pytest.approx(values[:4])
    for unit in ranked:
        assert unit.score == pytest.approx(span.target_scores[unit.index].item())
    path = top_k_bar_chart(output, tmp_path / "top.png", "Washington", k=4, granularity="word")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["top.png"]
    with pytest.raises(ValueError, match="k=0"):
        top_k(output, 0, k=0)
    with pytest.raises(ValueError, match="target 'Lincoln' is absent"):
        top_k(output, "Lincoln")

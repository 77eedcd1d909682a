"""The explorer on the trained demo models in headless Chromium: numbers on the page, plain words, color scales,
several methods on one generation, the encoder-decoder view, and a narrow screen. See tests/browser_helpers.py."""

from __future__ import annotations

import math
import re

import inseq
import pytest
from browser_helpers import assert_map, open_page, units

import inseq_ext
import inseq_ext_cli
from inseq_ext.views.explorer import write_explorer
from inseq_ext.views.span import span_attribution

PROMPT = "The first president of America is"
METRICS = {"custom_saliency": {"sufficiency": 0.5, "comprehensiveness": 0.25}}


@pytest.fixture(scope="module")
def gpt2_outputs():
    model = inseq.load_model(
        inseq_ext.demo_model("gpt2"), "custom_saliency", model_kwargs={"attn_implementation": "eager"}
    )
    generation = {"max_new_tokens": 4, "do_sample": False}
    first = model.attribute(PROMPT, generation_args=generation, step_scores=["probability"], show_progress=False)
    text = first.info["generated_texts"][0]
    outputs = {
        "custom_saliency": first,
        "attention": model.attribute(PROMPT, text, method="attention", show_progress=False),
        "block_gradient_x_input": model.attribute(PROMPT, text, method="block_gradient_x_input", show_progress=False),
    }
    return model, outputs


@pytest.fixture(scope="module")
def compare_page(browser, gpt2_outputs, tmp_path_factory):
    model, outputs = gpt2_outputs
    path = write_explorer(outputs, tmp_path_factory.mktemp("compare") / "compare.html", model, metrics=METRICS)
    tab = open_page(browser, path.as_uri())
    tab.wait_for_selector(".unit.generated")
    tab.explorer_path = path
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def translation_page(browser, tmp_path_factory):
    model = inseq.load_model(inseq_ext.demo_model("translation"), "custom_saliency")
    out = model.attribute(
        "the big dog sees the cat", step_scores=["probability"], attribute_target=True, show_progress=False
    )
    path = write_explorer(out, tmp_path_factory.mktemp("translation") / "translation.html", model)
    tab = open_page(browser, path.as_uri())
    tab.wait_for_selector(".unit.generated")
    yield tab, out
    tab.close()


def _reset(page, method: str = "custom_saliency", granularity: str = "token") -> None:
    if page.is_visible("#method-select"):
        labels = page.locator("#method-select option").all_text_contents()
        page.select_option("#method-select", str([label.split(" ")[0] for label in labels].index(method)))
    page.select_option("#granularity-select", granularity)
    page.select_option("#scale-select", "map")
    page.keyboard.press("Escape")
    page.mouse.move(0, 0)


def _prompt_unit(page, index: int):
    return page.locator(f'.unit[data-role="prompt"][data-index="{index}"]')


def test_scores_on_the_page_and_no_score_before_a_selection(compare_page, gpt2_outputs):
    page = compare_page
    _, outputs = gpt2_outputs
    _reset(page)
    # Nothing selected: hovering a prompt word says why there is no score, rather than "n/a".
    _prompt_unit(page, 4).hover()
    hover = page.text_content("#hover-info")
    assert 'prompt token 4 "America": no score yet' in hover and "n/a" not in hover
    assert page.is_visible("#score-badge") and page.text_content("#score-badge") == "select a generated unit"
    # With a selection, the hovered unit carries its score in a badge drawn right above it.
    page.click('.unit.generated[data-generated="1"]')
    america = _prompt_unit(page, 4)
    america.hover()
    expected = span_attribution(outputs["custom_saliency"], 1).target_scores[4].item()
    assert float(page.text_content("#score-badge")) == pytest.approx(expected, rel=1e-5)
    badge, unit = page.locator("#score-badge").bounding_box(), america.bounding_box()
    assert badge["y"] + badge["height"] <= unit["y"] + 1 and abs(badge["x"] - unit["x"]) < 2
    hover = page.text_content("#hover-info")
    assert hover.startswith('prompt token 4 "America": ')
    assert float(hover.rsplit(": ", 1)[1]) == pytest.approx(expected, rel=1e-5)
    page.mouse.move(0, 0)
    assert not page.is_visible("#score-badge")
    assert page.requests == [page.explorer_path.as_uri()] and not page.errors  # nothing fetched, no script error


def test_table_like_out_show_with_probability_row(compare_page, gpt2_outputs):
    page = compare_page
    _, outputs = gpt2_outputs
    _reset(page)
    seq = outputs["custom_saliency"].sequence_attributions[0]
    steps = seq.attr_pos_end - seq.attr_pos_start
    headers = page.locator("#score-table thead th[data-generated]").all_text_contents()
    assert headers == [span_attribution(outputs["custom_saliency"], g).text.strip() for g in range(steps)]
    cells = page.locator("#score-table tbody tr[data-index]").evaluate_all(
        """rows => rows.map(r => [Number(r.dataset.index), [...r.querySelectorAll('td')]
            .map(td => [Number(td.dataset.generated), td.dataset.score, td.textContent])])"""
    )
    assert len(cells) == len(seq.target)  # rows: prompt tokens, then generated tokens
    checked = 0
    for index, row in cells:
        for generated, score, text in row:
            expected = span_attribution(outputs["custom_saliency"], generated).target_scores[index].item()
            if math.isnan(expected):
                assert score == "" and text == ""
                continue
            assert float(score) == pytest.approx(expected, rel=1e-5) and float(text) == pytest.approx(
                expected, rel=0.05
            )
            checked += 1
    assert checked >= 20
    probability = page.locator('#score-table tfoot tr[data-step-score="probability"] td').all_text_contents()
    assert [float(value) for value in probability] == pytest.approx(seq.step_scores["probability"].tolist(), rel=1e-5)
    # Clicking a column header selects that generated unit; its column is marked.
    page.click('#score-table thead th[data-generated="2"]')
    assert page.get_attribute("#selection-info", "data-first") == "2"
    marked = page.locator("#score-table td.selected").evaluate_all("cells => cells.map(c => c.dataset.generated)")
    assert set(marked) == {"2"} and len(marked) == len(seq.target)


def test_plain_words_and_no_machine_path(compare_page):
    page = compare_page
    _reset(page)
    page.hover('.unit.generated[data-generated="0"]')
    assert page.text_content("#hover-info").startswith("generated token 0")
    visible = page.inner_text("body")
    assert not re.search(r"\b(target|source)\b", visible, re.I), "inseq's axis names leak into the page"
    assert "Prompt" in page.inner_text("h2 >> nth=0") or "PROMPT" in page.inner_text("h2 >> nth=0")
    assert "model: demo:gpt2" in page.text_content("#meta")
    assert "demo:gpt2" in page.text_content("h1")
    html = page.explorer_path.read_text(encoding="utf-8")
    assert inseq_ext.demo_model("gpt2") not in html and "/demo_models/" not in html


def test_sequential_scale_for_nonnegative_methods_diverging_for_signed(compare_page, gpt2_outputs):
    page = compare_page
    _, outputs = gpt2_outputs
    for method, kind in (("custom_saliency", "sequential"), ("attention", "sequential")):
        _reset(page, method)
        page.click('.unit.generated[data-generated="0"]')
        assert page.get_attribute("#legend", "data-scale") == kind
        assert page.text_content("#scale-low") == "0"
        assert "31, 119, 180" not in page.eval_on_selector("#legend-bar", "e => e.style.background")
    _reset(page, "block_gradient_x_input")
    page.click('.unit.generated[data-generated="0"]')
    span = span_attribution(outputs["block_gradient_x_input"], 0)
    assert page.get_attribute("#legend", "data-scale") == "diverging"
    assert float(page.text_content("#scale-low")) == pytest.approx(-float(page.text_content("#scale-label")))
    assert "31, 119, 180" in page.eval_on_selector("#legend-bar", "e => e.style.background")
    assert (span.target_scores.nan_to_num() < 0).any()  # so some unit is blue
    assert_map(page, span)


def test_method_switch_keeps_the_selection_and_shows_metrics(compare_page, gpt2_outputs):
    page = compare_page
    _, outputs = gpt2_outputs
    _reset(page)
    options = page.locator("#method-select option").all_text_contents()
    assert options == [
        "custom_saliency (sufficiency 0.5 · comprehensiveness 0.25)",
        "attention",
        "block_gradient_x_input",
    ]
    assert page.text_content("#metrics") == "sufficiency 0.5 · comprehensiveness 0.25"
    page.click('.unit.generated[data-generated="0"]')
    page.click('.unit.generated[data-generated="1"]', modifiers=["Shift"])
    assert_map(page, span_attribution(outputs["custom_saliency"], 0, 2))
    for index, method in enumerate(("attention", "block_gradient_x_input")):
        page.select_option("#method-select", str(index + 1))
        assert page.get_attribute("#selection-info", "data-last") == "1"  # same span, other method's map
        assert_map(page, span_attribution(outputs[method], 0, 2))
        assert not page.is_visible("#metrics")
    assert page.is_visible("#layer-select") and not page.is_visible("#head-select")  # block axis only


def test_word_view_on_the_demo_says_it_equals_the_token_view(compare_page):
    page = compare_page
    _reset(page, granularity="word")
    # The demo vocabulary has every corpus word as one token: the page says so instead of silently repeating.
    assert page.is_visible("#granularity-note")
    assert "equals the token view" in page.text_content("#granularity-note")
    _reset(page, granularity="token")
    assert not page.is_visible("#granularity-note")


def test_encoder_decoder_view(translation_page):
    page, out = translation_page
    _reset(page)
    assert page.locator("#sequence-select option").all_text_contents() == [
        "1. custom_saliency: the big dog sees the cat"
    ]
    prompt = page.text_content("#prompt")
    assert prompt.endswith("cat</s>") and "</s></s>" not in prompt
    shown = units(page)
    starts = [unit for unit in shown if unit["role"] == "start"]
    assert [unit["text"] for unit in starts] == ["</s>", "<s>"]
    assert all(not unit["clickable"] and unit["panel"] == "generation" for unit in starts)
    clickable = [unit for unit in shown if unit["clickable"]]
    assert clickable[0]["text"].strip() == "bova" and clickable[0]["generated"] == "1"
    page.click('.unit[data-role="start"] >> nth=1')  # not selectable: nothing happens
    assert page.text_content("#selection-info") == "No generated unit selected."
    page.click('.unit.generated[data-generated="2"]')
    span = span_attribution(out, 2)
    assert span.source_scores is not None
    assert_map(page, span)
    headers = page.locator("#score-table thead th[data-generated]").all_text_contents()
    assert "<s>" not in headers and headers[0] == "bova"


def _overlaps(page) -> list[tuple[str, str, float]]:
    """Selected units whose drawn extent (outline, outer shadows) covers a neighbouring unit."""
    boxes = page.locator(".unit").evaluate_all(
        """elements => elements.map(e => {
            const style = getComputedStyle(e);
            const outline = style.outlineStyle === 'none' ? 0
                : parseFloat(style.outlineWidth) + parseFloat(style.outlineOffset);
            const outer = style.boxShadow === 'none' ? [] : style.boxShadow.split(/,(?![^(]*\\))/)
                .filter(s => !s.includes('inset'));
            return {text: e.textContent, selected: e.classList.contains('selected'), outline, outer: outer.length,
                    rects: [...e.getClientRects()].map(r => [r.left, r.top, r.right, r.bottom])};
        })"""
    )
    problems = []
    for i, box in enumerate(boxes):
        if not box["selected"]:
            continue
        assert box["outer"] == 0, "the span frame must be drawn inside the unit (inset shadows)"
        grow = box["outline"]
        for j, other in enumerate(boxes):
            if j == i or other["selected"]:
                continue
            for left, top, right, bottom in box["rects"]:
                for o_left, o_top, o_right, o_bottom in other["rects"]:
                    width = min(right + grow, o_right) - max(left - grow, o_left)
                    height = min(bottom + grow, o_bottom) - max(top - grow, o_top)
                    if width > 0.5 and height > 0.5:
                        problems.append((box["text"], other["text"], width))
    return problems


@pytest.mark.parametrize("width", [1200, 420])
def test_layout_and_span_frame(browser, compare_page, width):
    page = open_page(browser, compare_page.explorer_path.as_uri(), width=width, height=800)
    try:
        page.wait_for_selector(".unit.generated")
        page.click('.unit.generated[data-generated="1"]')
        page.click('.unit.generated[data-generated="2"]', modifiers=["Shift"])
        assert _overlaps(page) == []
        frames = page.locator(".unit.selected").evaluate_all(
            "els => els.map(e => [e.classList.contains('span-start'), e.classList.contains('span-end')])"
        )
        assert frames == [[True, False], [False, True]]
        # Nothing wider than the window: header controls, legend and text wrap.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        rights = page.locator("header *").evaluate_all(
            "els => els.filter(e => e.getClientRects().length).map(e => e.getBoundingClientRect().right)"
        )
        assert max(rights) <= width
        if width == 420:
            legend = page.locator("#legend").bounding_box()
            assert legend["height"] > 30  # wrapped onto several lines
        assert not page.errors
    finally:
        page.close()


def _cli(capsys, *arguments: str) -> tuple[int, str, str]:
    status = inseq_ext_cli.main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_several_methods_write_one_explorer_with_a_method_switch(browser, capsys, tmp_path):
    path = tmp_path / "compare.html"
    status, out, err = _cli(
        capsys, "attribute", PROMPT, "--method", "custom_saliency,attention", "--step-scores", "probability",
        "--max-new-tokens", "4", "--html", str(path), "--no-show", "--quiet",
    )  # fmt: skip
    assert status == 0, err
    assert "method: custom_saliency, attention" in out and f"Explorer written to {path}" in out
    page = open_page(browser, path.as_uri())
    try:
        page.wait_for_selector(".unit.generated")
        assert page.locator("#method-select option").all_text_contents() == ["custom_saliency", "attention"]
        assert page.text_content("h1") == "inseq_ext explorer: custom_saliency, attention on demo:gpt2"
        # attention refuses step scores; custom_saliency computed them for the generation, so the table has them.
        probability = page.locator('#score-table tfoot tr[data-step-score="probability"] td').all_text_contents()
        assert len(probability) == page.locator(".unit.generated").count() >= 2
        assert all(0 < float(value) <= 1 for value in probability)
        page.click('.unit.generated[data-generated="1"]')
        page.select_option("#method-select", "1")
        assert page.get_attribute("#legend", "data-scale") == "sequential"
        assert not page.errors
    finally:
        page.close()
    assert inseq_ext.demo_model("gpt2") not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "custom_saliency,custom_saliency"], "custom_saliency listed twice"),
        (["--method", "custom_saliency,nope"], "unknown attribution method 'nope'"),
        (["--method", "custom_saliency,attention", "--json", "{tmp}/x.json"], "--json hold(s) one method's output"),
    ],
)
def test_cli_method_list_errors(capsys, tmp_path, arguments, message):
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    status, _, err = _cli(capsys, "attribute", PROMPT, *arguments)
    lines = [line for line in err.splitlines() if line.startswith("inseq-ext: error:")]
    assert status == 2 and "Traceback" not in err and len(lines) == 1 and message in lines[0], err
    assert list(tmp_path.iterdir()) == []

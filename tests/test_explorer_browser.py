"""The HTML explorer in a real browser: headless Chromium (Debian's package) driven by Playwright, on tiny models
(methods, layer/head axes, several prompts per file). Skipped or failed as tests/browser_helpers.py says."""

from __future__ import annotations

import math

import pytest
from browser_helpers import assert_map, open_page, units

from inseq_ext.views.explorer import write_explorer
from inseq_ext.views.span import span_attribution

PROMPTS = ["The first president of America is", "Hello ladies and"]
FORCED = [
    "The first president of America is George Washington. He was born in America.",
    "Hello ladies and gentlemen, I am a member.",
]
TITLES = ["saliency 1", "saliency 2", "attention", "custom_saliency", "block_gradient_x_input", "bart saliency"]


@pytest.fixture(scope="module")
def outputs(attribution_models, tiny_models):
    gpt2 = attribution_models("gpt2")
    saliency = gpt2.attribute(PROMPTS, FORCED, show_progress=False, step_scores=["probability"])
    hf_model, _ = tiny_models("gpt2")
    hf_model.set_attn_implementation("eager")  # attention weights come from the eager implementation only
    try:
        attention = gpt2.attribute(PROMPTS[0], FORCED[0], method="attention", show_progress=False)
    finally:
        hf_model.set_attn_implementation("sdpa")
    custom = gpt2.attribute(PROMPTS[0], FORCED[0], method="custom_saliency", show_progress=False)
    block = gpt2.attribute(PROMPTS[0], FORCED[0], method="block_gradient_x_input", show_progress=False)
    bart = attribution_models("bart").attribute(
        PROMPTS[0], " George Washington. He was born in America.", attribute_target=True, show_progress=False
    )
    return {"saliency": saliency, "attention": attention, "custom": custom, "block": block, "bart": bart}


@pytest.fixture(scope="module")
def page(browser, outputs, tmp_path_factory):
    path = tmp_path_factory.mktemp("explorer") / "explorer.html"
    ordered = [outputs[name] for name in ("saliency", "attention", "custom", "block", "bart")]
    write_explorer(ordered, path, titles=TITLES)
    tab = open_page(browser, path.as_uri())
    tab.wait_for_selector(".unit.generated")
    tab.explorer_path = path
    yield tab
    tab.close()


def _reset(page, sequence: int, granularity: str = "token", layer: str = "*", head: str = "*", scale: str = "map"):
    page.select_option("#sequence-select", str(sequence))
    page.select_option("#granularity-select", granularity)
    if page.is_visible("#layer-select"):
        page.select_option("#layer-select", layer)
    if page.is_visible("#head-select"):
        page.select_option("#head-select", head)
    page.select_option("#scale-select", scale)
    page.keyboard.press("Escape")


def test_click_a_generated_token_colors_the_prompt(page, outputs):
    _reset(page, 0)
    page.click('.unit.generated[data-generated="3"]')
    assert_map(page, span_attribution(outputs["saliency"], 3))
    # The raw number shows on hover, in the status bar and the tooltip.
    america = page.locator('.unit[data-axis="target"][data-index="9"]')
    america.hover()
    expected = span_attribution(outputs["saliency"], 3).target_scores[9].item()
    assert float(page.get_attribute("#hover-info", "data-score")) == pytest.approx(expected, rel=1e-5)
    assert f"{float(f'{expected:.6g}'):g}"[:6] in page.text_content("#hover-info")
    assert "score:" in america.get_attribute("title")
    # The file is self-contained: nothing but the file itself was requested, and no script error happened.
    assert page.requests == [page.explorer_path.as_uri()] and not page.errors
    html = page.explorer_path.read_text()
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html


def test_shift_click_and_drag_select_a_span(page, outputs):
    _reset(page, 0)
    page.click('.unit.generated[data-generated="1"]')
    page.click('.unit.generated[data-generated="4"]', modifiers=["Shift"])
    assert_map(page, span_attribution(outputs["saliency"], 1, 5))
    assert "sum of 4 token maps" in page.text_content("#selection-info")
    assert [u["generated"] for u in units(page) if u["selected"]] == ["1", "2", "3", "4"]
    # Drag from generated token 0 to 2.
    page.hover('.unit.generated[data-generated="0"]')
    page.mouse.down()
    page.hover('.unit.generated[data-generated="2"]')
    page.mouse.up()
    assert_map(page, span_attribution(outputs["saliency"], 0, 3))


def test_word_and_sentence_granularity(page, outputs):
    _reset(page, 0, "word")
    span = span_attribution(outputs["saliency"], 1, granularity="word")
    shown = [u["text"] for u in units(page) if u["axis"] == "target"]
    assert shown == span.target
    # This tokenizer splits words ("president" is 4 tokens): the word view has fewer units and no "equals" note.
    tokens = outputs["saliency"].sequence_attributions[0].target
    assert len(shown) < len(tokens) and any(len(text.strip()) > 6 for text in shown)
    assert not page.is_visible("#granularity-note")
    page.click('.unit.generated[data-generated="1"]')
    assert_map(page, span)
    assert span.text.strip() in page.text_content("#selection-info")
    _reset(page, 0, "sentence")
    page.click('.unit.generated[data-generated="0"]')
    page.click('.unit.generated[data-generated="1"]', modifiers=["Shift"])
    assert_map(page, span_attribution(outputs["saliency"], 0, 2, granularity="sentence"))


def test_second_prompt_and_fixed_color_scale(page, outputs):
    _reset(page, 1, scale="fixed")
    page.fill("#scale-max", "0.05")
    page.click('.unit.generated[data-generated="2"]')
    assert_map(page, span_attribution(outputs["saliency"], 2, sequence=1), fixed_scale=0.05)
    assert "gentlemen" in page.text_content("#generation")
    # "whole sequence": the largest |score| over every single-unit map, so maps can be compared by eye.
    page.select_option("#scale-select", "global")
    generated = outputs["saliency"].sequence_attributions[1]
    largest = max(
        abs(value)
        for step in range(generated.attr_pos_end - generated.attr_pos_start)
        for value in span_attribution(outputs["saliency"], step, sequence=1).target_scores.tolist()
        if not math.isnan(value)
    )
    assert float(page.text_content("#scale-label")) == pytest.approx(largest, rel=1e-5)
    assert_map(page, span_attribution(outputs["saliency"], 2, sequence=1), fixed_scale=largest)


def test_layer_and_head_controls(page, outputs):
    _reset(page, 2, layer="1", head="2")
    page.click('.unit.generated[data-generated="0"]')
    assert_map(page, span_attribution(outputs["attention"], 0, select={"layer": 1, "head": 2}))
    page.select_option("#head-select", "*")
    assert_map(page, span_attribution(outputs["attention"], 0, select={"layer": 1}))
    page.select_option("#layer-select", "*")
    assert_map(page, span_attribution(outputs["attention"], 0))
    _reset(page, 4, layer="0")
    assert page.locator("#layer-select option").all_text_contents()[1:3] == ["embeddings", "block 0"]
    assert not page.is_visible("#head-select")
    page.click('.unit.generated[data-generated="5"]')
    assert_map(page, span_attribution(outputs["block"], 5, select={"layer": 0}))


def test_package_method_and_encoder_decoder(page, outputs):
    _reset(page, 3, "word")
    page.click('.unit.generated[data-generated="0"]')
    assert_map(page, span_attribution(outputs["custom"], 0, granularity="word"))
    assert not page.is_visible("#layer-select")
    _reset(page, 5, "word")
    page.click('.unit.generated[data-generated="1"]')
    span = span_attribution(outputs["bart"], 1, granularity="word")
    assert span.source_scores is not None
    assert_map(page, span)
    assert "America" in page.text_content("#prompt")

"""The explorer's embedded data and file writing, without a browser."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from inseq_ext.views.explorer import explorer_payload, model_display_name, score_color, write_explorer
from inseq_ext.views.granularity import sequence_groups, to_2d

PROMPT = "The first president of America is"
FORCED = "The first president of America is George Washington."


@pytest.fixture(scope="module")
def attention_output(attribution_models, tiny_models):
    hf_model, _ = tiny_models("gpt2")
    hf_model.set_attn_implementation("eager")
    try:
        return attribution_models("gpt2").attribute(PROMPT, FORCED, method="attention", show_progress=False)
    finally:
        hf_model.set_attn_implementation("sdpa")


def test_payload_units_and_views(attention_output):
    seq = attention_output.sequence_attributions[0]
    payload = explorer_payload(attention_output)
    (entry,) = payload["sequences"]
    (method,) = entry["methods"]
    assert [dim["name"] for dim in method["dims"]] == ["layer", "head"]
    assert len(method["views"]) == 3 * 5  # (all + 2 layers) x (all + 4 heads)
    assert method["signed"] is False  # attention weights are never negative: sequential color scale
    default = to_2d(seq).target_attributions
    for row in range(default.shape[0]):
        for column in range(default.shape[1]):
            value, shown = default[row, column].item(), method["views"]["*|*"][row][column]
            assert (shown is None) if math.isnan(value) else shown == pytest.approx(value, rel=1e-6)
    _, target_groups, _, texts = sequence_groups(seq, "word")
    units = entry["units"]["word"]
    assert [unit["rows"] for unit in units] == [list(group) for group in target_groups]
    assert "".join(unit["text"] for unit in units) == "".join(texts)
    generated = [unit for unit in units if "columns" in unit]
    assert [unit["generated"] for unit in generated] == list(range(len(generated)))
    assert generated[0]["columns"][0] == 0 and generated[-1]["columns"][1] == entry["columns"]


def test_small_budget_embeds_one_axis_at_a_time(attention_output):
    rows = len(attention_output.sequence_attributions[0].target)
    columns = (
        attention_output.sequence_attributions[0].attr_pos_end
        - attention_output.sequence_attributions[0].attr_pos_start
    )
    (entry,) = explorer_payload(attention_output, max_cells=rows * columns * 7)["sequences"]
    assert sorted(entry["methods"][0]["views"]) == sorted(["*|*", "0|*", "1|*", "*|0", "*|1", "*|2", "*|3"])
    (entry,) = explorer_payload(attention_output, max_cells=rows * columns)["sequences"]
    assert list(entry["methods"][0]["views"]) == ["*|*"]


def test_written_file_is_whole_and_self_contained(attention_output, tmp_path):
    path = write_explorer(attention_output, tmp_path / "nested" / "explorer.html", title="T</title><b>")
    html = path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["explorer.html"]
    assert "<title>T&lt;/title&gt;&lt;b&gt;</title>" in html
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    data = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data)["sequences"][0]["methods"][0]["method"] == "attention"
    # A failed write leaves the previous file untouched.
    with pytest.raises(ValueError, match="titles has 2 entries but there are 1 sequences"):
        write_explorer(attention_output, path, titles=["a", "b"])
    assert path.read_text(encoding="utf-8") == html


def test_bad_input_and_colors(attention_output):
    with pytest.raises(ValueError, match="Unknown granularity 'chapter'"):
        explorer_payload(attention_output, granularities=["token", "chapter"])
    with pytest.raises(ValueError, match="takes inseq attribution outputs.*the argument is a str"):
        explorer_payload("not an output")
    assert score_color(0.5, 1.0) == "rgba(214, 39, 40, 0.5)"
    assert score_color(-2.0, 1.0) == "rgba(31, 119, 180, 1)"
    assert score_color(float("nan"), 1.0) == "transparent"


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 4}), ("custom_saliency", {})],
)
def test_inseq_builtins_and_package_methods(attribution_models, method, kwargs):
    out = attribution_models("gpt2").attribute(PROMPT, FORCED, method=method, show_progress=False, **kwargs)
    seq = out.sequence_attributions[0]
    ((entry,),) = [sequence["methods"] for sequence in explorer_payload(out)["sequences"]]
    assert entry["method"] == method and entry["dims"] == []  # no layer/head axis for these methods
    default = seq.aggregate().target_attributions
    shown = torch.tensor([[math.nan if v is None else v for v in row] for row in entry["views"][""]])
    assert torch.allclose(shown.nan_to_num(), default.nan_to_num(), rtol=1e-6, atol=1e-9)
    assert torch.equal(shown.isnan(), default.isnan())


def test_model_names_without_machine_paths(tmp_path, attention_output):
    import copy

    import inseq_ext

    assert model_display_name(inseq_ext.demo_model("gpt2")) == "demo:gpt2"
    assert model_display_name(inseq_ext.demo_model("translation") + "/") == "demo:translation"
    folder = tmp_path / "my-finetuned-gpt2"
    folder.mkdir()
    assert model_display_name(str(folder)) == "my-finetuned-gpt2"
    assert model_display_name("/no/such/place/llama-7b") == "llama-7b"
    assert model_display_name("openai-community/gpt2") == "openai-community/gpt2"  # a hub name stays
    assert model_display_name(None) == ""
    # A model loaded from a local folder: inseq records the full path; the page shows only the folder's name.
    local = copy.copy(attention_output)
    local.info = dict(attention_output.info, model_name=str(folder))
    html = write_explorer(local, tmp_path / "local.html").read_text(encoding="utf-8")
    assert str(tmp_path) not in html
    assert "<title>inseq_ext explorer: attention on my-finetuned-gpt2</title>" in html


@pytest.fixture(scope="module")
def method_outputs(attribution_models, attention_output):
    gpt2 = attribution_models("gpt2")
    kwargs = {"show_progress": False}
    return {
        "saliency": gpt2.attribute(PROMPT, FORCED, step_scores=["probability"], **kwargs),
        "attention": attention_output,
        "block_gradient_x_input": gpt2.attribute(PROMPT, FORCED, method="block_gradient_x_input", **kwargs),
    }


# The view with every layer/head axis reduced (inseq's default aggregation), per method.
ALL_VIEW = {"saliency": "", "attention": "*|*", "block_gradient_x_input": "*"}


def test_method_mapping_is_one_generation_with_a_method_switch(method_outputs, tmp_path):
    payload = explorer_payload(method_outputs, metrics={"saliency": {"sufficiency": 0.25, "deletion": [None]}})
    (entry,) = payload["sequences"]  # one generation, three methods
    assert [method["label"] for method in entry["methods"]] == list(method_outputs)
    assert entry["stepScores"]["probability"] == pytest.approx(
        method_outputs["saliency"].sequence_attributions[0].step_scores["probability"].tolist(), rel=1e-6
    )
    for method, output in zip(entry["methods"], method_outputs.values(), strict=True):
        expected = to_2d(output.sequence_attributions[0]).target_attributions
        shown = torch.tensor(
            [[math.nan if v is None else v for v in row] for row in method["views"][ALL_VIEW[method["label"]]]]
        )
        assert torch.allclose(shown.nan_to_num(), expected.nan_to_num(), rtol=1e-6, atol=1e-9)
        # The color scale is diverging exactly when some score is negative.
        assert method["signed"] == bool((expected.nan_to_num() < 0).any())
    assert [method["signed"] for method in entry["methods"]] == [False, False, True]
    assert entry["methods"][0]["metrics"] == {"sufficiency": 0.25, "deletion": None}
    assert entry["methods"][1]["metrics"] == {}
    html = write_explorer(method_outputs, tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "<title>inseq_ext explorer: saliency, attention, block_gradient_x_input</title>" in html


def test_method_mapping_errors(method_outputs, attribution_models):
    other = attribution_models("gpt2").attribute(PROMPT, PROMPT + " Hello there.", show_progress=False)
    with pytest.raises(ValueError, match=r"same generations: sequence 0 of 'other' differs from 'saliency'"):
        explorer_payload({"saliency": method_outputs["saliency"], "other": other})
    with pytest.raises(ValueError, match=r"the value of 'attention' in the argument is a str"):
        explorer_payload({"attention": "oops"})
    with pytest.raises(ValueError, match=r"mapping \(the argument\) is empty"):
        explorer_payload({})
    with pytest.raises(ValueError, match=r"metrics names the method 'lime'.*'saliency', 'attention'"):
        explorer_payload(method_outputs, metrics={"lime": {"sufficiency": 0.1}})
    with pytest.raises(ValueError, match=r"has 2 values but 'saliency' has 1 sequence"):
        explorer_payload(method_outputs, metrics={"saliency": {"sufficiency": [0.1, 0.2]}})
    with pytest.raises(ValueError, match=r"must be numbers"):
        explorer_payload(method_outputs, metrics={"saliency": {"sufficiency": "high"}})


@pytest.fixture(scope="module")
def translation():
    import inseq

    import inseq_ext

    model = inseq.load_model(inseq_ext.demo_model("translation"), "custom_saliency")
    out = model.attribute("the big dog sees the cat", attribute_target=True, show_progress=False)
    return model, out


def test_encoder_decoder_prompt_and_decoder_start(translation):
    model, out = translation
    seq = out.sequence_attributions[0]
    assert [tok.token for tok in seq.target[:2]] == ["</s>", "<s>"]  # decoder start and forced BOS
    (entry,) = explorer_payload(out, model)["sequences"]
    assert entry["title"] == "1. custom_saliency: the big dog sees the cat"  # the source sentence, not "</s>"
    assert entry["model"] == "demo:translation" and entry["encoderDecoder"]
    for granularity in ("token", "word"):
        units = entry["units"][granularity]
        prompt = [unit for unit in units if unit["role"] == "prompt"]
        starts = [unit for unit in units if unit["role"] == "start"]
        generated = [unit for unit in units if unit["role"] == "generated"]
        assert {unit["axis"] for unit in prompt} == {"source"}
        assert "".join(unit["text"] for unit in prompt).endswith("cat</s>")  # one </s>, then the generation
        assert [unit["text"] for unit in starts] == ["</s>", "<s>"]
        assert starts[1]["generated"] == 0  # <s> keeps its column (span_attribution's index 0) ...
        assert [unit["generated"] for unit in generated] == list(range(1, len(generated) + 1))  # ... the rest follow
        assert "".join(unit["text"] for unit in generated).strip().startswith("bova")

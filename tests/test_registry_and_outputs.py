"""Registration in inseq, loading by instance or local path, and inseq's output features on our results."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY, PROMPTS
from helpers import max_abs_difference
from inseq.attr.step_functions import STEP_SCORES_MAP
from inseq.utils import UnknownAttributionMethodError

from inseq_ext import CustomSaliencyAttribution


def test_listed_in_inseq_registry():
    assert "custom_saliency" in inseq.list_feature_attribution_methods()
    assert "logprob" in inseq.list_step_functions()
    assert STEP_SCORES_MAP["logprob"].__name__ == "logprob_fn"


def test_load_model_instance_with_tokenizer(tiny_models):
    model, tokenizer = tiny_models("gpt2")
    attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
    assert isinstance(attribution_model.attribution_method, CustomSaliencyAttribution)


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
def test_load_model_from_local_path(tiny_models, attribution_models, tmp_path, architecture):
    model, tokenizer = tiny_models(architecture)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = inseq.load_model(str(tmp_path), "custom_saliency")
    assert isinstance(loaded.attribution_method, CustomSaliencyAttribution)
    # inseq loads models by name with eager attention; the scores equal those of the in-memory (SDPA) model.
    actual = loaded.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    expected = attribution_models(architecture).attribute(
        PROMPTS, method="custom_saliency", generation_args=GREEDY, show_progress=False
    )
    assert max_abs_difference(expected, actual) < 1e-5


def test_unknown_method_error_lists_ours(attribution_models):
    model = attribution_models("gpt2")
    with pytest.raises(UnknownAttributionMethodError, match="custom_saliency") as error:
        model.attribute(PROMPTS, method="custom_salency", generation_args=GREEDY, show_progress=False)
    assert "Unknown attribution method: custom_salency" in str(error.value)


@pytest.fixture(scope="module")
def saliency_output(attribution_models):
    return attribution_models("gpt2").attribute(
        PROMPTS, method="custom_saliency", generation_args=GREEDY, step_scores=["probability"], show_progress=False
    )


def test_show_renders_heatmap(saliency_output):
    html = saliency_output.show(display=False, return_html=True)
    assert "<table" in html and "probability" in html
    generated_token = saliency_output[0].target[-1].token.replace("\u0120", " ").strip()
    assert generated_token in html


def test_save_and_load_round_trip(saliency_output, tmp_path):
    path = tmp_path / "out.json"
    saliency_output.save(path, overwrite=True)
    loaded = inseq.FeatureAttributionOutput.load(path)
    assert loaded.info["attribution_method"] == "custom_saliency"
    for a, b in zip(saliency_output.sequence_attributions, loaded.sequence_attributions, strict=True):
        torch.testing.assert_close(a.target_attributions, b.target_attributions, equal_nan=True)
        torch.testing.assert_close(a.step_scores["probability"], b.step_scores["probability"])


def test_inseq_aggregators_apply(saliency_output):
    # Summing the sub-word pieces of a word keeps each generated token's scores summing to 1.
    words = saliency_output.aggregate("subwords", special_chars="\u0120", aggregate_fn="sum")[1]
    assert len(words.target) < len(saliency_output[1].target)
    column_sums = words.target_attributions.nan_to_num().sum(0)
    torch.testing.assert_close(column_sums, torch.ones_like(column_sums), atol=1e-5, rtol=0)

"""custom_saliency with default options equals inseq's saliency after its default aggregation."""

from __future__ import annotations

import pytest
import torch
from conftest import GREEDY, PROMPTS
from helpers import max_abs_difference

from inseq_ext.attr.step_gradients import SingleForwardGradients

TOL = 1e-5


def attribute_both(model, inputs, **kwargs):
    expected = model.attribute(inputs, method="saliency", show_progress=False, **kwargs)
    actual = model.attribute(inputs, method="custom_saliency", show_progress=False, **kwargs)
    return expected, actual


def test_batched_generation_matches_inseq_saliency(attribution_models, each_architecture):
    model = attribution_models(each_architecture)
    expected, actual = attribute_both(model, PROMPTS, generation_args=GREEDY)
    assert actual.info["attribution_method"] == "custom_saliency"
    assert len(actual.sequence_attributions) == len(PROMPTS)
    assert max_abs_difference(expected, actual) < TOL


def test_encoder_decoder_with_target_prefix(attribution_models):
    model = attribution_models("bart")
    expected, actual = attribute_both(model, PROMPTS, generation_args=GREEDY, attribute_target=True)
    assert actual.sequence_attributions[0].target_attributions is not None
    assert max_abs_difference(expected, actual) < TOL


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
@pytest.mark.parametrize("attributed_fn", ["probability", "logit", "logprob", "entropy"])
def test_attributed_functions(attribution_models, architecture, attributed_fn):
    model = attribution_models(architecture)
    expected, actual = attribute_both(model, PROMPTS[1], generation_args=GREEDY, attributed_fn=attributed_fn)
    assert actual.info["attributed_fn"] == expected.info["attributed_fn"]
    assert max_abs_difference(expected, actual) < TOL


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
def test_contrastive_step_function(attribution_models, architecture):
    model = attribution_models(architecture)
    source = "The first president of America is"
    target = model.attribute(source, method="custom_saliency", generation_args=GREEDY, show_progress=False)
    generated = target.info["generated_texts"][0]
    contrast = generated[:-3] + "xyz" if architecture == "bart" else generated + " Paris"
    kwargs = {"attributed_fn": "contrast_prob_diff", "contrast_targets": contrast}
    forced = generated if architecture == "bart" else generated + " Rome"
    expected, actual = attribute_both(model, source, generated_texts=forced, **kwargs)
    assert max_abs_difference(expected, actual) < TOL


def test_custom_callable_step_function_uses_per_step_path(attribution_models, monkeypatch):
    """A user's own step function is not known to be local, so each step runs its own forward pass."""
    model = attribution_models("llama")

    def squared_logit(args):
        logits = args.attribution_model.output2logits(args.forward_output)
        return logits.gather(-1, args.target_ids.reshape(-1, 1)).squeeze(-1) ** 2

    def fail(*args, **kwargs):
        raise AssertionError("single-forward path used for an unknown step function")

    monkeypatch.setattr(SingleForwardGradients, "gradients", fail)
    expected, actual = attribute_both(model, PROMPTS, generation_args=GREEDY, attributed_fn=squared_logit)
    assert max_abs_difference(expected, actual) < TOL


@pytest.mark.parametrize("architecture", ["gpt2", "qwen2", "bart"])
def test_single_forward_and_per_step_paths_agree(attribution_models, architecture):
    model = attribution_models(architecture)
    fast = model.attribute(PROMPTS, method="custom_saliency", generation_args=GREEDY, show_progress=False)
    generated = fast.info["generated_texts"]
    slow = model.attribute(
        PROMPTS,
        generated if architecture == "bart" else None,
        method="custom_saliency",
        generation_args={} if architecture == "bart" else GREEDY,
        single_forward=False,
        show_progress=False,
    )
    assert max_abs_difference(fast, slow) < TOL


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "bart"])
def test_forced_targets_and_attribution_positions(attribution_models, architecture):
    model = attribution_models(architecture)
    source = "The capital of France is"
    forced = "Paris, and the capital of Italy is Rome." if architecture == "bart" else source + " Paris, and Rome."
    expected, actual = attribute_both(model, source, generated_texts=forced)
    assert max_abs_difference(expected, actual) < TOL
    start = 3 if architecture == "bart" else len(model.encode(source).input_ids[0]) + 1
    expected, actual = attribute_both(
        model, source, generated_texts=forced, attr_pos_start=start, attr_pos_end=start + 3
    )
    assert actual.sequence_attributions[0].attr_pos_start == expected.sequence_attributions[0].attr_pos_start
    assert actual.sequence_attributions[0].attr_pos_end == expected.sequence_attributions[0].attr_pos_end
    assert max_abs_difference(expected, actual) < TOL


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
def test_probability_step_scores(attribution_models, architecture):
    model = attribution_models(architecture)
    expected, actual = attribute_both(model, PROMPTS, generation_args=GREEDY, step_scores=["probability"])
    for exp_seq, act_seq in zip(expected.sequence_attributions, actual.sequence_attributions, strict=True):
        torch.testing.assert_close(act_seq.step_scores["probability"], exp_seq.step_scores["probability"])
        assert bool((act_seq.step_scores["probability"] > 0).all())
    assert max_abs_difference(expected, actual) < TOL


@pytest.mark.parametrize("generation_args", [{"num_beams": 3}, {"do_sample": True, "top_k": 20}])
def test_beam_search_and_sampling_attributed_as_forced_targets(attribution_models, generation_args):
    model = attribution_models("gpt2")
    torch.manual_seed(0)
    actual = model.attribute(
        PROMPTS[0],
        method="custom_saliency",
        generation_args={"max_new_tokens": 5, **generation_args},
        show_progress=False,
    )
    generated = actual.info["generated_texts"]
    expected = model.attribute(PROMPTS[0], generated, method="saliency", show_progress=False)
    assert expected.info["generated_texts"] == generated
    assert max_abs_difference(expected, actual) < TOL


def test_encoder_decoder_batch_with_targets_of_different_lengths(attribution_models):
    """Finished sequences are filtered out of a step and put back as NaN rows, as inseq does."""
    model = attribution_models("bart")
    targets = ["Paris.", "The capital of Italy is Rome, and the capital of France is Paris."]
    expected, actual = attribute_both(model, PROMPTS, generated_texts=targets, attribute_target=True)
    lengths = [seq.source_attributions.shape[1] for seq in actual.sequence_attributions]
    assert lengths[0] < lengths[1]
    assert max_abs_difference(expected, actual) < TOL

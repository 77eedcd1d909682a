"""Step scores of the attention methods (one captured pass) equal the ones inseq computes for a gradient method."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY, PROMPTS
from inseq.attr.step_functions import STEP_SCORES_MAP, StepFunctionArgs

from inseq_ext.attr.pass_step_scores import split_step_scores

# inseq's registered step functions that read only their step's logits, and this package's logprob.
STEP_SCORES = ["probability", "logprob", "entropy", "logit"]
# inseq computes these two only for batches of several sequences (see test_single_sequence_crossentropy).
BATCH_ONLY_STEP_SCORES = ["crossentropy", "perplexity"]


def top_logit(args: StepFunctionArgs) -> torch.Tensor:
    """A custom step function: left to inseq, which runs its own forward pass per step for it."""
    return args.forward_output.logits[:, -1].max(-1).values


@pytest.fixture(scope="module")
def custom_step_function():
    inseq.register_step_function(top_logit, "test_top_logit", overwrite=True)
    yield "test_top_logit"
    STEP_SCORES_MAP.pop("test_top_logit", None)


@pytest.mark.parametrize(
    "architecture, method",
    [
        ("llama", "rotary_attention"),
        ("gpt2", "attention_rollout"),
        ("bart", "attention_rollout"),
        ("t5", "rotary_attention"),
    ],
)
def test_equal_to_a_gradient_methods_step_scores(architecture, method, attribution_models, custom_step_function):
    """Same generation, forced: each step score equals inseq's for ``saliency`` (a forward pass per step there).

    The second sequence stops two tokens early, so finished steps (NaN in inseq) are checked too.
    """
    model = attribution_models(architecture)
    generated = model.attribute(PROMPTS, generation_args=GREEDY, show_progress=False).info["generated_texts"]
    forced = [generated[0], generated[1].rsplit(" ", 2)[0]]
    names = [*STEP_SCORES, custom_step_function]
    ours = model.attribute(PROMPTS, forced, method=method, step_scores=names, show_progress=False)
    reference = model.attribute(PROMPTS, forced, method="saliency", step_scores=names, show_progress=False)
    assert ours.info["step_scores"] == names
    for seq_ours, seq_ref in zip(ours.sequence_attributions, reference.sequence_attributions, strict=True):
        assert list(seq_ours.step_scores) == names
        for name in names:
            torch.testing.assert_close(seq_ours.step_scores[name], seq_ref.step_scores[name], rtol=1e-5, atol=1e-5)
    lengths = [len(sequence.step_scores["probability"]) for sequence in ours.sequence_attributions]
    assert lengths[1] == lengths[0] - 2
    # inseq attributes generations (not forced ones) of decoder-only models batched: crossentropy and perplexity too.
    batched = {"generation_args": GREEDY, "step_scores": BATCH_ONLY_STEP_SCORES, "show_progress": False}
    ours = model.attribute(PROMPTS, method=method, **batched)
    reference = model.attribute(PROMPTS, method="saliency", **batched)
    for seq_ours, seq_ref in zip(ours.sequence_attributions, reference.sequence_attributions, strict=True):
        for name in BATCH_ONLY_STEP_SCORES:
            torch.testing.assert_close(seq_ours.step_scores[name], seq_ref.step_scores[name], rtol=1e-5, atol=1e-5)


def test_single_sequence_crossentropy(attribution_models):
    """inseq's crossentropy fails on one sequence (it squeezes the target id to a scalar); served here, it works."""
    model = attribution_models("gpt2")
    with pytest.raises(ValueError, match="batch_size"):
        model.attribute(PROMPTS[0], generation_args=GREEDY, step_scores=["crossentropy"], show_progress=False)
    names = ["logprob", *BATCH_ONLY_STEP_SCORES]
    out = model.attribute(
        PROMPTS[0], method="attention_rollout", generation_args=GREEDY, step_scores=names, show_progress=False
    )
    scores = out.sequence_attributions[0].step_scores
    torch.testing.assert_close(scores["crossentropy"], -scores["logprob"])
    torch.testing.assert_close(scores["perplexity"], 2 ** scores["crossentropy"])  # inseq's definition


def test_show_displays_the_probability_row(attribution_models):
    model = attribution_models("gpt2")
    out = model.attribute(
        PROMPTS[0], method="rotary_attention", generation_args=GREEDY, step_scores=["probability"], show_progress=False
    )
    probabilities = out.sequence_attributions[0].step_scores["probability"]
    assert probabilities.shape == (GREEDY["max_new_tokens"],) and ((probabilities > 0) & (probabilities < 1)).all()
    html = out.show(display=False, return_html=True)
    assert "probability" in html
    # inseq prints the step scores with three decimals under the heatmap.
    assert all(f"{float(value):.3f}" in html for value in probabilities)


def test_split_between_the_pass_and_inseq():
    assert split_step_scores(["probability", "mc_dropout_prob_avg", "logprob", "custom"]) == (
        ["probability", "logprob"],
        ["mc_dropout_prob_avg", "custom"],
    )


@pytest.mark.parametrize("method", ["rotary_attention", "attention_rollout"])
def test_both_paths_give_the_same_attributions(method, attribution_models):
    """Decoder-only without step scores: inseq's final-step path (one call); with them: the per-step path."""
    model = attribution_models("qwen3")
    attribution_method = model.get_attribution_method(method)
    assert attribution_method.is_final_step_method is False  # as inseq reads it before the call: no refusal
    one_call = model.attribute(PROMPTS, method=method, generation_args=GREEDY, show_progress=False)
    generated = one_call.info["generated_texts"]
    per_step = model.attribute(PROMPTS, method=method, generation_args=GREEDY, step_scores=["probability"],
                               show_progress=False)  # fmt: skip
    assert per_step.info["generated_texts"] == generated and attribution_method.is_final_step_method is False
    for first, second in zip(one_call.sequence_attributions, per_step.sequence_attributions, strict=True):
        assert first.step_scores == {} and list(second.step_scores) == ["probability"]
        torch.testing.assert_close(first.target_attributions, second.target_attributions, equal_nan=True)
        assert [token.token for token in first.target] == [token.token for token in second.target]

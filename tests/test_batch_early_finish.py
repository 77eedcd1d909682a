"""Batched generation where one sequence ends before the other (inseq 0.7.1's own methods fail there)."""

from __future__ import annotations

import inseq
import pytest
import torch

from inseq_ext.tiny_models import build_model

PROMPTS = ["Hello", "The first president of America is"]


@pytest.fixture(scope="module")
def early_stopping_gpt2():
    """Tiny GPT-2 and generation arguments with an end token that stops the first prompt only, at once."""
    for seed in range(20):  # the first seed whose first greedy token for prompt 0 never appears for prompt 1
        model, tokenizer = build_model("gpt2", seed=seed)
        attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
        encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        generated = model.generate(**encoded, max_new_tokens=12, do_sample=False)[:, encoded.input_ids.shape[1] :]
        stop = int(generated[0, 0])
        if stop not in generated[1].tolist():
            return attribution_model, {"max_new_tokens": 12, "do_sample": False, "eos_token_id": stop}
    raise AssertionError("no seed gives an early-stopping generation")


def test_inseq_saliency_fails_on_early_finish(early_stopping_gpt2):
    """Documents the inseq 0.7.1 bug this package works around (update the test if inseq fixes it)."""
    model, generation_args = early_stopping_gpt2
    with pytest.raises(AttributeError, match="sources"):
        model.attribute(PROMPTS, method="saliency", generation_args=generation_args, show_progress=False)


@pytest.mark.parametrize("single_forward", [True, False])
def test_each_sequence_equals_its_attribution_alone(early_stopping_gpt2, single_forward):
    model, generation_args = early_stopping_gpt2
    out = model.attribute(
        PROMPTS,
        generation_args=generation_args,
        step_scores=["probability"],
        single_forward=single_forward,
        show_progress=False,
    )
    short, long = out.info["generated_texts"]
    new_tokens = [
        len(model.encode(t).input_ids[0]) - len(model.encode(p).input_ids[0])
        for p, t in zip(PROMPTS, (short, long), strict=True)
    ]
    assert new_tokens[0] < new_tokens[1]
    assert [len(seq.step_scores["probability"]) for seq in out.sequence_attributions] == new_tokens
    for prompt, generated, seq in zip(PROMPTS, out.info["generated_texts"], out.sequence_attributions, strict=True):
        alone = model.attribute(prompt, generated, method="saliency", step_scores=["probability"], show_progress=False)
        assert [t.token for t in seq.target] == [t.token for t in alone[0].target]
        expected, actual = alone.aggregate()[0], seq.aggregate()
        assert not actual.target_attributions.isnan().all()
        assert torch.equal(expected.target_attributions.isnan(), actual.target_attributions.isnan())
        assert (expected.target_attributions - actual.target_attributions).nan_to_num().abs().max() < 1e-5
        torch.testing.assert_close(actual.step_scores["probability"], expected.step_scores["probability"])

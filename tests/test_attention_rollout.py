"""attention_rollout: equals a direct rollout of the eager model's ``output_attentions``, on every family."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY, PROMPTS
from test_model_unchanged import assert_same_state, model_state

from inseq_ext.attr.attention_rollout import residual_attention
from inseq_ext.tiny_models import DECODER_ONLY_ARCHITECTURES, ENCODER_DECODER_ARCHITECTURES, build_model

TOLERANCE = 1e-5


def mixed(attention: torch.Tensor) -> torch.Tensor:
    """Reference ``rownorm(0.5 * mean_heads(A) + 0.5 * I)`` of one layer's ``(batch, heads, q, k)`` weights."""
    average = attention.mean(1).nan_to_num()  # padding queries of left-padded rows: never reached from real rows
    identity = torch.eye(average.shape[-2], average.shape[-1])
    result = 0.5 * average + 0.5 * identity
    return result / result.sum(-1, keepdim=True)


def eager_forward(eager_attribution_model, sources, targets):
    """The eager model's ``output_attentions`` on exactly the batch inseq builds for these texts."""
    inputs = (sources, targets) if eager_attribution_model.is_encoder_decoder else targets
    batch = eager_attribution_model.formatter.prepare_inputs_for_attribution(eager_attribution_model, inputs)
    with torch.no_grad():
        output = eager_attribution_model.get_forward_output(batch, output_attentions=True, use_cache=False)
    return batch, output


@pytest.mark.parametrize("architecture", DECODER_ONLY_ARCHITECTURES)
def test_decoder_only_equals_direct_rollout_of_eager_attentions(architecture, tiny_models, eager_models):
    """Left-padded batch of two prompts, 5 greedy tokens: R = A~_L ... A~_1 from the eager weights, row t - 1."""
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    assert sdpa_model.config._attn_implementation == "sdpa"
    out = inseq.load_model(sdpa_model, "attention_rollout", tokenizer=tokenizer).attribute(
        PROMPTS, generation_args=GREEDY, show_progress=False
    )
    generated = out.info["generated_texts"]
    batch, output = eager_forward(inseq.load_model(eager_model, "attention", tokenizer=tokenizer), PROMPTS, generated)
    padding = (batch.attention_mask == 0).sum(-1)
    assert padding.any(), "the batch must be left-padded"
    rollout = torch.eye(batch.attention_mask.shape[1])
    for attention in output.attentions:
        rollout = mixed(attention) @ rollout
    for idx, sequence in enumerate(out.sequence_attributions):
        scores, pad = sequence.target_attributions, int(padding[idx])
        assert scores.shape == (len(sequence.target), GREEDY["max_new_tokens"])
        for column, step in enumerate(range(sequence.attr_pos_start, sequence.attr_pos_end)):
            expected = rollout[idx, pad + step - 1, pad : pad + step]
            assert (scores[:step, column] - expected).abs().max() < TOLERANCE, (idx, step)
            assert scores[step:, column].isnan().all()
            assert abs(float(scores[:step, column].sum()) - 1.0) < 1e-5  # a distribution over the prefix
    # Token-level output: inseq's default aggregation leaves the scores as they are.
    aggregated = out.aggregate().sequence_attributions[0].target_attributions
    torch.testing.assert_close(aggregated, out.sequence_attributions[0].target_attributions, equal_nan=True)


@pytest.mark.parametrize("architecture", ENCODER_DECODER_ARCHITECTURES)
def test_encoder_decoder_equals_direct_rollout_of_eager_attentions(architecture, tiny_models, eager_models):
    """Encoder rollout E; per decoder layer (X, T) <- A~self (X, T), then (0.5 X + 0.5 C E, 0.5 T), start X=0, T=I."""
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    ours = inseq.load_model(sdpa_model, "attention_rollout", tokenizer=tokenizer)
    out = ours.attribute(PROMPTS, generation_args=GREEDY, attribute_target=True, show_progress=False)
    generated = out.info["generated_texts"]
    eager = inseq.load_model(eager_model, "attention", tokenizer=tokenizer)
    batch, output = eager_forward(eager, PROMPTS, generated)
    assert not batch.sources.attention_mask.all(), "the sources must be padded"
    encoder = torch.eye(batch.sources.attention_mask.shape[1])
    for attention in output.encoder_attentions:
        encoder = mixed(attention) @ encoder
    n_target = batch.targets.attention_mask.shape[1]
    source_share, target_share = torch.zeros(2, n_target, encoder.shape[-1]), torch.eye(n_target).repeat(2, 1, 1)
    for self_attention, cross_attention in zip(output.decoder_attentions, output.cross_attentions, strict=True):
        step_matrix = mixed(self_attention)
        source_share, target_share = step_matrix @ source_share, step_matrix @ target_share
        source_share = 0.5 * source_share + 0.5 * cross_attention.mean(1) @ encoder
        target_share = 0.5 * target_share
    source_only = ours.attribute(PROMPTS, generated, attribute_target=False, show_progress=False)
    for idx, sequence in enumerate(out.sequence_attributions):
        n_source = len(sequence.source)
        assert sequence.source_attributions.shape == (n_source, len(sequence.target) - 1)
        for column, step in enumerate(range(sequence.attr_pos_start, sequence.attr_pos_end)):
            expected_source = source_share[idx, step - 1, :n_source]
            expected_target = target_share[idx, step - 1, :step]
            assert (sequence.source_attributions[:, column] - expected_source).abs().max() < TOLERANCE, (idx, step)
            assert (sequence.target_attributions[:step, column] - expected_target).abs().max() < TOLERANCE
            # Source and target shares of a row together sum to 1 (padding keys get nothing).
            total = sequence.source_attributions[:, column].sum() + sequence.target_attributions[:step, column].sum()
            assert abs(float(total) - 1.0) < 1e-5
            assert float(source_share[idx, step - 1, n_source:].abs().sum()) == 0.0
        # Without attribute_target: the same source shares, no target attributions.
        alone = source_only.sequence_attributions[idx]
        assert alone.target_attributions is None
        torch.testing.assert_close(alone.source_attributions, sequence.source_attributions)


def test_residual_attention_formula():
    """0.5 A + 0.5 I, rows renormalised: a query seeing no key (all-zero row) keeps only itself."""
    attention = torch.tensor([[[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 0.0]]])
    expected = torch.tensor([[[1.0, 0.0, 0.0], [0.125, 0.875, 0.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(residual_attention(attention), expected)
    # Rows of chosen positions only: the identity's column is the row's position.
    rows = residual_attention(attention[:, 1:2], torch.tensor([1]))
    torch.testing.assert_close(rows, expected[:, 1:2])


def test_rollout_of_a_hand_made_two_layer_model():
    """Two layers, three tokens, one head: the product of the mixed matrices, read at each step's row."""
    first = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    second = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    rollout = (0.5 * second + 0.5 * torch.eye(3)) @ (0.5 * first + 0.5 * torch.eye(3))
    # Row 2 by hand: 0.5 * (second row 2 = token 1) + 0.5 * (token 2), each through the first layer's mix.
    by_hand = 0.5 * torch.tensor([0.25, 0.75, 0.0]) + 0.5 * torch.tensor([0.1, 0.15, 0.75])
    torch.testing.assert_close(rollout[2], by_hand)
    assert torch.allclose(rollout.sum(-1), torch.ones(3))


def test_show_step_scores_and_model_unchanged():
    model, tokenizer = build_model("qwen2")
    model.model.layers[0].mlp.train()
    attribution_model = inseq.load_model(model, "attention_rollout", tokenizer=tokenizer)
    model.model.layers[0].mlp.train()  # inseq puts the model in eval mode when it loads it
    before = model_state(model)
    out = attribution_model.attribute(
        PROMPTS, generation_args=GREEDY, step_scores=["probability"], show_progress=False
    )
    assert_same_state(before, model)
    assert model.config._attn_implementation == "sdpa"
    html = out.show(display=False, return_html=True)
    assert "<table" in html and "probability" in html
    probability = out.sequence_attributions[0].step_scores["probability"]
    assert probability.shape == (GREEDY["max_new_tokens"],) and (probability > 0).all()

    def fail(module, args, output):
        raise RuntimeError("boom inside the attention pass")

    handle = model.model.layers[-1].register_forward_hook(fail)
    try:
        before = model_state(model)
        with pytest.raises(RuntimeError, match="boom"):
            attribution_model.attribute(PROMPTS, out.info["generated_texts"], show_progress=False)
        assert_same_state(before, model)
    finally:
        handle.remove()

"""Query/key attention on encoder-decoders (BART, Marian, mBART, T5): inseq's ``attention`` numbers without eager."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY, PROMPTS
from inseq.attr import FeatureAttribution

from inseq_ext import capture_queries_keys
from inseq_ext.tiny_models import ENCODER_DECODER_ARCHITECTURES

TOLERANCE = 1e-5
ATTRIBUTIONS = ("source_attributions", "target_attributions")


def assert_close_outputs(ours, reference) -> float:
    """Same tensors (shapes, NaN pattern, values to 1e-5) in attributions and sequence scores; returns the max diff."""
    worst = 0.0
    for seq_ours, seq_ref in zip(ours.sequence_attributions, reference.sequence_attributions, strict=True):
        assert seq_ours.sequence_scores.keys() == seq_ref.sequence_scores.keys()
        pairs = [(name, getattr(seq_ours, name), getattr(seq_ref, name)) for name in ATTRIBUTIONS]
        pairs += [(name, seq_ours.sequence_scores[name], value) for name, value in seq_ref.sequence_scores.items()]
        for name, a, b in pairs:
            assert (a is None) == (b is None), name
            if a is None:
                continue
            assert a.shape == b.shape, (name, a.shape, b.shape)
            assert torch.equal(a.isnan(), b.isnan()), name
            worst = max(worst, float((a - b).nan_to_num().abs().max()))
    assert worst < TOLERANCE
    return worst


@pytest.mark.parametrize("attribute_target", [True, False], ids=["attribute_target", "source_only"])
@pytest.mark.parametrize("architecture", ENCODER_DECODER_ARCHITECTURES)
def test_equals_inseq_attention_on_eager_copy(architecture, attribute_target, tiny_models, eager_models):
    """Cross-attention, decoder and encoder self-attention (layers x heads) as inseq's ``attention`` reads them."""
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    assert sdpa_model.config._attn_implementation == "sdpa"
    ours = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer)
    reference = inseq.load_model(eager_model, "attention", tokenizer=tokenizer)
    kwargs = {"attribute_target": attribute_target, "show_progress": False}
    out = ours.attribute(PROMPTS, generation_args=GREEDY, **kwargs)  # batched (inseq's attention: one at a time)
    ref = reference.attribute(PROMPTS, generation_args=GREEDY, **kwargs)
    assert out.info["generated_texts"] == ref.info["generated_texts"]
    assert_close_outputs(out, ref)
    expected_scores = {"encoder_self_attentions"} | (set() if attribute_target else {"decoder_self_attentions"})
    first = out.sequence_attributions[0]
    assert set(first.sequence_scores) == expected_scores
    layers, heads = sdpa_model.config.num_hidden_layers, sdpa_model.config.num_attention_heads
    assert first.source_attributions.shape == (len(first.source), len(first.target) - 1, layers, heads)
    # Every step's cross-attention row is a distribution over the source, per layer and head.
    sums = first.source_attributions.sum(0)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    # Aggregated view (mean over layers and heads) too.
    for seq_ours, seq_ref in zip(out.aggregate(), ref.aggregate(), strict=True):
        assert (seq_ours.source_attributions - seq_ref.source_attributions).abs().max() < TOLERANCE


def test_one_sdpa_pass_serves_every_step(tiny_models, monkeypatch):
    """No eager attention: the model's SDPA kernel runs once per attention module for the whole attribution."""
    model, tokenizer = tiny_models("t5")
    attribution_model = inseq.load_model(model, "rotary_attention", tokenizer=tokenizer)
    generated = attribution_model.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    out = attribution_model.attribute(PROMPTS, generated.info["generated_texts"], show_progress=False)
    layers = model.config.num_layers
    assert len(calls) == 3 * layers  # encoder self-, decoder self- and cross-attention, one pass
    assert out.sequence_attributions[0].source_attributions.shape[1] == len(out.sequence_attributions[0].target) - 1


@pytest.mark.parametrize("architecture", ["bart", "t5"])
def test_capture_during_cached_generation(architecture, tiny_models, eager_models):
    """Encoder once, then one decoder position per step (cross keys computed once, reused from the cache)."""
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert not encoded.attention_mask.all()
    reference = eager_model.generate(
        **encoded, max_new_tokens=4, do_sample=False, output_attentions=True, return_dict_in_generate=True
    )
    with capture_queries_keys(sdpa_model) as capture:
        sequences = sdpa_model.generate(**encoded, max_new_tokens=4, do_sample=False, use_cache=True)
    assert torch.equal(sequences, reference.sequences)
    assert capture.query_length("encoder") == encoded.input_ids.shape[1]
    assert len(capture) == capture.query_length("cross") == len(reference.decoder_attentions)
    real_sources = encoded.attention_mask.bool()
    encoder = capture.attention(stack="encoder")
    for layer, expected in enumerate(reference.encoder_attentions):
        assert (encoder[:, layer] - expected).abs().amax(dim=(1, 3))[real_sources].max() < TOLERANCE
    decoder, cross = capture.attention(stack="decoder"), capture.attention(stack="cross")
    for step, (self_layers, cross_layers) in enumerate(
        zip(reference.decoder_attentions, reference.cross_attentions, strict=True)
    ):
        for layer in range(len(self_layers)):
            assert (decoder[:, layer, :, step : step + 1, : step + 1] - self_layers[layer]).abs().max() < TOLERANCE
            assert (cross[:, layer, :, step : step + 1] - cross_layers[layer]).abs().max() < TOLERANCE


def test_every_package_method_on_a_tiny_marian_model(tiny_models):
    """What inseq's generic method tests ask of every registered method on Marian, for this package's methods.

    inseq's tests (``test_attribute_seq2seq``, ``test_batched_attribution_consistency_seq2seq``) run each method with
    generated or forced targets, single or batched inputs, with and without ``attribute_target`` and ``step_scores``
    (``scripts/inseq_generic_method_tests.py`` runs them unchanged, 54 cases per method, with stand-in models); a
    few of those cases here, for every method this package registers.
    """
    model, tokenizer = tiny_models("marian")
    attribution_model = inseq.load_model(model, "saliency", tokenizer=tokenizer)
    ours = sorted(
        name for name, cls in FeatureAttribution.available_classes().items() if cls.__module__.startswith("inseq_ext")
    )
    assert {"rotary_attention", "attention_rollout", "custom_saliency"} <= set(ours)
    references = attribution_model.attribute(PROMPTS, generation_args=GREEDY, show_progress=False).info[
        "generated_texts"
    ]
    for method in ours:
        forced = {"method": method, "attribute_target": True, "step_scores": ["probability"], "show_progress": False}
        batch = attribution_model.attribute(PROMPTS, references, **forced)
        single = attribution_model.attribute(PROMPTS[0], references[0], **forced)
        assert batch.info["attribution_method"] == method and batch.info["step_scores"] == ["probability"]
        first, alone = batch.sequence_attributions[0], single.sequence_attributions[0]
        assert list(first.step_scores) == ["probability"], method
        torch.testing.assert_close(first.step_scores["probability"], alone.step_scores["probability"])
        torch.testing.assert_close(first.source_attributions, alone.source_attributions, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            first.target_attributions, alone.target_attributions, atol=1e-5, rtol=0, equal_nan=True
        )

"""rotary_attention: attention rebuilt from queries and keys equals the eager model's ``output_attentions``."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY, PROMPTS
from test_model_unchanged import assert_same_state, model_state
from transformers import GPTJConfig, GPTJForCausalLM, PegasusConfig, PegasusForConditionalGeneration

from inseq_ext import capture_queries_keys
from inseq_ext.attr.query_key_capture import rebuild_attention
from inseq_ext.tiny_models import build_model

ROTARY_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt_neox", "phi"]
TOLERANCE = 1e-5


def left_padded(tokenizer, prompts=PROMPTS):
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    assert not encoded.attention_mask.all(), "the prompts must need left padding"
    return encoded


@pytest.mark.parametrize("architecture", [*ROTARY_FAMILIES, "gpt2"])
def test_inseq_output_equals_inseq_attention_on_eager_model(architecture, tiny_models, eager_models):
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    assert sdpa_model.config._attn_implementation == "sdpa"
    assert torch.equal(next(sdpa_model.parameters()), next(eager_model.parameters()))
    ours = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer)
    reference = inseq.load_model(eager_model, "attention", tokenizer=tokenizer)
    out = ours.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    ref = reference.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    assert out.info["generated_texts"] == ref.info["generated_texts"]
    n_layers, n_heads = sdpa_model.config.num_hidden_layers, sdpa_model.config.num_attention_heads
    for seq_ours, seq_ref in zip(out.sequence_attributions, ref.sequence_attributions, strict=True):
        raw, expected = seq_ours.target_attributions, seq_ref.target_attributions
        assert raw.shape == expected.shape and raw.shape[1:] == (GREEDY["max_new_tokens"], n_layers, n_heads)
        assert torch.equal(raw.isnan(), expected.isnan())
        assert (raw - expected).nan_to_num().abs().max() < TOLERANCE
        # Each step's row is a distribution over its prefix, for every layer and head.
        sums = raw.nan_to_num().sum(0)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    # Aggregated ("mean group" view): inseq's default aggregation, the mean over layers and heads.
    for seq_ours, seq_ref in zip(out.aggregate(), ref.aggregate(), strict=True):
        assert (seq_ours.target_attributions - seq_ref.target_attributions).nan_to_num().abs().max() < TOLERANCE
    first = out.sequence_attributions[0]
    mean_group = first.target_attributions.mean(dim=(-2, -1))
    assert torch.allclose(out.aggregate()[0].target_attributions, mean_group, equal_nan=True)


def test_attributed_step_range_and_uneven_generations(tiny_models, eager_models):
    """attr_pos_end and forced generations of different lengths: inseq's numbers, per sequence."""
    sdpa_model, tokenizer = tiny_models("qwen2")
    eager_model, _ = eager_models("qwen2")
    ours = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer)
    reference = inseq.load_model(eager_model, "attention", tokenizer=tokenizer)
    full = ours.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    generated = full.info["generated_texts"]
    # Every generated token but the last two (inseq attributes such calls one sequence at a time).
    part = ours.attribute(PROMPTS, generated, attr_pos_end=-2, show_progress=False)
    expected = reference.attribute(PROMPTS, generated, attr_pos_end=-2, show_progress=False)
    for seq_ours, seq_ref, seq_full in zip(
        part.sequence_attributions, expected.sequence_attributions, full.sequence_attributions, strict=True
    ):
        assert seq_ours.target_attributions.shape[1] == GREEDY["max_new_tokens"] - 2
        assert (seq_ours.target_attributions - seq_ref.target_attributions).nan_to_num().abs().max() < TOLERANCE
        # The same steps as the first columns of the full run (prefix rows beyond them are NaN there).
        n_prefix, n_steps = seq_ours.target_attributions.shape[:2]
        assert torch.allclose(
            seq_ours.target_attributions, seq_full.target_attributions[:n_prefix, :n_steps], atol=1e-6, equal_nan=True
        )
    # One sequence ends two tokens early: each sequence gets exactly what it gets alone.
    uneven = [generated[0], generated[1].rsplit(" ", 2)[0]]
    both = ours.attribute(PROMPTS, uneven, show_progress=False)
    for idx in range(2):
        alone = ours.attribute(PROMPTS[idx], uneven[idx], show_progress=False)
        torch.testing.assert_close(
            both.sequence_attributions[idx].target_attributions,
            alone.sequence_attributions[0].target_attributions,
            equal_nan=True,
        )


@pytest.mark.parametrize("architecture", [*ROTARY_FAMILIES, "gpt2"])
def test_capture_during_cached_generation_matches_eager_attentions(architecture, tiny_models, eager_models):
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    encoded = left_padded(tokenizer)
    new_tokens = 4
    reference = eager_model.generate(
        **encoded, max_new_tokens=new_tokens, do_sample=False, output_attentions=True, return_dict_in_generate=True
    )
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in sdpa_model.modules())
    with capture_queries_keys(sdpa_model) as capture:
        sequences = sdpa_model.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, use_cache=True)
    assert hooks_before == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in sdpa_model.modules())
    assert torch.equal(sequences, reference.sequences)
    prompt_length = encoded.input_ids.shape[1]
    assert len(capture) == sequences.shape[1] - 1  # the last token is never fed back
    rebuilt = capture.attention()  # padding from the mask generate() passed
    real_queries = encoded.attention_mask.bool()
    for step, per_layer in enumerate(reference.attentions):
        for layer, expected in enumerate(per_layer):
            if step == 0:  # prefill: all prompt positions, compared on real (non-padding) queries
                ours = rebuilt[:, layer, :, :prompt_length, :prompt_length]
                difference = (ours - expected).abs().amax(dim=(1, 3))[real_queries]
            else:  # one cached decoding step: the row of the newest position
                position = prompt_length + step - 1
                difference = rebuilt[:, layer, :, position : position + 1, : position + 1] - expected
            assert difference.abs().max() < TOLERANCE, (step, layer)

    # The same rows from one forward pass over the final sequences (what the inseq method does).
    full_mask = torch.cat([encoded.attention_mask, torch.ones(2, new_tokens - 1, dtype=torch.long)], dim=1)
    # Positions as generate() counts them (from the first real token): GPT-2's absolute positions depend on it.
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), capture_queries_keys(sdpa_model) as one_pass:
        sdpa_model(input_ids=sequences[:, :-1], attention_mask=full_mask, position_ids=positions, use_cache=False)
    generated_rows = torch.arange(prompt_length - 1, sequences.shape[1] - 1)
    assert torch.allclose(
        one_pass.attention(generated_rows), capture.attention(generated_rows, attention_mask=full_mask), atol=1e-5
    )


@pytest.mark.parametrize(
    "architecture, size, config_changes",
    [
        ("llama", {"kv_heads": 1}, {}),  # multi-query attention: one key head for all query heads
        ("qwen2", {"heads": 8, "kv_heads": 2}, {}),  # four query heads per key head
        ("mistral", {}, {"sliding_window": 3}),
    ],
    ids=["multi-query", "grouped-query-4", "sliding-window"],
)
def test_head_sharing_and_sliding_window(architecture, size, config_changes):
    sdpa_model, tokenizer = build_model(architecture, **size)
    eager_model, _ = build_model(architecture, attn_implementation="eager", **size)
    for model in (sdpa_model, eager_model):
        for key, value in config_changes.items():
            setattr(model.config, key, value)
    encoded = left_padded(tokenizer)
    with torch.no_grad():
        expected = eager_model(**encoded, output_attentions=True).attentions
        with capture_queries_keys(sdpa_model) as capture:
            sdpa_model(**encoded)
    rebuilt = capture.attention()
    real = encoded.attention_mask.bool()
    for layer, weights in enumerate(expected):
        assert (rebuilt[:, layer] - weights).abs().amax(dim=(1, 3))[real].max() < TOLERANCE
    if config_changes:  # the window really masks something: no weight beyond it
        window = config_changes["sliding_window"]
        far = torch.ones(rebuilt.shape[-2:], dtype=torch.bool).tril(-window)
        assert rebuilt[..., far].abs().max() == 0


def test_bfloat16_model():
    """Scores are rebuilt in float32 from the model's bfloat16 queries and keys; eager bfloat16 is near them."""
    sdpa_model, tokenizer = build_model("qwen3")
    eager_model, _ = build_model("qwen3", attn_implementation="eager")
    sdpa_model, eager_model = sdpa_model.to(torch.bfloat16), eager_model.to(torch.bfloat16)
    out = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer).attribute(
        PROMPTS, generation_args=GREEDY, show_progress=False
    )
    ref = inseq.load_model(eager_model, "attention", tokenizer=tokenizer).attribute(
        PROMPTS, out.info["generated_texts"], show_progress=False
    )
    for seq_ours, seq_ref in zip(out.sequence_attributions, ref.sequence_attributions, strict=True):
        difference = (seq_ours.target_attributions.float() - seq_ref.target_attributions.float()).nan_to_num()
        assert difference.abs().max() < 2e-2  # bfloat16 has ~3 significant digits


def test_rebuild_attention_formula():
    """softmax(q k^T * s + mask) on hand-made tensors, with a key head shared by two query heads."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(1, 2, 3, 4, generator=generator)
    keys = torch.randn(1, 1, 3, 4, generator=generator)
    mask = torch.tensor([[0, 1, 1]])
    weights = rebuild_attention(queries, keys, scaling=0.5, query_positions=torch.tensor([1, 2]), attention_mask=mask)
    for head in range(2):
        scores = queries[0, head, 2] @ keys[0, 0].T * 0.5
        expected_last = torch.softmax(scores[1:], dim=-1)
        assert torch.allclose(weights[0, head, 1], torch.cat([torch.zeros(1), expected_last]), atol=1e-6)
        assert torch.allclose(weights[0, head, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_show_renders_and_options(tiny_models):
    model, tokenizer = tiny_models("llama")
    out = inseq.load_model(model, "rotary_attention", tokenizer=tokenizer).attribute(
        PROMPTS, generation_args=GREEDY, show_progress=False
    )
    html = out.show(display=False, return_html=True)
    assert "<table" in html
    generated_token = out[1].target[-1].token.replace("\u0120", " ").strip()
    assert generated_token in html


def test_unsupported_models_raise_clear_errors(tiny_models):
    _, tokenizer = tiny_models("bart")
    pegasus = PegasusForConditionalGeneration(
        PegasusConfig(d_model=32, encoder_layers=1, decoder_layers=1, vocab_size=len(tokenizer), pad_token_id=0)
    )
    supported = "Supported families: bart, gpt2, gpt_neox, llama, mistral, phi, qwen2, qwen3, t5"
    with pytest.raises(ValueError, match=f"'pegasus'.*{supported} \\(encoder-decoders: bart, t5\\)"):
        inseq.load_model(pegasus, "rotary_attention", tokenizer=tokenizer)
    gptj = GPTJForCausalLM(GPTJConfig(n_embd=32, n_layer=1, n_head=4, rotary_dim=4, vocab_size=64, n_positions=64))
    with pytest.raises(ValueError, match=supported):
        with capture_queries_keys(gptj):
            pass
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gptj.modules()) == 0


def test_beam_search_inside_capture_is_refused(tiny_models):
    model, tokenizer = tiny_models("llama")
    encoded = left_padded(tokenizer)
    with pytest.raises(ValueError, match="beam search"), capture_queries_keys(model):
        model.generate(**encoded, max_new_tokens=6, num_beams=3, do_sample=False)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_inseq_method_after_beam_search(tiny_models, eager_models):
    """The method reads the final sequences, so inseq's beam-search generation is fine (unlike the capture)."""
    sdpa_model, tokenizer = tiny_models("llama")
    eager_model, _ = eager_models("llama")
    beams = {**GREEDY, "num_beams": 3}
    out = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer).attribute(
        PROMPTS, generation_args=beams, show_progress=False
    )
    ref = inseq.load_model(eager_model, "attention", tokenizer=tokenizer).attribute(
        PROMPTS, generation_args=beams, show_progress=False
    )
    assert out.info["generated_texts"] == ref.info["generated_texts"]
    for seq_ours, seq_ref in zip(out.sequence_attributions, ref.sequence_attributions, strict=True):
        assert (seq_ours.target_attributions - seq_ref.target_attributions).nan_to_num().abs().max() < TOLERANCE


def test_two_generate_calls_in_one_capture_are_refused(tiny_models):
    model, tokenizer = tiny_models("qwen2")
    encoded = left_padded(tokenizer)
    with pytest.raises(ValueError, match="several generate"), capture_queries_keys(model):
        model.generate(**encoded, max_new_tokens=2, do_sample=False)
        model.generate(**encoded, max_new_tokens=2, do_sample=False)
    with pytest.raises(ValueError, match="without a KV cache"), capture_queries_keys(model):
        model.generate(**encoded, max_new_tokens=2, do_sample=False, use_cache=False)
    with pytest.raises(ValueError, match="batch size changed"), capture_queries_keys(model), torch.no_grad():
        model(**encoded, use_cache=True)
        model(input_ids=encoded.input_ids[:1], use_cache=True)


def test_model_unchanged_after_success_and_failure():
    model, tokenizer = build_model("qwen3")
    model.model.layers[0].mlp.train()
    next(model.parameters()).requires_grad_(False)
    attribution_model = inseq.load_model(model, "rotary_attention", tokenizer=tokenizer)
    model.model.layers[0].mlp.train()  # inseq puts the model in eval mode when it loads it
    before = model_state(model)
    out = attribution_model.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    assert len(out.sequence_attributions) == 2
    assert_same_state(before, model)

    def fail_in_last_layer(module, args, output):
        if fail_in_last_layer.armed:
            raise RuntimeError("boom inside the attention pass")

    fail_in_last_layer.armed = False
    handle = model.model.layers[-1].register_forward_hook(fail_in_last_layer)
    try:
        generated = out.info["generated_texts"]
        before = model_state(model)
        fail_in_last_layer.armed = True
        with pytest.raises(RuntimeError, match="boom"):
            attribution_model.attribute(PROMPTS, generated, show_progress=False)
        assert_same_state(before, model)
    finally:
        handle.remove()

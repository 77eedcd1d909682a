"""attnlrp: agreement with an explicit AttnLRP, conservation, SDPA kept, all families, model unchanged.

Reference. lxt 2.1 (the AttnLRP authors' package) is not the test reference: ``pip install --dry-run lxt==2.1``
would replace torch 2.13.0 by torch 2.14.1 plus CUDA packages (lxt requires open_clip_torch and zennit, which
require torchvision, whose newest release requires torch>=2.14), and with transformers 5 it does not run:
``import lxt.efficient`` fails (``find_pruneable_heads_and_indices`` was removed from transformers.pytorch_utils;
lxt also imports torchvision unconditionally), and once those imports are stubbed its attention patch replaces the
modeling file's ``ALL_ATTENTION_FUNCTIONS`` by a plain dict, on which transformers 5 calls ``get_interface``
(AttributeError). The reference is therefore :mod:`attnlrp_reference`, an explicit float64 propagation of relevance
tensors with the paper's rules; ``scripts/crosscheck_lxt.py`` compares with lxt itself by working around the above
(not in CI).
"""

from __future__ import annotations

import inseq
import pytest
import torch
from attnlrp_reference import explicit_attnlrp
from conftest import GREEDY, PROMPTS
from test_model_unchanged import assert_same_state, logit_failing_at_second_call, model_state
from transformers import (
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from inseq_ext.adapters import get_adapter, resolve_module
from inseq_ext.attr.attnlrp_rules import attnlrp_model_types
from inseq_ext.tiny_models import ARCHITECTURES, ENCODER_DECODER_ARCHITECTURES, build_model

PROMPT, FORCED = "Hello ladies and", "Hello ladies and gentlemen, I am"
# float32 method vs float64 reference, relative to the largest relevance of the step (observed: <= 3e-6).
REFERENCE_TOLERANCE = 2e-5
#: Tiny architectures whose family attnlrp supports (T5 is refused: test_unsupported_family_names_the_supported_ones).
ATTNLRP_ARCHITECTURES = [name for name in ARCHITECTURES if name in attnlrp_model_types()]


@pytest.fixture(scope="module")
def qwen2_with_biases():
    """Tiny Qwen2 whose q/k/v biases (zero at initialization) are random, so bias absorption is exercised."""
    model, tokenizer = build_model("qwen2")
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith("_proj.bias"):
            param.data.normal_(std=0.5, generator=generator)
    return model, tokenizer


def forced_relevances(model, tokenizer, target: str, **kwargs):
    """attnlrp scores of the forced continuation: ``(ids, first generated position, tokens x steps scores)``."""
    out = inseq.load_model(model, "attnlrp", tokenizer=tokenizer).attribute(
        PROMPT, FORCED, attributed_fn=target, show_progress=False, **kwargs
    )
    sequence = out.sequence_attributions[0]
    ids = torch.tensor([token.id for token in sequence.target])
    return ids, len(sequence.source), sequence.target_attributions


@pytest.fixture(scope="module")
def with_reference(tiny_models, qwen2_with_biases):
    """Cache of ``(architecture, target) -> (model, ids, start, scores, reference per step)``."""
    cache = {}

    def get(architecture: str, target: str):
        if (architecture, target) not in cache:
            model, tokenizer = qwen2_with_biases if architecture == "qwen2" else tiny_models(architecture)
            ids, start, scores = forced_relevances(model, tokenizer, target)
            references = [
                explicit_attnlrp(model, ids[: start + step], int(ids[start + step]), target)
                for step in range(scores.shape[1])
            ]
            cache[architecture, target] = model, tokenizer, ids, start, scores, references
        return cache[architecture, target]

    return get


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("target", ["logit", "probability"])
def test_equals_explicit_attnlrp(architecture, target, with_reference):
    model, tokenizer, ids, start, scores, references = with_reference(architecture, target)
    assert len(references) > 1
    for step, reference in enumerate(references):
        length = start + step
        ours = scores[:length, step].double()
        assert scores[length:, step].isnan().all()
        assert (ours - reference.tokens).abs().max() <= REFERENCE_TOLERANCE * reference.tokens.abs().max()
    assert (sum(abs(reference.bias_absorbed) for reference in references) > 0) == (architecture == "qwen2")
    if target == "probability":
        return
    # Without the rules (plain gradient x input) the scores are far from the reference: the rules are in effect.
    plain = inseq.load_model(model, "input_x_gradient", tokenizer=tokenizer).attribute(
        PROMPT, FORCED, attributed_fn=target, show_progress=False
    )
    plain_scores = plain.sequence_attributions[0].target_attributions.sum(-1)
    assert (plain_scores - scores).nan_to_num().abs().max() > 0.1 * scores.nan_to_num().abs().max()


@pytest.mark.parametrize("target", ["logit", "probability"])
def test_conservation_on_bias_free_llama(target, with_reference):
    """Input relevances sum to the explained output minus what the attention softmaxes absorb.

    Llama blocks have no biases, their norms, SiLU and gate products follow conservative rules, and Llama has no
    position embeddings: every relevance not reaching the input embeddings is the softmax rule's bias term
    (Proposition 3.1), which the reference measures. The identity holds to float32 round-off: within 1e-5 of the
    scale |output| + |absorbed| + sum |R_i| (observed ~1e-7).
    """
    model, _, ids, start, scores, references = with_reference("llama", target)
    with torch.no_grad():
        logits = model(ids[None]).logits[0].double()
    for step, reference in enumerate(references):
        length = start + step
        target_id = int(ids[length])
        position_logits = logits[length - 1]
        if target == "logit":
            explained = position_logits[target_id]
        else:  # the output softmax's rule: p_t (z_t - sum_j p_j z_j)
            probs = position_logits.softmax(-1)
            explained = probs[target_id] * (position_logits[target_id] - (probs * position_logits).sum())
        relevances = scores[:length, step].double()
        # Round-off scale: the float32 model's logits and relevances carry ~1e-7 relative errors.
        scale = abs(explained) + abs(reference.softmax_absorbed) + relevances.abs().sum()
        assert reference.bias_absorbed == 0
        assert abs(reference.output - explained) <= 1e-6 * scale
        assert abs(relevances.sum() + reference.softmax_absorbed - explained) <= 1e-5 * scale


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "bart"])
def test_eager_and_sdpa_give_the_same_scores(architecture, tiny_models, eager_models):
    sdpa_model, tokenizer = tiny_models(architecture)
    eager_model, _ = eager_models(architecture)
    assert sdpa_model.config._attn_implementation == "sdpa" and eager_model.config._attn_implementation == "eager"
    is_bart = architecture == "bart"
    outputs = [
        inseq.load_model(model, "attnlrp", tokenizer=tokenizer).attribute(
            PROMPTS[0] if is_bart else PROMPTS, generation_args=GREEDY, attribute_target=is_bart, show_progress=False
        )
        for model in (sdpa_model, eager_model)
    ]
    for sdpa_seq, eager_seq in zip(outputs[0].sequence_attributions, outputs[1].sequence_attributions, strict=True):
        for field in ("source_attributions", "target_attributions"):
            a, b = getattr(sdpa_seq, field), getattr(eager_seq, field)
            if a is None:
                assert b is None
                continue
            assert torch.equal(a.isnan(), b.isnan())
            assert (a - b).nan_to_num().abs().max() <= 1e-5 * a.nan_to_num().abs().max()


def test_sdpa_kernel_runs_and_eager_attention_does_not(tiny_models, monkeypatch):
    import transformers.models.llama.modeling_llama as modeling_llama

    model, tokenizer = tiny_models("llama")
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return sdpa(*args, **kwargs)

    def no_eager(*args, **kwargs):
        raise AssertionError("attnlrp switched to eager attention")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", no_eager)
    out = inseq.load_model(model, "attnlrp", tokenizer=tokenizer).attribute(
        PROMPT, FORCED, attributed_fn="logit", show_progress=False
    )
    # One forward pass with gradients over the full sequence serves every step: one SDPA call per layer.
    assert calls.count(True) == model.config.num_hidden_layers
    sequence = out.sequence_attributions[0]
    assert sequence.target_attributions.shape[1] == len(sequence.target) - len(sequence.source) > 1


@pytest.mark.parametrize("architecture", ATTNLRP_ARCHITECTURES)
def test_every_family_runs_and_single_forward_equals_per_step(architecture, tiny_models):
    model, tokenizer = tiny_models(architecture)
    attribution_model = inseq.load_model(model, "attnlrp", tokenizer=tokenizer)
    encoder_decoder = architecture in ENCODER_DECODER_ARCHITECTURES
    kwargs = {"attribute_target": True} if encoder_decoder else {}
    texts = ("Hello ladies and", "gentlemen, I am") if encoder_decoder else (PROMPT, FORCED)
    fast = attribution_model.attribute(*texts, show_progress=False, **kwargs)
    # Per-step forward passes (inseq's way) give the same numbers; checked on one family of each layout.
    slow = (
        attribution_model.attribute(*texts, single_forward=False, show_progress=False, **kwargs)
        if architecture in ("llama", "gpt2", "bart")
        else fast
    )
    for field in ("source_attributions", "target_attributions"):
        a, b = getattr(fast[0], field), getattr(slow[0], field)
        if a is None:
            continue
        assert torch.equal(a.isnan(), b.isnan()) and a.nan_to_num().isfinite().all()
        assert (a - b).nan_to_num().abs().max() <= 1e-5 * a.nan_to_num().abs().max()
        assert (a.nan_to_num() < 0).any() and (a.nan_to_num() > 0).any()  # signed relevance


def _covered_modules(model):
    adapter = get_adapter(model)
    spec = adapter.relevance
    stacks = adapter.block_stacks(model)
    blocks = [*(stacks.encoder or ()), *stacks.decoder]
    paths = [(block, path) for block in blocks for path in (*spec.block_norms, *spec.activations)]
    found = [resolve_module(block, path) for block, path in paths]
    found += [resolve_module(model, path) for path in spec.model_norms]
    return {id(module) for module in found if module is not None}


def _tiny_seq2seq(config_class, model_class, **extra):
    config = config_class(
        vocab_size=64,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        decoder_start_token_id=2,
        pad_token_id=0,
        **extra,
    )
    return model_class(config).eval()


@pytest.mark.parametrize("architecture", sorted({*ATTNLRP_ARCHITECTURES, "marian", "mbart"}))
def test_adapter_covers_every_normalization_and_activation(architecture, tiny_models):
    """Every norm and activation module of the family is in its RelevanceSpec (so no rule is silently missing)."""
    if architecture == "marian":
        model = _tiny_seq2seq(MarianConfig, MarianMTModel)
    elif architecture == "mbart":
        model = _tiny_seq2seq(MBartConfig, MBartForConditionalGeneration)
    else:
        model, _ = tiny_models(architecture)
    expected = {
        id(module)
        for module in model.modules()
        if isinstance(module, torch.nn.LayerNorm)
        or type(module).__name__.endswith(("RMSNorm", "Activation"))
        or isinstance(module, torch.nn.SiLU | torch.nn.GELU)
    }
    assert expected and expected == _covered_modules(model)
    if architecture in ("marian", "mbart"):
        # The rules run on these families too: the source relevances are finite and signed.
        ids = torch.tensor([[5, 6, 7, 8, 2]])
        from inseq_ext.attr.attnlrp_rules import install_attnlrp_rules
        from inseq_ext.attr.model_state import preserved_model_state

        with preserved_model_state(model) as hooks:
            install_attnlrp_rules(model, hooks)
            embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
            logits = model(inputs_embeds=embeddings, decoder_input_ids=torch.tensor([[2, 9]])).logits
            logits[0, -1, 3].backward()
        relevance = (embeddings.grad * embeddings).sum(-1)
        assert relevance.isfinite().all() and relevance.abs().sum() > 0


def test_unsupported_family_names_the_supported_ones():
    model = T5ForConditionalGeneration(
        T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    ).eval()
    tokenizer = build_model("bart")[1]
    with pytest.raises(ValueError, match="attnlrp does not support model type 't5'") as error:
        inseq.load_model(model, "attnlrp", tokenizer=tokenizer)
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "bart"):
        assert model_type in str(error.value)
    assert set(attnlrp_model_types()) >= {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi"}


def test_gpt2_eager_path_that_bypasses_the_registry_is_refused():
    model, tokenizer = build_model("gpt2", attn_implementation="eager")
    model.config.reorder_and_upcast_attn = True
    with pytest.raises(ValueError, match="reorder_and_upcast_attn"):
        inseq.load_model(model, "attnlrp", tokenizer=tokenizer)


def registry_state():
    return dict(ALL_ATTENTION_FUNCTIONS._local_mapping)


def test_model_and_attention_registry_unchanged_after_success_and_failure():
    model, tokenizer = build_model("llama")
    model.get_input_embeddings().train()  # a user's state the call must keep
    next(model.parameters()).requires_grad_(False)
    attribution_model = inseq.load_model(model, "attnlrp", tokenizer=tokenizer)
    model.get_input_embeddings().train()
    before, registry_before = model_state(model), registry_state()
    for single_forward in (True, False):
        attribution_model.attribute(
            PROMPTS, generation_args=GREEDY, single_forward=single_forward, show_progress=False
        )
        assert_same_state(before, model)
        assert registry_state() == registry_before

    for single_forward in (True, False):
        with pytest.raises(RuntimeError, match="boom"):
            attribution_model.attribute(
                PROMPTS,
                generation_args=GREEDY,
                attributed_fn=logit_failing_at_second_call(),
                single_forward=single_forward,
                show_progress=False,
            )
        assert_same_state(before, model)
        assert registry_state() == registry_before
    with pytest.raises(ValueError, match="single_forward"):
        attribution_model.attribute(PROMPTS, generation_args=GREEDY, single_forward="yes", show_progress=False)
    assert_same_state(before, model)


def test_batched_left_padded_prompts_equal_one_at_a_time(tiny_models):
    model, tokenizer = tiny_models("qwen2")
    attribution_model = inseq.load_model(model, "attnlrp", tokenizer=tokenizer)
    batched = attribution_model.attribute(PROMPTS, generation_args=GREEDY, show_progress=False)
    for prompt, generated, sequence in zip(
        PROMPTS, batched.info["generated_texts"], batched.sequence_attributions, strict=True
    ):
        alone = attribution_model.attribute(prompt, generated, show_progress=False).sequence_attributions[0]
        a, b = sequence.target_attributions, alone.target_attributions
        assert a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
        assert (a - b).nan_to_num().abs().max() <= 1e-5 * b.nan_to_num().abs().max()


def test_show_and_explorer(tiny_models, tmp_path):
    from inseq_ext import write_explorer

    model, tokenizer = tiny_models("gpt2")
    out = inseq.load_model(model, "attnlrp", tokenizer=tokenizer).attribute(
        PROMPTS, generation_args=GREEDY, step_scores=["probability"], show_progress=False
    )
    assert out.info["attribution_method"] == "attnlrp"
    html = out.show(display=False, return_html=True)
    assert "<table" in html and "probability" in html
    # Token-level output: aggregation keeps the raw signed scores.
    torch.testing.assert_close(out.aggregate()[0].target_attributions, out[0].target_attributions, equal_nan=True)
    path = tmp_path / "attnlrp.html"
    write_explorer(out, path)
    assert path.stat().st_size > 0


def test_bfloat16_model_close_to_float32(tiny_models):
    model, tokenizer = tiny_models("llama")
    bf16_model, _ = build_model("llama")
    bf16_model = bf16_model.to(torch.bfloat16)
    _, _, expected = forced_relevances(model, tokenizer, "logit")
    _, _, actual = forced_relevances(bf16_model, tokenizer, "logit")
    assert actual.dtype == torch.float32 and torch.equal(actual.isnan(), expected.isnan())
    # bf16 keeps ~3 significant digits; observed 0.3% of the largest relevance.
    assert (actual - expected).nan_to_num().abs().max() <= 2e-2 * expected.nan_to_num().abs().max()

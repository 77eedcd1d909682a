"""bfloat16 / float16 models: maps close to the float32 copy's, float32 where precision is needed, no dtype errors."""

from __future__ import annotations

import inseq
import pytest
import torch
from test_model_unchanged import assert_same_state, model_state
from transformers import AutoModelForCausalLM, AutoTokenizer

import inseq_ext
from inseq_ext.attr.model_state import HookSet
from inseq_ext.attr.precision import Float32LinearHead, GradientScale, upcast_logits
from inseq_ext.demo_models import demo_probes
from inseq_ext.evaluation.precision import compare_maps, low_precision_agreement

pytestmark = pytest.mark.usefixtures("single_torch_thread")


METHODS = ["custom_saliency", "block_gradient_x_input", "rotary_attention", "attention_rollout", "attnlrp"]
#: Largest absolute difference of any raw score (every layer, and head, for the multi-dimensional methods) allowed
#: between a low-precision map and its float32 copy's; about 1.5x the largest measured over all 200 probes of
#: each demo model (docs/precision_and_memory.md). custom_saliency and rotary_attention scores lie in [0, 1];
#: raw block_gradient_x_input and attnlrp scores are below 0.025 on these probes, attention_rollout's below 0.4.
MAX_DIFFERENCE = {
    torch.bfloat16: {
        "custom_saliency": 0.07,
        "block_gradient_x_input": 6e-4,
        "rotary_attention": 0.12,
        "attention_rollout": 6e-3,
        "attnlrp": 3.5e-4,
    },
    torch.float16: {
        "custom_saliency": 0.035,
        "block_gradient_x_input": 2e-4,
        "rotary_attention": 0.02,
        "attention_rollout": 7.5e-4,
        "attnlrp": 8e-5,
    },
}


def probe_texts(name: str, per_task: int = 8) -> tuple[list[str], list[str]]:
    """Prompts and forced targets (prompt + true answer) of the first probes of every task of a demo model."""
    counts: dict[str, int] = {}
    prompts, targets = [], []
    for probe in demo_probes(name):
        if counts.get(probe["task"], 0) < per_task:
            counts[probe["task"]] = counts.get(probe["task"], 0) + 1
            prompts.append(probe["prompt"])
            targets.append(probe["prompt"] + probe["answer"])
    return prompts, targets


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_maps_match_float32_maps(name, method):
    prompts, targets = probe_texts(name)
    agreement = low_precision_agreement(inseq_ext.demo_model(name), method, prompts, targets, torch.bfloat16)
    assert agreement.columns >= 80
    assert agreement.top1_rate >= 0.95, agreement
    assert agreement.max_abs_difference <= MAX_DIFFERENCE[torch.bfloat16][method], agreement


@pytest.mark.parametrize("method", ["custom_saliency", "block_gradient_x_input"])
def test_float16_maps_match_float32_maps(method):
    """float16 gradients underflow without loss scaling (top-1 agreement was ~65% before it)."""
    prompts, targets = probe_texts("gpt2", per_task=5)
    agreement = low_precision_agreement(inseq_ext.demo_model("gpt2"), method, prompts, targets, torch.float16)
    assert agreement.top1_rate >= 0.95, agreement
    assert agreement.max_abs_difference <= MAX_DIFFERENCE[torch.float16][method], agreement


@pytest.fixture(scope="module")
def bf16_llama():
    path = inseq_ext.demo_model("llama")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("method", METHODS)
def test_no_dtype_errors_in_inseq_pieces(bf16_llama, method, tmp_path):
    """Step scores, aggregation, show() and save/load work on a bfloat16 model's outputs (all float32)."""
    model, tokenizer = bf16_llama
    before = model_state(model)
    wrapper = inseq.load_model(model, method, tokenizer=tokenizer)
    step_scores = [] if method == "rotary_attention" else ["probability"]
    prompts, targets = probe_texts("llama", per_task=1)
    out = wrapper.attribute(prompts[:2], targets[:2], step_scores=step_scores, show_progress=False)
    for seq in out.sequence_attributions:
        assert seq.target_attributions.dtype == torch.float32
        assert all(score.dtype == torch.float32 for score in seq.step_scores.values())
    assert "<table" in out.show(display=False, return_html=True)
    out.save(tmp_path / "out.json")
    loaded = inseq.FeatureAttributionOutput.load(tmp_path / "out.json")
    assert compare_maps(out, loaded).max_abs_difference <= 1e-6
    assert_same_state(before, model)
    assert model(torch.tensor([[1, 5, 6]])).logits.dtype == torch.bfloat16  # the logits hook is gone


def test_step_function_sees_float32_logits(bf16_llama):
    """probability = softmax in float32 of float32 logits computed from the bf16 hidden states and head weights."""
    model, tokenizer = bf16_llama
    wrapper = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
    prompt, target = "The capital of Norway is", "The capital of Norway is Oslo."
    out = wrapper.attribute(prompt, target, step_scores=["probability"], show_progress=False)
    ids = tokenizer(target, return_tensors="pt").input_ids
    n_prompt = len(tokenizer(prompt).input_ids)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state[0, n_prompt - 1 : -1]
        logits = hidden.float() @ model.lm_head.weight.float().T
    expected = logits.softmax(-1).gather(-1, ids[0, n_prompt:, None]).squeeze(-1)
    torch.testing.assert_close(out[0].step_scores["probability"], expected, atol=1e-6, rtol=1e-5)


def test_upcast_logits_only_for_low_precision_models(tiny_models):
    model, _ = tiny_models("gpt2")  # float32
    hooks = HookSet()
    assert upcast_logits(model, hooks) is False and len(hooks) == 0


def test_gradient_scale_recovers_float16_underflow_and_backs_off_on_overflow():
    x = torch.full((4,), 1e-3, dtype=torch.float16, requires_grad=True)

    def tiny_output():  # d/dx = 1e-8: below float16's smallest subnormal (6e-8); the output is float32, as the
        return (x * 1e-4).float().sum() * 1e-4  # step functions' are (float32 logits)

    (plain,) = torch.autograd.grad(tiny_output(), x)
    assert torch.all(plain == 0)
    scale = GradientScale(torch.float16)
    (scaled,) = torch.autograd.grad(tiny_output() * scale.value, x)
    assert scale.accept((scaled,))
    torch.testing.assert_close(scale.unscale(scaled), torch.full((4,), 1e-8), rtol=1e-2, atol=0)
    assert not scale.accept((torch.tensor([float("inf")], dtype=torch.float16),))
    assert scale.value == GradientScale.INITIAL / GradientScale.REDUCTION
    assert not GradientScale(torch.bfloat16).active and not GradientScale(torch.float32).active


def test_float32_head_matches_float32_arithmetic_in_chunks(monkeypatch):
    """Forward and backward in float32 from bfloat16 weights, several vocabulary chunks, no weight gradient."""
    monkeypatch.setattr(Float32LinearHead, "CHUNK_BYTES", 4 * 16 * 7)  # 7 vocabulary rows per chunk
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(2, 3, 16, dtype=torch.bfloat16, requires_grad=True)
    logits = Float32LinearHead.apply(hidden, head.weight, head.bias)
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, 50)
    reference_hidden = hidden.detach().double().requires_grad_(True)
    reference = reference_hidden @ head.weight.double().T + head.bias.double()
    torch.testing.assert_close(logits.double(), reference, atol=1e-5, rtol=1e-5)
    weights = torch.randn(2, 3, 50)
    (grad,) = torch.autograd.grad((logits * weights).sum(), hidden)
    (reference_grad,) = torch.autograd.grad((reference * weights.double()).sum(), reference_hidden)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.double(), reference_grad.to(torch.bfloat16).double())

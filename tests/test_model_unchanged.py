"""After any call, successful or failed, the user's model is exactly as it was."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY, PROMPTS

from inseq_ext.attr.model_state import count_hooks, preserved_model_state
from inseq_ext.tiny_models import build_model


def model_state(model: torch.nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [count_hooks(m) for m in model.modules()],
        "input_embeddings": model.get_input_embeddings(),
        "output_embeddings": model.get_output_embeddings(),
        "parameters": [p.detach().clone() for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
    }


def assert_same_state(before: dict, model: torch.nn.Module) -> None:
    after = model_state(model)
    for key in ("training", "requires_grad", "hooks", "grads"):
        assert after[key] == before[key], key
    assert after["input_embeddings"] is before["input_embeddings"]
    assert after["output_embeddings"] is before["output_embeddings"]
    assert all(torch.equal(a, b) for a, b in zip(after["parameters"], before["parameters"], strict=True))


@pytest.fixture(params=["gpt2", "llama", "bart"])
def user_model(request):
    """A model in a state a user may leave it in: partly frozen, one submodule in train mode, a hook of theirs."""
    model, tokenizer = build_model(request.param)
    first_param = next(model.parameters())
    first_param.requires_grad_(False)
    model.get_input_embeddings().train()
    user_hook = model.get_input_embeddings().register_forward_hook(lambda *args: None)
    attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
    yield attribution_model, model
    user_hook.remove()


METHODS = ["custom_saliency", "block_gradient_x_input"]


@pytest.mark.parametrize("method", METHODS)
def test_unchanged_after_success(user_model, method):
    attribution_model, model = user_model
    model.eval()  # inseq puts the model in eval mode when it loads it; state is compared from here on
    model.get_input_embeddings().train()
    before = model_state(model)
    for single_forward in (True, False):
        out = attribution_model.attribute(
            PROMPTS, method=method, generation_args=GREEDY, single_forward=single_forward, show_progress=False
        )
        assert len(out.sequence_attributions) == 2
        assert_same_state(before, model)


def logit_failing_at_second_call():
    """A step function (the target's logit) that raises at its second call: an error inside a step, after the
    method has hooked the model."""
    calls = []

    def failing_step_function(args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom at the second step")
        logits = args.attribution_model.output2logits(args.forward_output)
        return logits.gather(-1, args.target_ids.reshape(-1, 1)).squeeze(-1)

    return failing_step_function


@pytest.mark.parametrize("method", METHODS)
def test_unchanged_after_error_inside_a_step(user_model, method):
    attribution_model, model = user_model
    before = model_state(model)
    for single_forward in (True, False):
        with pytest.raises(RuntimeError, match="boom"):
            attribution_model.attribute(
                PROMPTS,
                method=method,
                generation_args=GREEDY,
                attributed_fn=logit_failing_at_second_call(),
                single_forward=single_forward,
                show_progress=False,
            )
        assert_same_state(before, model)


def test_unchanged_after_bad_option(user_model):
    attribution_model, model = user_model
    before = model_state(model)
    with pytest.raises(ValueError, match="norm"):
        attribution_model.attribute(PROMPTS, generation_args=GREEDY, norm="l7", show_progress=False)
    with pytest.raises(ValueError, match="no module at"):
        attribution_model.attribute(
            PROMPTS, method="block_gradient_x_input", blocks="nowhere", generation_args=GREEDY, show_progress=False
        )
    assert_same_state(before, model)


def test_guard_removes_its_hooks_and_restores_flags_on_error():
    model, _ = build_model("gpt2")
    before = model_state(model)
    with pytest.raises(KeyError), preserved_model_state(model) as hooks:
        hooks.forward_hook(model.transformer.h[0], lambda *args: None)
        hooks.forward_pre_hook(model.transformer.h[1], lambda *args: None)
        assert len(hooks) == 2 and not any(p.requires_grad for p in model.parameters())
        model.train()
        model.set_input_embeddings(torch.nn.Embedding(3, 3))
        raise KeyError("fail inside")
    assert_same_state(before, model)

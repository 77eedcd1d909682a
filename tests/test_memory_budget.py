"""Memory budget of the single-forward engine: sizing from ``max_memory``, out-of-memory retries, per-step fallback.

Every constrained or failing run must give the unconstrained run's numbers and leave the model as it was.
"""

from __future__ import annotations

import inseq
import pytest
import torch
from helpers import max_abs_difference
from test_model_unchanged import assert_same_state, model_state

from inseq_ext.attr import memory_budget
from inseq_ext.attr.memory_budget import (
    MemoryPlan,
    default_memory_budget,
    is_out_of_memory,
    parse_memory,
    plan_steps_per_backward,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


PROMPT = "Hello ladies and"
FULL = PROMPT + " gentlemen, I am a member of the Board"  # 9 forced tokens: more than 4 steps per backward


@pytest.fixture(scope="module")
def saliency_model(tiny_models):
    model, tokenizer = tiny_models("llama")
    return inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def reference(saliency_model):
    """The unconstrained run and its plan (default budget: far more than a tiny model needs)."""
    out = saliency_model.attribute(PROMPT, FULL, show_progress=False)
    return out, saliency_model.attribution_method.last_memory_plan


def attribute(model, **kwargs):
    out = model.attribute(PROMPT, FULL, show_progress=False, **kwargs)
    return out, model.attribution_method.last_memory_plan


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (2_000_000_000, 2_000_000_000),
        (1.5e9, 1_500_000_000),
        ("2GB", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("100kb", 100_000),
        ("4096", 4096),
    ],
)
def test_parse_memory_valid_forms(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "2 GBs", "-1GB", 0, -5, True, "", float("nan"), [1]])
def test_parse_memory_rejects_other_values_naming_valid_forms(value):
    with pytest.raises(ValueError, match="valid forms are .*'2GB'.*MiB"):
        parse_memory(value)


def test_bad_max_memory_option_raises_before_any_work(saliency_model, tiny_models):
    with pytest.raises(ValueError, match=r"Invalid max_memory 'two gigs'.*valid forms"):
        saliency_model.attribute(PROMPT, FULL, show_progress=False, max_memory="two gigs")
    model, tokenizer = tiny_models("gpt2")
    blocks = inseq.load_model(model, "block_gradient_x_input", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="Invalid max_memory"):
        blocks.attribute(PROMPT, PROMPT + " gentlemen", show_progress=False, max_memory=-1)


def test_default_budget_is_a_share_of_available_memory():
    budget = default_memory_budget(torch.device("cpu"))
    available = memory_budget.available_memory(torch.device("cpu"))
    assert budget is not None and 0 < budget <= available
    assert budget == int(available * memory_budget.DEFAULT_SHARE["cpu"])


def test_plan_steps_per_backward():
    assert plan_steps_per_backward(None, 10, 1, n_steps=9) == memory_budget.MAX_STEPS_PER_BACKWARD
    assert plan_steps_per_backward(10**9, 10, 1, n_steps=2) == 2  # never more than the steps
    assert plan_steps_per_backward(100 + 3 * 50, 100, 50, n_steps=9) == 3
    assert plan_steps_per_backward(120, 100, 50, n_steps=9) == 1  # the graph exists: at least one step


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to")
    )
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_unconstrained_plan_measures_the_graph(reference):
    _, plan = reference
    assert plan.graph_bytes > 0 and plan.per_step_bytes > 0
    assert plan.steps_per_backward == memory_budget.MAX_STEPS_PER_BACKWARD
    assert plan.events == []


def test_small_budget_sizes_fewer_steps_per_backward(saliency_model, reference):
    expected, full_plan = reference
    budget = full_plan.graph_bytes + 2 * full_plan.per_step_bytes + 1
    out, plan = attribute(saliency_model, max_memory=budget)
    assert plan.budget == budget and plan.steps_per_backward == 2 and not plan.per_step_forward
    assert max_abs_difference(expected, out) <= 1e-6


def test_budget_below_the_graph_falls_back_to_per_step_passes(saliency_model, reference):
    expected, full_plan = reference
    out, plan = attribute(saliency_model, max_memory=full_plan.graph_bytes // 2)
    assert plan.per_step_forward and plan.graph_bytes is None
    assert "outgrew the budget" in plan.events[0]
    assert max_abs_difference(expected, out) <= 1e-6


@pytest.mark.parametrize("method", ["attnlrp", "block_gradient_x_input"])
def test_other_single_forward_methods_follow_the_budget(tiny_models, method):
    """attnlrp and block_gradient_x_input run on the same engine: a budget below the graph gives per-step passes
    with the unconstrained numbers, and a bad value is refused the same way."""
    model, tokenizer = tiny_models("llama")
    attribution_model = inseq.load_model(model, method, tokenizer=tokenizer)
    expected, full_plan = attribute(attribution_model)
    out, plan = attribute(attribution_model, max_memory=full_plan.graph_bytes // 2)
    assert full_plan.steps_per_backward == memory_budget.MAX_STEPS_PER_BACKWARD and not full_plan.per_step_forward
    assert plan.per_step_forward and "outgrew the budget" in plan.events[0]
    assert max_abs_difference(expected, out) <= 1e-6
    with pytest.raises(ValueError, match="Invalid max_memory"):
        attribution_model.attribute(PROMPT, FULL, show_progress=False, max_memory="lots")


@pytest.fixture
def failing_grad(monkeypatch):
    """Make ``torch.autograd.grad`` raise out-of-memory errors on chosen calls (``fail(predicate)``)."""
    real_grad = torch.autograd.grad
    calls = []

    def install(should_fail, error=lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        def grad(*args, **kwargs):
            calls.append(kwargs.get("is_grads_batched", False))
            if should_fail(len(calls), kwargs):
                raise error()
            return real_grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", grad)
        return calls

    return install


def test_simulated_out_of_memory_at_first_attempt_retries_with_fewer_steps(saliency_model, reference, failing_grad):
    expected, _ = reference
    calls = failing_grad(lambda n, kwargs: n == 1)
    out, plan = attribute(saliency_model)
    assert calls[0] is True  # the first attempt was a vectorized backward pass
    assert plan.steps_per_backward == 2
    assert plan.events == ["OutOfMemoryError in a backward pass for 4 steps: retrying with 2"]
    assert max_abs_difference(expected, out) <= 1e-6


def test_cpu_allocator_error_in_every_single_forward_backward_ends_in_per_step_passes(
    saliency_model, reference, failing_grad
):
    expected, _ = reference
    cpu_error = lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")  # noqa: E731
    # The engine's backward passes retain the graph; the per-step path's do not (float32 model).
    failing_grad(lambda n, kwargs: kwargs.get("retain_graph", False), error=cpu_error)
    out, plan = attribute(saliency_model)
    assert [event.split(":")[0] for event in plan.events] == [
        "RuntimeError in a backward pass for 4 steps",
        "RuntimeError in a backward pass for 2 steps",
        "RuntimeError in a backward pass for one step",
    ]
    assert plan.per_step_forward
    assert max_abs_difference(expected, out) <= 1e-6


def test_out_of_memory_in_the_forward_pass_falls_back(saliency_model, reference, monkeypatch):
    expected, _ = reference
    model = saliency_model.model
    calls = []

    def exhausted(module, args, output):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError()

    handle = model.model.layers[0].register_forward_hook(exhausted)
    try:
        out, plan = attribute(saliency_model)
    finally:
        handle.remove()
    assert plan.per_step_forward and "out of memory in the single forward pass (MemoryError)" in plan.events[0]
    assert max_abs_difference(expected, out) <= 1e-6


def test_out_of_memory_everywhere_raises_with_advice_and_leaves_model_unchanged(saliency_model, failing_grad):
    before = model_state(saliency_model.model)
    failing_grad(lambda n, kwargs: True)
    with pytest.raises(torch.OutOfMemoryError) as info:
        saliency_model.attribute(PROMPT, FULL, show_progress=False)
    assert any("one forward and one backward pass per step" in note for note in info.value.__notes__)
    assert_same_state(before, saliency_model.model)


def test_other_errors_are_not_mistaken_for_out_of_memory(saliency_model, failing_grad):
    before = model_state(saliency_model.model)
    failing_grad(lambda n, kwargs: True, error=lambda: ValueError("a genuine bug"))
    with pytest.raises(ValueError, match="a genuine bug"):
        saliency_model.attribute(PROMPT, FULL, show_progress=False)
    assert_same_state(before, saliency_model.model)


def test_block_gradient_x_input_under_a_small_budget(tiny_models):
    model, tokenizer = tiny_models("gpt2")
    blocks = inseq.load_model(model, "block_gradient_x_input", tokenizer=tokenizer)
    expected = blocks.attribute(PROMPT, FULL, show_progress=False)
    plan: MemoryPlan = blocks.attribution_method.last_memory_plan
    budget = plan.graph_bytes + plan.per_step_bytes + 1
    constrained = blocks.attribute(PROMPT, FULL, show_progress=False, max_memory=budget)
    assert blocks.attribution_method.last_memory_plan.steps_per_backward == 1
    assert max_abs_difference(expected, constrained) <= 1e-6
    per_step = blocks.attribute(PROMPT, FULL, show_progress=False, max_memory="1KB")
    assert blocks.attribution_method.last_memory_plan.per_step_forward
    assert max_abs_difference(expected, per_step) <= 1e-6

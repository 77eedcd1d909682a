"""Models placed by accelerate (offloaded to CPU or disk, dispatched with a device map): same numbers as the plain
model, for every method of the package, and the model comes back with accelerate's hooks and none of ours."""

from __future__ import annotations

import inseq
import pytest
import torch
from accelerate import cpu_offload, disk_offload, dispatch_model
from accelerate.utils.modeling import get_state_dict_offloaded_model
from conftest import GREEDY, PROMPTS
from transformers import AutoModelForCausalLM

import inseq_ext
from inseq_ext import capture_queries_keys
from inseq_ext.attr.model_state import count_hooks, is_dispatched
from inseq_ext.inseq_compat import without_inseq_compat
from inseq_ext.tiny_models import build_model

STYLES = ("cpu_offload", "disk_offload", "dispatch_model")
# (method, options): custom_saliency on both gradient engines, block gradient x input, rebuilt attention, AttnLRP
# (whose norm rule reads offloaded norm weights).
CASES = (
    ("custom_saliency", {"single_forward": True}),
    ("custom_saliency", {"single_forward": False}),
    ("block_gradient_x_input", {}),
    ("rotary_attention", {}),
    ("attnlrp", {}),
)


def offload_device_map(model: torch.nn.Module) -> dict[str, str]:
    """Every top-level piece on the CPU, except the second block, offloaded to disk."""
    stack_name = "model" if hasattr(model, "model") else "transformer"
    stack = getattr(model, stack_name)
    device_map = {}
    for name, child in stack.named_children():
        if isinstance(child, torch.nn.ModuleList):
            device_map.update(
                {f"{stack_name}.{name}.{idx}": "disk" if idx == 1 else "cpu" for idx in range(len(child))}
            )
        else:
            device_map[f"{stack_name}.{name}"] = "cpu"
    return {**device_map, "lm_head": "cpu"}


def place(style: str, model: torch.nn.Module, folder) -> torch.nn.Module:
    if style == "cpu_offload":
        return cpu_offload(model, execution_device="cpu")
    if style == "disk_offload":
        return disk_offload(model, str(folder), execution_device="cpu")
    return dispatch_model(model, device_map=offload_device_map(model), offload_dir=str(folder))


def dispatch_state(model: torch.nn.Module) -> dict:
    """What must survive a call: accelerate's hooks and forwards, our hooks (none), flags, devices, the weights."""
    return {
        "accelerate_hooks": [getattr(module, "_hf_hook", None) for module in model.modules()],
        "forwards": [module.__dict__.get("forward") for module in model.modules()],
        "torch_hooks": [count_hooks(module) for module in model.modules()],
        "training": [module.training for module in model.modules()],
        "requires_grad": [param.requires_grad for param in model.parameters()],
        "devices": [param.device for param in model.parameters()],
        "weights": get_state_dict_offloaded_model(model),
    }


def assert_same_dispatch_state(before: dict, model: torch.nn.Module) -> None:
    after = dispatch_state(model)
    assert all(a is b for a, b in zip(after["accelerate_hooks"], before["accelerate_hooks"], strict=True))
    assert all(a is b for a, b in zip(after["forwards"], before["forwards"], strict=True))
    for key in ("torch_hooks", "training", "requires_grad", "devices"):
        assert after[key] == before[key], key
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(after["weights"][name], before["weights"][name]) for name in before["weights"])


def assert_same_attributions(out, reference, atol: float = 1e-6) -> None:
    assert len(out.sequence_attributions) == len(reference.sequence_attributions)
    for seq, ref in zip(out.sequence_attributions, reference.sequence_attributions, strict=True):
        assert [token.id for token in seq.target] == [token.id for token in ref.target]
        torch.testing.assert_close(
            seq.target_attributions, ref.target_attributions, atol=atol, rtol=1e-5, equal_nan=True
        )


@pytest.fixture(scope="module")
def references():
    """Attributions of the plain (undispatched) tiny models, per architecture and case."""
    cache: dict = {}

    def get(architecture: str, case: int):
        if (architecture, case) not in cache:
            hf_model, tokenizer = build_model(architecture)
            model = inseq.load_model(hf_model, "custom_saliency", tokenizer=tokenizer)
            method, options = CASES[case]
            cache[architecture, case] = model.attribute(
                PROMPTS, method=method, generation_args=GREEDY, show_progress=False, **options
            )
        return cache[architecture, case]

    return get


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_same_numbers_and_model_unchanged(architecture, style, tmp_path, references):
    hf_model, tokenizer = build_model(architecture)
    hf_model = place(style, hf_model, tmp_path)
    assert is_dispatched(hf_model)
    assert any(param.device.type == "meta" for param in hf_model.parameters())  # weights really are offloaded
    model = inseq.load_model(hf_model, "custom_saliency", tokenizer=tokenizer)
    before = dispatch_state(hf_model)
    for case, (method, options) in enumerate(CASES):
        out = model.attribute(PROMPTS, method=method, generation_args=GREEDY, show_progress=False, **options)
        assert_same_attributions(out, references(architecture, case))
        assert_same_dispatch_state(before, hf_model)


def test_inseq_alone_cannot_load_an_offloaded_model(tmp_path):
    # inseq moves a model without hf_device_map with .to(device): offloaded weights are on the meta device.
    hf_model, tokenizer = build_model("gpt2")
    hf_model = place("cpu_offload", hf_model, tmp_path)
    with without_inseq_compat(), pytest.raises(NotImplementedError, match="meta tensor"):
        inseq.load_model(hf_model, "saliency", tokenizer=tokenizer)


def test_unchanged_after_an_error_inside_a_step(tmp_path):
    hf_model, tokenizer = build_model("llama")
    hf_model = place("cpu_offload", hf_model, tmp_path)
    model = inseq.load_model(hf_model, "custom_saliency", tokenizer=tokenizer)
    before = dispatch_state(hf_model)

    def failing_step_function(args):
        raise RuntimeError("boom inside a step")

    for method in ("custom_saliency", "block_gradient_x_input"):
        with pytest.raises(RuntimeError, match="boom"):
            model.attribute(
                PROMPTS,
                method=method,
                generation_args=GREEDY,
                attributed_fn=failing_step_function,
                show_progress=False,
            )
        assert_same_dispatch_state(before, hf_model)


def test_query_key_capture_around_generate(tmp_path):
    plain, tokenizer = build_model("llama")
    offloaded = place("disk_offload", build_model("llama")[0], tmp_path)
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    weights = []
    for hf_model in (plain, offloaded):
        with capture_queries_keys(hf_model) as capture:
            sequences = hf_model.generate(**inputs, **GREEDY)
        weights.append((sequences, capture.attention()))
    assert torch.equal(weights[0][0], weights[1][0])
    torch.testing.assert_close(weights[1][1], weights[0][1], atol=1e-6, rtol=1e-5)
    assert all(count_hooks(module) == 0 for module in offloaded.modules())


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_demo_model_loaded_with_an_offload_device_map(name, tmp_path):
    """The user's path: ``from_pretrained(device_map=..., offload_folder=...)`` (accelerate's hooks, disk offload)."""
    path = inseq_ext.demo_model(name)
    plain = inseq.load_model(path, "custom_saliency")
    device_map = offload_device_map(plain.model)
    hf_model = AutoModelForCausalLM.from_pretrained(path, device_map=device_map, offload_folder=str(tmp_path))
    assert is_dispatched(hf_model) and hf_model.hf_device_map == device_map
    model = inseq.load_model(hf_model, "custom_saliency", tokenizer=path)
    before = dispatch_state(hf_model)
    for method in ("custom_saliency", "block_gradient_x_input", "rotary_attention", "saliency"):
        args = {"method": method, "generation_args": {"max_new_tokens": 5}, "show_progress": False}
        out = model.attribute("The first president of America is", **args)
        assert_same_attributions(out, plain.attribute("The first president of America is", **args), atol=1e-5)
        assert_same_dispatch_state(before, hf_model)

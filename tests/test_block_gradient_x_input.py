"""block_gradient_x_input: per-layer values against captum/inseq, layout, selection, picture, errors."""

from __future__ import annotations

import inseq
import matplotlib.image
import pytest
import torch
from conftest import GREEDY, PROMPTS

from inseq_ext import BlockGradientXInputAttribution
from inseq_ext.adapters import get_adapter
from inseq_ext.attr.block_gradient_x_input import BlockGradientXInputSequenceOutput
from inseq_ext.views.viz import plot_layer_heatmap

SOURCE = "The first president of America is"
# The logit gives gradients of order one on random tiny models, so absolute tolerances mean something.
ATTRIBUTED_FN = "logit"


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within 1e-5 absolute (the requirement) and within 1e-4 of the reference's scale (random tiny models give
    small gradients, so the absolute bound alone would be loose)."""
    assert torch.equal(actual.isnan(), expected.isnan())
    scale = expected.nan_to_num().abs().max().item()
    assert scale > 0
    difference = (actual - expected).nan_to_num().abs().max().item()
    assert difference <= 1e-5 and difference <= 1e-4 * scale, (difference, scale)


def forced_text(architecture: str) -> str:
    return "George Washington." if architecture == "bart" else SOURCE + " George Washington."


def scores(seq, architecture):
    return seq.source_attributions if architecture == "bart" else seq.target_attributions


@pytest.fixture(scope="module")
def block_outputs(attribution_models):
    cache = {}

    def get(architecture: str, single_forward: bool | None = None):
        key = (architecture, single_forward)
        if key not in cache:
            model = attribution_models(architecture)
            cache[key] = model.attribute(
                SOURCE,
                forced_text(architecture),
                method="block_gradient_x_input",
                attributed_fn=ATTRIBUTED_FN,
                single_forward=single_forward,
                show_progress=False,
            )
        return cache[key]

    return get


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "qwen2", "gpt_neox", "bart"])
def test_each_layer_equals_captum_layer_gradient_x_activation(tiny_models, block_outputs, architecture):
    model, tokenizer = tiny_models(architecture)
    ours = scores(block_outputs(architecture)[0], architecture)
    adapter = get_adapter(model)
    blocks_path = adapter.encoder_blocks if architecture == "bart" else adapter.decoder_blocks
    n_blocks = len(
        adapter.block_stacks(model).encoder if architecture == "bart" else adapter.block_stacks(model).decoder
    )
    assert ours.shape[-1] == n_blocks + 1
    for layer in range(n_blocks):
        reference_model = inseq.load_model(
            model, "layer_gradient_x_activation", tokenizer=tokenizer, target_layer=f"{blocks_path}.{layer}"
        )
        reference = reference_model.attribute(
            SOURCE, forced_text(architecture), attributed_fn=ATTRIBUTED_FN, show_progress=False
        )
        expected = scores(reference[0], architecture).sum(-1)  # captum's scores summed over the hidden size
        assert_close_to_reference(ours[..., layer + 1], expected)


@pytest.mark.parametrize("architecture", ["gpt2", "mistral", "phi", "qwen3", "bart"])
def test_embedding_entry_equals_input_x_gradient(attribution_models, block_outputs, architecture):
    model = attribution_models(architecture)
    reference = model.attribute(
        SOURCE, forced_text(architecture), method="input_x_gradient", attributed_fn=ATTRIBUTED_FN, show_progress=False
    )
    expected = scores(reference[0], architecture).sum(-1)
    assert_close_to_reference(scores(block_outputs(architecture)[0], architecture)[..., 0], expected)


def test_decoder_blocks_for_target_prefix_match_a_manual_backward(tiny_models, attribution_models):
    """Encoder-decoder with attribute_target: target-prefix scores come from the decoder's blocks."""
    model, tokenizer = tiny_models("bart")
    out = attribution_models("bart").attribute(
        SOURCE,
        "George Washington.",
        method="block_gradient_x_input",
        attributed_fn=ATTRIBUTED_FN,
        attribute_target=True,
        show_progress=False,
    )
    seq = out[0]
    source_ids = tokenizer(SOURCE, return_tensors="pt").input_ids
    target_ids = torch.tensor([[t.id for t in seq.target]])
    step = 3  # predict target token 3 from the prefix of length 3
    recorded = []
    hooks = [
        block.register_forward_hook(
            lambda module, args, output: recorded.append(output[0] if isinstance(output, tuple) else output)
        )
        for block in model.model.decoder.layers
    ]
    try:
        logits = model(input_ids=source_ids, decoder_input_ids=target_ids[:, :step]).logits
        grads = torch.autograd.grad(logits[0, -1, target_ids[0, step]], recorded)
    finally:
        for hook in hooks:
            hook.remove()
    expected = torch.stack([(g * h).sum(-1)[0] for g, h in zip(grads, recorded, strict=True)], dim=-1)
    column = step - seq.attr_pos_start
    assert_close_to_reference(seq.target_attributions[:step, column, 1:], expected)
    assert seq.target_attributions[step:, column].isnan().all()


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
def test_single_forward_and_per_step_paths_agree(block_outputs, architecture):
    fast, slow = block_outputs(architecture, True), block_outputs(architecture, False)
    torch.testing.assert_close(scores(fast[0], architecture), scores(slow[0], architecture), equal_nan=True)


def test_batched_prompts_equal_one_at_a_time(attribution_models):
    """Rotary positions are relative, so left padding does not change a Llama model's scores."""
    model = attribution_models("llama")
    batched = model.attribute(PROMPTS, method="block_gradient_x_input", generation_args=GREEDY, show_progress=False)
    for prompt, generated, seq in zip(PROMPTS, batched.info["generated_texts"], batched, strict=True):
        alone = model.attribute(prompt, generated, method="block_gradient_x_input", show_progress=False)[0]
        rows = slice(seq.target_attributions.shape[0] - alone.target_attributions.shape[0], None)
        assert_close_to_reference(seq.target_attributions[rows], alone.target_attributions)


def test_default_reduction_is_absmax_over_layers_then_normalized(block_outputs):
    seq = block_outputs("gpt2")[0]
    assert isinstance(seq, BlockGradientXInputSequenceOutput)
    # The last block feeds only GPT-2's final LayerNorm: left out of the default reduction.
    assert seq.scale_invariant_layers == {"target_attributions": (seq.target_attributions.shape[-1] - 1,)}
    raw = seq.target_attributions[..., :-1]
    peak = raw.gather(-1, raw.nan_to_num().abs().argmax(-1, keepdim=True)).squeeze(-1)
    expected = peak / peak.nan_to_num().abs().sum(0, keepdim=True)
    torch.testing.assert_close(seq.aggregate().target_attributions, expected, equal_nan=True)


def _norm_epsilon_names(norm: torch.nn.Module) -> list[str]:
    return [name for name in ("eps", "variance_epsilon") if isinstance(getattr(norm, name, None), float)]


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "phi"])
def test_last_block_before_the_final_norm_is_zero_and_left_out(tiny_models, architecture):
    """Gradient x input of a LayerNorm/RMSNorm input is zero (the norm ignores scale): exactly with epsilon 0."""
    from inseq_ext.adapters.base import resolve_module

    model, tokenizer = tiny_models(architecture)
    norm = resolve_module(model, get_adapter(model).final_norm)
    names = _norm_epsilon_names(norm)
    saved = {name: getattr(norm, name) for name in names}
    assert names, type(norm).__name__
    try:
        for name in names:
            setattr(norm, name, 0.0)
        attribution_model = inseq.load_model(model, "block_gradient_x_input", tokenizer=tokenizer)
        out = attribution_model.attribute(
            SOURCE, forced_text(architecture), attributed_fn=ATTRIBUTED_FN, show_progress=False
        )
    finally:
        for name, value in saved.items():
            setattr(norm, name, value)
    seq = out[0]
    raw = seq.target_attributions.nan_to_num()
    last = raw.shape[-1] - 1
    assert seq.scale_invariant_layers == {"target_attributions": (last,)}
    assert raw[..., last].abs().max() <= 1e-5 * raw[..., :last].abs().max()
    assert raw[..., :last].abs().amax(dim=(0, 1)).min() > 0  # the other layers are not zero
    # The default reduction is absmax over the other layers; select_idx still reaches the raw last layer.
    expected = raw[..., :last].gather(-1, raw[..., :last].abs().argmax(-1, keepdim=True)).squeeze(-1)
    aggregated = seq.aggregate(normalize=False).target_attributions.nan_to_num()
    torch.testing.assert_close(aggregated, expected)
    torch.testing.assert_close(seq.aggregate(select_idx=last, normalize=False).target_attributions.nan_to_num(),
                               raw[..., last])  # fmt: skip


def test_no_layer_left_out_without_a_final_norm_or_with_named_blocks(tiny_models, block_outputs):
    assert block_outputs("bart")[0].scale_invariant_layers == {}  # post-norm BART: no norm after the stack
    model, tokenizer = tiny_models("gpt2")
    named = inseq.load_model(model, "block_gradient_x_input", tokenizer=tokenizer, blocks="transformer.h")
    out = named.attribute(SOURCE, forced_text("gpt2"), attributed_fn=ATTRIBUTED_FN, show_progress=False)
    assert out[0].scale_invariant_layers == {}  # named blocks may end anywhere: nothing is assumed


def test_select_one_layer_or_a_range_before_showing(block_outputs):
    out = block_outputs("gpt2")
    raw = out[0].target_attributions
    one = out.aggregate(select_idx=2, normalize=False)[0].target_attributions
    torch.testing.assert_close(one, raw[..., 2], equal_nan=True)
    span = out.aggregate(select_idx=(1, 3), normalize=False)[0].target_attributions
    sub = raw[..., 1:3]
    torch.testing.assert_close(
        span, sub.gather(-1, sub.nan_to_num().abs().argmax(-1, keepdim=True)).squeeze(-1), equal_nan=True
    )
    html = out.show(select_idx=2, display=False, return_html=True)
    assert "<table" in html


def test_show_renders_with_default_reduction(block_outputs):
    html = block_outputs("bart").show(display=False, return_html=True)
    assert "<table" in html


def test_save_and_load_keep_layers_and_default_reduction(block_outputs, tmp_path):
    out = block_outputs("llama")
    out.save(tmp_path / "block.json", overwrite=True)
    loaded = inseq.FeatureAttributionOutput.load(tmp_path / "block.json")
    torch.testing.assert_close(loaded[0].target_attributions, out[0].target_attributions, equal_nan=True)
    torch.testing.assert_close(
        loaded.aggregate()[0].target_attributions, out.aggregate()[0].target_attributions, equal_nan=True
    )
    assert loaded[0].scale_invariant_layers == out[0].scale_invariant_layers == {"target_attributions": (2,)}


@pytest.mark.parametrize("generated_token", [0, -1, "Was"])
def test_layer_heatmap_png(block_outputs, tmp_path, generated_token):
    path = plot_layer_heatmap(block_outputs("gpt2"), generated_token, tmp_path / "layers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100
    assert [p.name for p in tmp_path.iterdir()] == ["layers.png"]  # no temporary file left behind


def test_layer_heatmap_errors(block_outputs, tmp_path):
    out = block_outputs("gpt2")
    with pytest.raises(ValueError, match="not among the generated tokens"):
        plot_layer_heatmap(out, "Paris", tmp_path / "x.png")
    with pytest.raises(ValueError, match="out of range"):
        plot_layer_heatmap(out, 99, tmp_path / "x.png")
    with pytest.raises(ValueError, match="layer axis"):
        plot_layer_heatmap(out.aggregate(), 0, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_explicit_block_paths(tiny_models, block_outputs):
    model, tokenizer = tiny_models("gpt2")
    explicit = inseq.load_model(model, "block_gradient_x_input", tokenizer=tokenizer, blocks="transformer.h")
    out = explicit.attribute(SOURCE, forced_text("gpt2"), attributed_fn=ATTRIBUTED_FN, show_progress=False)
    torch.testing.assert_close(
        out[0].target_attributions, block_outputs("gpt2")[0].target_attributions, equal_nan=True
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"blocks": "transformer.layers"}, r"no module at 'transformer.layers'"),
        ({"blocks": "transformer.wte"}, r"not a non-empty list of blocks"),
        ({"blocks": 3}, r"blocks must be an attribute path"),
    ],
)
def test_bad_block_paths_raise_value_errors(attribution_models, options, message):
    model = attribution_models("gpt2")
    with pytest.raises(ValueError, match=message):
        model.attribute(
            SOURCE, method="block_gradient_x_input", generation_args=GREEDY, show_progress=False, **options
        )


def test_unknown_family_without_blocks_names_the_fix(tiny_models):
    model, tokenizer = tiny_models("gpt2")
    attribution_model = inseq.load_model(model, "saliency", tokenizer=tokenizer)
    original = model.config.model_type
    type(model.config).model_type = "my_new_family"
    try:
        with pytest.raises(ValueError, match=r"my_new_family.*Supported model types.*blocks='path.to.blocks'"):
            attribution_model.attribute(
                SOURCE, method="block_gradient_x_input", generation_args=GREEDY, show_progress=False
            )
    finally:
        type(model.config).model_type = original
    assert isinstance(attribution_model.attribution_method, inseq.attr.FeatureAttribution)
    assert BlockGradientXInputAttribution.method_name in inseq.list_feature_attribution_methods()

"""custom_saliency's norm and normalize options, checked against inseq's raw saliency gradients."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import GREEDY, PROMPTS

from inseq_ext import SaliencyOptions, normalized_saliency


def raw_and_ours(model, **options):
    """inseq's raw (per-dimension, abs) saliency and custom_saliency with ``options`` on the same generation."""
    ours = model.attribute(PROMPTS, method="custom_saliency", generation_args=GREEDY, show_progress=False, **options)
    raw = model.attribute(
        PROMPTS,
        ours.info["generated_texts"] if model.is_encoder_decoder else None,
        method="saliency",
        generation_args={} if model.is_encoder_decoder else GREEDY,
        attribute_target=options.get("attribute_target", False),
        show_progress=False,
    )
    return raw, ours


def expected_scores(raw_seq, norm: float, normalize):
    """Per-token norms of inseq's gradients, normalized over source and target prefix together."""
    parts = [t for t in (raw_seq.source_attributions, raw_seq.target_attributions) if t is not None]
    magnitudes = [torch.linalg.vector_norm(t, ord=norm, dim=-1) for t in parts]  # (tokens, steps)
    if normalize is None:
        return magnitudes
    joint = torch.cat(magnitudes, dim=0).nan_to_num()
    scale = joint.sum(0) if normalize == "sum" else joint.amax(0)
    return [m / scale for m in magnitudes]


@pytest.mark.parametrize("architecture", ["gpt2", "bart"])
@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("normalize", ["sum", "max", None])
def test_norm_and_normalization_values(attribution_models, architecture, norm, normalize):
    model = attribution_models(architecture)
    options = {"norm": norm, "normalize": normalize}
    if architecture == "bart":
        options["attribute_target"] = True
    raw, ours = raw_and_ours(model, **options)
    order = {"l2": 2, "l1": 1, "linf": math.inf}[norm]
    for raw_seq, seq in zip(raw.sequence_attributions, ours.sequence_attributions, strict=True):
        actual = [t for t in (seq.source_attributions, seq.target_attributions) if t is not None]
        for exp, act in zip(expected_scores(raw_seq, order, normalize), actual, strict=True):
            torch.testing.assert_close(act, exp, equal_nan=True, atol=1e-6, rtol=1e-4)
        joint = torch.cat(actual, dim=0).nan_to_num()
        if normalize == "sum":
            torch.testing.assert_close(joint.sum(0), torch.ones(joint.shape[1]))
        elif normalize == "max":
            torch.testing.assert_close(joint.amax(0), torch.ones(joint.shape[1]))
        else:
            assert bool((joint.sum(0) > 0).all()) and not torch.allclose(joint.sum(0), torch.ones(joint.shape[1]))


def test_aggregation_keeps_the_chosen_normalization(attribution_models):
    """inseq's default aggregation must not re-normalize a token-level method's scores."""
    model = attribution_models("gpt2")
    out = model.attribute(
        PROMPTS[0], method="custom_saliency", normalize="max", generation_args=GREEDY, show_progress=False
    )
    aggregated = out.aggregate()[0].target_attributions.nan_to_num()
    torch.testing.assert_close(aggregated, out[0].target_attributions.nan_to_num())
    torch.testing.assert_close(aggregated.amax(0), torch.ones(aggregated.shape[1]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norm": "l3"}, r"Unknown norm 'l3'.*'l2', 'l1', 'linf'"),
        ({"normalize": "softmax"}, r"Unknown normalize 'softmax'.*'sum', 'max', None"),
        ({"single_forward": "yes"}, r"single_forward must be None.*True or False"),
    ],
)
def test_bad_options_raise_clear_value_errors(attribution_models, options, message):
    model = attribution_models("gpt2")
    with pytest.raises(ValueError, match=message):
        model.attribute(PROMPTS, method="custom_saliency", generation_args=GREEDY, show_progress=False, **options)
    with pytest.raises(ValueError, match=message):
        SaliencyOptions(**options)


def test_boolean_normalize_aliases():
    assert SaliencyOptions(normalize=True).normalize == "sum"
    assert SaliencyOptions(normalize=False).normalize is None


def test_normalized_saliency_formula_on_known_gradients():
    gradients = (torch.tensor([[[3.0, 4.0], [0.0, 1.0]]]), torch.tensor([[[-2.0, 0.0]]]))
    l2 = normalized_saliency(gradients, "l2", None)
    torch.testing.assert_close(l2[0], torch.tensor([[5.0, 1.0]]))
    torch.testing.assert_close(l2[1], torch.tensor([[2.0]]))
    summed = normalized_saliency(gradients, "l1", "sum")
    torch.testing.assert_close(torch.cat(summed, 1), torch.tensor([[7.0, 1.0, 2.0]]) / 10)
    maxed = normalized_saliency(gradients, "linf", "max")
    torch.testing.assert_close(torch.cat(maxed, 1), torch.tensor([[4.0, 1.0, 2.0]]) / 4)

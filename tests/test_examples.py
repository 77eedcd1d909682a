"""load_example_model: named model (argument or environment variable) first, then the demo model, then random."""

from __future__ import annotations

import logging

import pytest
import torch

import inseq_ext
from inseq_ext.examples import MODEL_ENV_VAR, load_example_model
from inseq_ext.tiny_models import build_model


@pytest.fixture
def no_demo_model(monkeypatch):
    monkeypatch.delattr(inseq_ext, "demo_model", raising=False)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    hf_model, tokenizer = build_model("llama", seed=3)
    folder = tmp_path_factory.mktemp("saved") / "llama"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, hf_model


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[key], second_state[key]) for key in first_state
    )


def test_random_fallback_says_so(no_demo_model, caplog):
    with caplog.at_level(logging.WARNING, logger="inseq_ext.examples"):
        model = load_example_model("saliency", family="llama")
    assert model.model.config.model_type == "llama"
    assert model.attribution_method.method_name == "saliency"
    assert "random weights" in model.example_description
    assert any("random weights" in record.getMessage() for record in caplog.records)
    # The fallback is the seeded tiny model of that family, at the documented size.
    expected, _ = build_model("llama", hidden=64, layers=4, heads=4)
    assert _same_weights(model.model, expected)


def test_named_model_wins_over_demo_model(monkeypatch, saved_llama):
    folder, hf_model = saved_llama
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    monkeypatch.setattr(
        inseq_ext, "demo_model", lambda family: pytest.fail("demo model must not be loaded"), raising=False
    )
    model = load_example_model("saliency", model=str(folder))
    assert model.example_description == str(folder)
    assert _same_weights(model.model, hf_model)


def test_environment_variable_names_the_model(monkeypatch, saved_llama):
    folder, hf_model = saved_llama
    monkeypatch.delattr(inseq_ext, "demo_model", raising=False)
    monkeypatch.setenv(MODEL_ENV_VAR, str(folder))
    model = load_example_model("saliency", family="gpt2")
    assert model.example_description == str(folder)
    assert model.model.config.model_type == "llama" and _same_weights(model.model, hf_model)


def test_demo_model_used_lazily_with_the_family(monkeypatch, saved_llama):
    folder, hf_model = saved_llama
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    asked = []
    monkeypatch.setattr(inseq_ext, "demo_model", lambda family: asked.append(family) or str(folder), raising=False)
    assert asked == []  # nothing resolved before the call
    model = load_example_model("saliency", family="llama")
    assert asked == ["llama"]
    assert model.example_description == "embedded demo model (llama)"
    assert _same_weights(model.model, hf_model)


def test_unknown_family_is_refused(no_demo_model):
    with pytest.raises(ValueError, match="Unknown model family 'gpt5'.*gpt2, llama"):
        load_example_model("saliency", family="gpt5")


def test_translation_family_demo_model_and_random_stand_in(monkeypatch, no_demo_model):
    """The translation family: its random stand-in is a tiny BART; with demo models, the trained encoder-decoder."""
    model = load_example_model("saliency", family="translation")
    assert model.is_encoder_decoder and model.model.config.model_type == "bart"
    expected, _ = build_model("bart", hidden=64, layers=4, heads=4)
    assert _same_weights(model.model, expected)
    monkeypatch.undo()  # demo models back
    model = load_example_model("saliency", family="translation")
    assert model.example_description == "embedded demo model (translation)"
    assert model.model.config.vocab_size == len(model.tokenizer) and model.is_encoder_decoder

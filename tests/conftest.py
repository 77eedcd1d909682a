"""Session-scoped tiny models: built once from configs (seeded random weights), never downloaded."""

from __future__ import annotations

import logging
import os

import inseq
import pytest
import torch
from helpers import one_torch_thread

import inseq_ext  # noqa: F401  (registers the package's methods)
from inseq_ext.tiny_models import ARCHITECTURES, build_model, build_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
logging.getLogger("inseq").setLevel(logging.ERROR)


def _non_word_token_ids() -> list[int]:
    """Ids of tokens that are not whole space-prefixed words (all tiny models share this vocabulary).

    inseq decodes generations and re-tokenizes them; random byte pieces do not survive that round trip, so the
    greedy test generations below only produce word tokens and keep the number of generated tokens fixed.
    """
    tokenizer = build_tokenizer()
    return sorted(
        idx
        for token, idx in tokenizer.get_vocab().items()
        if not token.startswith("\u0120") or token == "\u0120" or idx in tokenizer.all_special_ids
    )


PROMPTS = ["Hello ladies and", "The first president of America is"]
GREEDY = {"max_new_tokens": 5, "do_sample": False, "suppress_tokens": _non_word_token_ids()}


@pytest.fixture(scope="session")
def tiny_models():
    """Cache of ``architecture -> (hf_model, tokenizer)``; each built on first use."""
    cache: dict[str, tuple] = {}

    def get(architecture: str):
        if architecture not in cache:
            cache[architecture] = build_model(architecture)
        return cache[architecture]

    return get


@pytest.fixture(scope="session")
def eager_models():
    """Cache of ``architecture -> (hf_model, tokenizer)`` with the session's seeded weights and eager attention
    (returns ``output_attentions``: the reference of the attention methods' tests)."""
    cache: dict[str, tuple] = {}

    def get(architecture: str):
        if architecture not in cache:
            cache[architecture] = build_model(architecture, attn_implementation="eager")
        return cache[architecture]

    return get


@pytest.fixture(scope="session")
def attribution_models(tiny_models):
    """Cache of ``architecture -> inseq AttributionModel`` wrapping the tiny model (default method: saliency)."""
    cache: dict[str, inseq.models.AttributionModel] = {}

    def get(architecture: str):
        if architecture not in cache:
            model, tokenizer = tiny_models(architecture)
            cache[architecture] = inseq.load_model(model, "saliency", tokenizer=tokenizer)
        return cache[architecture]

    return get


def pytest_generate_tests(metafunc):
    # Tests taking ``each_architecture`` run once per tiny architecture.
    if "each_architecture" in metafunc.fixturenames:
        metafunc.parametrize("each_architecture", ARCHITECTURES)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the explorer's browser tests (see tests/browser_helpers.py); skipped when missing."""
    from browser_helpers import launched_browser

    with launched_browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def single_torch_thread():
    """For a module's tiny-model tests: ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    with one_torch_thread():
        yield

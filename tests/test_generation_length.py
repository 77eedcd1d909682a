"""Prompts longer than a model can take are refused before generating, with the limit and the length named."""

from __future__ import annotations

from types import SimpleNamespace

import inseq
import pytest

import inseq_ext
from inseq_ext import check_generation_length, cli, context_limit
from inseq_ext.inseq_compat import without_inseq_compat
from inseq_ext.tiny_models import build_model

WORDS = "The first president of America is "


@pytest.fixture(scope="module")
def demos():
    return {name: inseq.load_model(inseq_ext.demo_model(name), "custom_saliency") for name in ("gpt2", "llama")}


def prompt_of(model, tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens as the model's tokenizer encodes it (special tokens included)."""
    text = ""
    while len(model.tokenizer(text + WORDS).input_ids) <= tokens:
        text += WORDS
    for word in WORDS.split():
        candidate = f"{text}{word} "
        if len(model.tokenizer(candidate.rstrip()).input_ids) > tokens:
            break
        text = candidate
    text = text.rstrip()
    assert len(model.tokenizer(text).input_ids) == tokens, (len(model.tokenizer(text).input_ids), tokens)
    return text


def test_context_limit_sources(demos):
    gpt2, llama = context_limit(demos["gpt2"]), context_limit(demos["llama"])
    assert gpt2.tokens == 128 and gpt2.source == "config.n_positions=128, tokenizer.model_max_length=128"
    assert llama.tokens == 128 and "config.max_position_embeddings=128" in llama.source
    hf_model, tokenizer = build_model("llama", max_positions=96)  # tokenizer without a length: config only
    assert tokenizer.model_max_length > 10**20
    assert context_limit(hf_model, tokenizer) == inseq_ext.generation_length.ContextLimit(
        96, "config.max_position_embeddings=96"
    )
    tokenizer.model_max_length = 64  # the smaller of the two wins
    assert context_limit(hf_model, tokenizer).tokens == 64
    no_positions = SimpleNamespace(config=SimpleNamespace(model_type="t5"))
    assert context_limit(no_positions).tokens is None
    assert check_generation_length(no_positions, [10**6], 10**6) == 0  # nothing to check against


def test_boundary_is_exact(demos):
    for model in demos.values():
        prompt = prompt_of(model, 120)
        assert check_generation_length(model, prompt, 8) == 128
        with pytest.raises(ValueError, match=r"needs 129 tokens \(120 \+ 9 new tokens\), over the limit of 128"):
            check_generation_length(model, prompt, 9)
        assert check_generation_length(model, [120, 3], 8) == 128  # token counts work as well
        with pytest.raises(ValueError, match="Prompt 1 with its generation needs 130 tokens"):
            check_generation_length(model, ["Hi", prompt], generation_args={"max_new_tokens": 10})
        assert check_generation_length(model, prompt, generated_texts=prompt_of(model, 128)) == 128
        with pytest.raises(ValueError, match="The prompt with its forced target is 129 tokens, over the limit of 128"):
            check_generation_length(model, prompt, generated_texts=[prompt_of(model, 129)])


def test_encoder_decoder_source_and_target_have_their_own_limits():
    hf_model, tokenizer = build_model("bart", max_positions=40)
    assert check_generation_length(hf_model, [39], 39, tokenizer=tokenizer) == 40  # decoder start + 39
    with pytest.raises(ValueError, match="The prompt is 41 tokens, over the limit of 40"):
        check_generation_length(hf_model, [41], 5, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"needs 41 tokens \(40 new tokens\)"):
        check_generation_length(hf_model, [5], 40, tokenizer=tokenizer)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["custom_saliency", "rotary_attention", "saliency", "integrated_gradients"])
def test_attribute_refuses_before_generating(demos, name, method, monkeypatch):
    model = demos[name]
    calls = []
    monkeypatch.setattr(model.model, "generate", lambda *args, **kwargs: calls.append(1))
    prompt = prompt_of(model, 125)
    with pytest.raises(ValueError, match=r"needs 130 tokens \(125 \+ 5 new tokens\), over the limit of 128 tokens"):
        model.attribute(prompt, method=method, generation_args={"max_new_tokens": 5}, show_progress=False)
    with pytest.raises(ValueError, match=r"forced target is 13\d tokens, over the limit of 128 tokens"):
        model.attribute(prompt, prompt + " George Washington was the first.", method=method, show_progress=False)
    assert calls == []


def test_what_inseq_does_without_the_check(demos):
    # GPT-2's learned positions end at 128: the lookup fails inside generate.
    prompt = prompt_of(demos["gpt2"], 125)
    with without_inseq_compat(), pytest.raises(IndexError, match="index out of range"):
        demos["gpt2"].attribute(prompt, generation_args={"max_new_tokens": 5}, show_progress=False)


def test_cli_reports_one_line(capsys, demos):
    prompt = prompt_of(demos["gpt2"], 125)
    for arguments in (
        ["attribute", prompt, "--max-new-tokens", "5"],
        ["attribute", prompt_of(demos["llama"], 125), "-m", "demo:llama", "--max-new-tokens", "5"],
        ["inseq", "attribute", "-m", "demo:gpt2", "-i", prompt, "--generation_kwargs", '{"max_new_tokens": 5}'],
    ):
        status = cli.main(arguments)
        err = capsys.readouterr().err
        assert status == 2 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("inseq-ext: error:")]
        assert len(lines) == 1 and "130 tokens (125 + 5 new tokens), over the limit of 128 tokens" in lines[0], err

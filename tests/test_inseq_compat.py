"""inseq_ext.inseq_compat: inseq's basic call on tokenizers that add a BOS token, for every registered method.

inseq 0.7.1 alone fails on them (``Forced generations of decoder-only models must start with the input texts``);
with ``import inseq_ext`` the attributed tokens must be the prompt's tokens (one BOS) followed by exactly what
``model.generate`` produced, and nothing may change where inseq already worked (GPT-2).
"""

from __future__ import annotations

import re

import inseq
import pytest
import torch
from conftest import GREEDY
from tokenizers import AddedToken, processors
from transformers import PreTrainedTokenizerFast

import inseq_ext
from inseq_ext import inseq_compat
from inseq_ext.evaluation.ground_truth import EAGER_ATTENTION_METHODS
from inseq_ext.inseq_compat import inseq_compat_installed, install_inseq_compat, without_inseq_compat
from inseq_ext.tiny_models import BOS, EOS, PAD, UNK, build_model, build_tokenizer

PROMPT = "The first president of America is"
PROMPTS = ["The first president of America is", "Hello ladies and"]
BASIC = {"max_new_tokens": 5}

# Fewer integration steps / samples than the defaults: the test checks which tokens are attributed, not scores.
FAST_ARGS = {
    "integrated_gradients": {"n_steps": 4},
    "layer_integrated_gradients": {"n_steps": 4},
    "discretized_integrated_gradients": {"n_steps": 4},
    "sequential_integrated_gradients": {"n_steps": 2},
    "gradient_shap": {"n_samples": 2},
    "lime": {"n_samples": 10},
}

# inseq built-ins that fail on the Llama demo for reasons that have nothing to do with BOS tokens:
# method -> (exception type, message pattern, reason). Each is shown to fail identically on a forced target with
# inseq's own code (compatibility layer off), a path the BOS problem never reached.
UNRELATED_FAILURES = {
    "value_zeroing": (
        TypeError,
        r"unsupported operand type\(s\) for \+: 'Tensor' and 'tuple'",
        "inseq 0.7.1's value-zeroing hook rebuilds a decoder layer's output as a tuple; transformers 5 layers "
        "return a tensor",
    ),
    "lime": (ValueError, "sklearn is not available", "needs scikit-learn, not installed (optional for inseq)"),
    "discretized_integrated_gradients": (
        ImportError,
        "scikit-learn is not available",
        "needs scikit-learn, not installed (optional for inseq)",
    ),
    "reagent": (ImportError, "nltk is required", "needs nltk, not installed (optional for inseq)"),
}

BEGIN_OF_TEXT = "<|begin_of_text|>"


def begin_of_text_tokenizer(special: bool, is_bos: bool) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with ``<|begin_of_text|>`` added as a token and prepended by its post-processor.

    Args:
        special: Add it as a special token (Llama 3 does) or as a plain added token.
        is_bos: Register it as the tokenizer's BOS token; otherwise the BOS stays ``<s>``, which is never added.
    """
    backend = build_tokenizer().backend_tokenizer
    backend.add_tokens([AddedToken(BEGIN_OF_TEXT, special=special, normalized=False)])
    token_id = backend.token_to_id(BEGIN_OF_TEXT)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN_OF_TEXT} $A", pair=f"{BEGIN_OF_TEXT} $A $B", special_tokens=[(BEGIN_OF_TEXT, token_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN_OF_TEXT if is_bos else BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
    )


TOKENIZERS = {
    "<s> registered BOS": lambda: build_tokenizer(add_bos=True),
    "<|begin_of_text|> special, the BOS": lambda: begin_of_text_tokenizer(special=True, is_bos=True),
    "<|begin_of_text|> special, not the BOS": lambda: begin_of_text_tokenizer(special=True, is_bos=False),
    "<|begin_of_text|> plain added token": lambda: begin_of_text_tokenizer(special=False, is_bos=False),
}


def attributed_ids(out) -> list[list[int]]:
    return [[token.id for token in seq.target] for seq in out.sequence_attributions]


def expected_sequences(model, prompts: list[str], generation_args: dict, add_special_tokens: bool = True):
    """What ``model.generate`` produces for the prompts encoded as inseq encodes them: per prompt, its tokens
    without padding followed by the new tokens (inseq's batch) and the prompt length."""
    encoded = model.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    if len(prompts) == 1 and encoded.input_ids.shape[1] > 1 and encoded.input_ids[0, 0] == encoded.input_ids[0, 1]:
        encoded = {name: tensor[:, 1:] for name, tensor in encoded.items()}  # inseq drops a doubled BOS
    with torch.no_grad():
        sequences = model.model.generate(**encoded, **generation_args)
    width = encoded["input_ids"].shape[1]
    result = []
    for row, mask in zip(sequences.tolist(), encoded["attention_mask"].tolist(), strict=True):
        prompt = [idx for idx, keep in zip(row[:width], mask, strict=True) if keep]
        result.append((prompt + row[width:], len(prompt)))
    return result


# --- the basic call on the Llama demo, every registered method ---------------------------------------------------


@pytest.fixture(scope="module")
def llama_demos():
    """The Llama demo model as ``inseq.load_model`` gives it (SDPA attention), and an eager copy for methods that
    read ``output_attentions`` (inseq's ``attention``, as the CLI loads it)."""
    path = inseq_ext.demo_model("llama")
    return {
        "sdpa": inseq.load_model(path, "custom_saliency"),
        "eager": inseq.load_model(path, "custom_saliency", model_kwargs={"attn_implementation": "eager"}),
    }


@pytest.fixture(scope="module")
def llama_demo(llama_demos):
    return llama_demos["sdpa"]


@pytest.fixture(scope="module")
def llama_expected(llama_demo):
    [(sequence, prompt_length)] = expected_sequences(llama_demo, [PROMPT], BASIC)
    return sequence, prompt_length


def test_inseq_alone_fails_on_the_llama_demo(llama_demo):
    with without_inseq_compat(), pytest.raises(AssertionError, match="must start with the input texts"):
        llama_demo.attribute(PROMPT, generation_args=BASIC, show_progress=False)


@pytest.mark.parametrize("method", sorted(inseq.list_feature_attribution_methods()))
def test_basic_call_on_llama_demo(llama_demos, llama_expected, method):
    llama_demo = llama_demos["eager" if method in EAGER_ATTENTION_METHODS else "sdpa"]
    sequence, prompt_length = llama_expected
    tokenizer = llama_demo.tokenizer
    assert sequence.count(tokenizer.bos_token_id) == 1 and sequence[0] == tokenizer.bos_token_id
    assert (
        tokenizer.decode(sequence, skip_special_tokens=True) == "The first president of America is George Washington."
    )
    kwargs = FAST_ARGS.get(method, {})
    try:
        out = llama_demo.attribute(PROMPT, method=method, generation_args=BASIC, show_progress=False, **kwargs)
    except Exception as error:
        if method not in UNRELATED_FAILURES:
            raise
        kind, pattern, reason = UNRELATED_FAILURES[method]
        assert isinstance(error, kind) and re.search(pattern, str(error)), (method, error)
        forced = tokenizer.decode(sequence, skip_special_tokens=True)  # the same tokens, no BOS text involved
        with without_inseq_compat(), pytest.raises(kind, match=pattern):
            llama_demo.attribute(PROMPT, forced, method=method, show_progress=False, **kwargs)
        pytest.xfail(f"{method} is broken for a reason unrelated to BOS tokens: {reason}")
    [seq] = out.sequence_attributions
    assert [token.id for token in seq.target] == sequence  # the BOS once, then exactly model.generate's tokens
    assert seq.attr_pos_start == prompt_length
    assert out.info["generated_texts"][0].startswith(PROMPT)
    scores = seq.target_attributions if seq.target_attributions is not None else seq.source_attributions
    if method == "dummy":  # attributes nothing
        assert scores is None
    else:
        assert scores.shape[:2] == (len(sequence), len(sequence) - prompt_length)


# --- BOS variants: registered special token and added <|begin_of_text|> -----------------------------------------


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def bos_model(request):
    tokenizer = TOKENIZERS[request.param]()
    hf_model, tokenizer = build_model("llama", tokenizer=tokenizer)
    model = inseq.load_model(hf_model, "custom_saliency", tokenizer=tokenizer)
    added = tokenizer("x").input_ids[0]
    # Greedy word tokens only (conftest.GREEDY), and never the added BOS, so texts re-tokenize to the same tokens.
    generation_args = {**GREEDY, "suppress_tokens": sorted({*GREEDY["suppress_tokens"], added})}
    return model, added, generation_args


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["single", "batched"])
@pytest.mark.parametrize("skip_special_tokens", [False, True], ids=["with_bos", "skip_special_tokens"])
def test_generation_attributes_the_generated_tokens(bos_model, prompts, skip_special_tokens):
    model, added, generation_args = bos_model
    expected = expected_sequences(model, prompts, generation_args, add_special_tokens=not skip_special_tokens)
    given = list(prompts)
    out = model.attribute(
        prompts, generation_args=generation_args, skip_special_tokens=skip_special_tokens, show_progress=False
    )
    assert prompts == given  # the caller's list is not edited
    assert attributed_ids(out) == [sequence for sequence, _ in expected]
    for (sequence, prompt_length), seq, text, prompt in zip(
        expected, out.sequence_attributions, out.info["generated_texts"], prompts, strict=True
    ):
        assert sequence.count(added) == (0 if skip_special_tokens else 1)
        assert seq.attr_pos_start == prompt_length and len(sequence) == prompt_length + GREEDY["max_new_tokens"]
        assert text.startswith(prompt) and BEGIN_OF_TEXT not in text and "<s>" not in text


def test_inseq_alone_fails_on_each_variant(bos_model):
    model, _, generation_args = bos_model
    with without_inseq_compat(), pytest.raises(AssertionError, match="must start with the input texts"):
        model.attribute(PROMPTS[:1], generation_args=generation_args, show_progress=False)


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["single", "batched"])
def test_forced_targets(bos_model, prompts):
    model, added, _ = bos_model
    continuations = [" George Washington", " gentlemen"][: len(prompts)]
    targets = [prompt + continuation for prompt, continuation in zip(prompts, continuations, strict=True)]
    expected = [model.tokenizer(target).input_ids for target in targets]
    assert all(ids.count(added) == 1 for ids in expected)
    bos_text = model.tokenizer.decode([added], skip_special_tokens=False)
    with_bos_text = [bos_text + target for target in targets]
    with without_inseq_compat(), pytest.raises(AssertionError, match="must start with the input texts"):
        model.attribute(prompts, with_bos_text, show_progress=False)
    # Forced targets as users write them, and with the BOS string written out (inseq alone refuses the latter).
    for forced in (targets, with_bos_text):
        out = model.attribute(prompts, forced, show_progress=False)
        assert attributed_ids(out) == expected
        for seq, prompt in zip(out.sequence_attributions, prompts, strict=True):
            assert seq.attr_pos_start == len(model.tokenizer(prompt).input_ids)
    # A target that is not a continuation of its prompt is still refused, by inseq's own check.
    with pytest.raises(AssertionError, match="must start with the input texts"):
        model.attribute(prompts, [bos_text + "Something else"] * len(prompts), show_progress=False)


# --- GPT-2: nothing changes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_demo():
    return inseq.load_model(inseq_ext.demo_model("gpt2"), "custom_saliency")


@pytest.mark.parametrize("method", ["custom_saliency", "saliency"])
def test_gpt2_is_unchanged(gpt2_demo, method, monkeypatch):
    repairs = []
    repair = inseq_compat.repair_prompt_prefixes
    monkeypatch.setattr(inseq_compat, "repair_prompt_prefixes", lambda *args: repairs.append(repair(*args)))
    forced = [prompt + " George Washington." for prompt in PROMPTS]
    calls = [
        ((PROMPT,), {"generation_args": BASIC}),
        ((PROMPTS,), {"generation_args": BASIC}),
        ((PROMPTS, forced), {}),
    ]
    for args, kwargs in calls:
        ours = gpt2_demo.attribute(*args, method=method, show_progress=False, **kwargs)
        with without_inseq_compat():
            theirs = gpt2_demo.attribute(*args, method=method, show_progress=False, **kwargs)
        assert ours.info["generated_texts"] == theirs.info["generated_texts"]
        assert attributed_ids(ours) == attributed_ids(theirs)
        for mine, reference in zip(ours.sequence_attributions, theirs.sequence_attributions, strict=True):
            assert torch.equal(mine.target_attributions.nan_to_num(-1), reference.target_attributions.nan_to_num(-1))
    assert repairs == [[]] * len(calls)  # the texts were never rewritten


# --- installation, inseq's CLI -----------------------------------------------------------------------------------


def test_install_is_idempotent_and_reversible():
    patched = [(owner, name) for owner, name, _ in inseq_compat._PATCHES]
    assert {(owner.__name__, name) for owner, name in patched} == {
        ("AttributionModel", "attribute"),
        ("AttributionModel", "validate_attribute_args"),
        ("HuggingfaceModel", "device"),
    }
    wrappers = {key: key[0].__dict__[key[1]] for key in patched}
    install_inseq_compat()
    install_inseq_compat()
    assert inseq_compat_installed()
    for (owner, name), wrapper in wrappers.items():
        assert owner.__dict__[name] is wrapper  # not wrapped twice
        assert not hasattr(wrapper.__wrapped__, "__wrapped__")
    with without_inseq_compat():
        assert not inseq_compat_installed()
        for (owner, name), wrapper in wrappers.items():
            assert owner.__dict__[name] is wrapper.__wrapped__  # inseq's own
    assert inseq_compat_installed()  # reinstalled after the block


def test_inseq_cli_on_the_llama_demo(capsys, tmp_path, llama_expected):
    from inseq_ext import cli

    saved = tmp_path / "out.json"
    status = cli.main(
        ["inseq", "attribute", "-m", "demo:llama", "-a", "custom_saliency", "-i", PROMPT, "--generation_kwargs",
         '{"max_new_tokens": 5}', "--hide", "-o", str(saved)]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    loaded = inseq.FeatureAttributionOutput.load(str(saved))
    assert attributed_ids(loaded) == [llama_expected[0]]
    assert loaded.info["generated_texts"] == ["The first president of America is George Washington.</s>"]

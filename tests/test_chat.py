"""Chat-template prompts: inseq's own call fails on them, attribute_chat attributes exactly the template's tokens."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY

from inseq_ext.chat import (
    ROLE_MARKERS,
    SIMPLE_CHAT_TEMPLATE,
    attribute_chat,
    chat_message_scores,
    data_block_lines,
    data_block_scores,
    ensure_chat_template,
    message_spans,
    render_chat,
    with_chat_template,
)
from inseq_ext.inseq_compat import without_inseq_compat
from inseq_ext.tiny_models import build_model, build_tokenizer

TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Who was the first president of America?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello ladies and"}],
]


@pytest.fixture(scope="module")
def chat_model():
    # A Llama-style tokenizer that prepends <s> itself, while the template also writes it.
    tokenizer = build_tokenizer(add_bos=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = TEMPLATE
    model, tokenizer = build_model("llama", tokenizer=tokenizer)
    return inseq.load_model(model, "saliency", tokenizer=tokenizer)


def test_plain_inseq_call_on_chat_prompts(chat_model):
    tokenizer = chat_model.tokenizer
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS]
    with without_inseq_compat(), pytest.raises(AssertionError, match="must start with the input texts"):
        chat_model.attribute(prompts, generation_args=GREEDY, show_progress=False)
    # With inseq_ext's compatibility layer the call works: the attributed tokens are the tokens inseq encoded for
    # generate (a template writing <s> gets a second one from the tokenizer in a batch; inseq drops it for a single
    # prompt) followed by what the model generated from them. render_chat's text has exactly one.
    rendered = [render_chat(tokenizer, c) for c in CONVERSATIONS]
    for label, texts, n_bos in (
        ("template, batch", prompts, 2),
        ("template, one", prompts[:1], 1),
        ("render_chat", rendered, 1),
    ):
        out = chat_model.attribute(texts, generation_args=GREEDY, show_progress=False)
        for text, seq in zip(texts, out.sequence_attributions, strict=True):
            prompt_ids = tokenizer(text).input_ids
            if len(texts) == 1 and prompt_ids[:2] == [tokenizer.bos_token_id] * 2:
                prompt_ids = prompt_ids[1:]
            assert prompt_ids.count(tokenizer.bos_token_id) == n_bos, label
            with torch.no_grad():
                expected = chat_model.model.generate(torch.tensor([prompt_ids]), **GREEDY)[0].tolist()
            assert [tok.id for tok in seq.target] == expected, label
            assert seq.attr_pos_start == len(prompt_ids), label


def test_attribute_chat_attributes_the_template_tokens(chat_model):
    tokenizer = chat_model.tokenizer
    out = attribute_chat(chat_model, CONVERSATIONS, generation_args=GREEDY, show_progress=False)
    assert len(out.sequence_attributions) == 2
    for conversation, seq in zip(CONVERSATIONS, out.sequence_attributions, strict=True):
        template_ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        template_ids = list(template_ids["input_ids"] if hasattr(template_ids, "keys") else template_ids)
        prompt_ids = [tok.id for tok in seq.target[: seq.attr_pos_start]]
        assert prompt_ids == template_ids  # one <s>, special tokens kept
        with torch.no_grad():
            expected = chat_model.model.generate(torch.tensor([template_ids]), **GREEDY)[0, len(template_ids) :]
        assert [tok.id for tok in seq.target[seq.attr_pos_start :]] == expected.tolist()
        assert seq.target_attributions.shape[1] == GREEDY["max_new_tokens"]
        assert not seq.target_attributions[: seq.attr_pos_start].isnan().any()


def test_render_chat_and_bad_input(chat_model):
    text = render_chat(chat_model.tokenizer, CONVERSATIONS[0])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="attribute_chat sets generated_texts itself"):
        attribute_chat(chat_model, CONVERSATIONS[0], generated_texts=["x"])
    with pytest.raises(ValueError, match="at least one non-empty conversation"):
        attribute_chat(chat_model, [])


# --- simple template, message spans, per-message and per-[DATA]-line scores -------------------------------------

SUPPORT_CHAT = [
    {
        "role": "system",
        "content": "You answer with the data.\n[DATA]\nOnline chat support is open Monday to Friday.\n"
        "Phone support is available 24/7.\n[/DATA]",
    },
    {"role": "user", "content": "When is phone support open?"},
]
DATA_LINES = ["Online chat support is open Monday to Friday.", "Phone support is available 24/7."]
ANSWER = "Phone support is available 24/7."


@pytest.fixture(scope="module")
def support_model():
    hf_model, tokenizer = build_model("llama")  # no chat template: ensure_chat_template adds the simple one
    model = inseq.load_model(hf_model, "custom_saliency", tokenizer=tokenizer)
    assert ensure_chat_template(model) is model.tokenizer and model.tokenizer.chat_template == SIMPLE_CHAT_TEMPLATE
    return model


@pytest.fixture(scope="module")
def support_output(support_model):
    return attribute_chat(support_model, SUPPORT_CHAT, answers=ANSWER, show_progress=False)


def _tokens_of(prompt: str, tokenizer, start: int, end: int) -> list[int]:
    """Independent of the package: the tokens whose characters (tokenizer offsets) overlap prompt[start:end]."""
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    inside = [idx for idx, (low, high) in enumerate(encoded.offset_mapping) if low < end and high > start]
    assert inside
    return inside


def test_forced_answer_is_attributed(support_model, support_output):
    seq = support_output[0]
    prompt = render_chat(support_model.tokenizer, SUPPORT_CHAT)
    assert prompt.startswith("<|system|>\nYou answer") and prompt.endswith("</s>\n<|assistant|>\n")
    answer_ids = support_model.tokenizer(prompt + ANSWER).input_ids[seq.attr_pos_start :]
    assert [tok.id for tok in seq.target[seq.attr_pos_start :]] == answer_ids
    with pytest.raises(ValueError, match="one answer string per conversation"):
        attribute_chat(support_model, SUPPORT_CHAT, answers=[ANSWER, ANSWER])
    # inseq would truncate a text over model_max_length and cut the answer off: refused instead.
    tokenizer = support_model.tokenizer
    limit, tokenizer.model_max_length = tokenizer.model_max_length, 128
    try:
        with pytest.raises(ValueError, match="is 1[0-9]{2} tokens, over the limit of 128 tokens"):
            attribute_chat(support_model, SUPPORT_CHAT, answers=ANSWER + " " + ANSWER, show_progress=False)
    finally:
        tokenizer.model_max_length = limit


def test_message_scores_are_sums_of_their_tokens(support_model, support_output):
    tokenizer = support_model.tokenizer
    prompt = render_chat(tokenizer, SUPPORT_CHAT)
    scores = chat_message_scores(support_output, tokenizer, SUPPORT_CHAT)
    assert scores.labels == ["system", "user"]
    target = support_output[0].target_attributions
    steps = target.shape[1]
    assert scores.scores.shape == (2, steps) and "".join(scores.generated) == ANSWER
    for row, message in enumerate(SUPPORT_CHAT):
        start = prompt.index(message["content"])
        expected = target[_tokens_of(prompt, tokenizer, start, start + len(message["content"]))].nansum(0)
        assert torch.allclose(scores.scores[row], expected)
        assert scores.score(message["role"]) == pytest.approx(float(expected.sum()), rel=1e-5)
        assert scores.score(message["role"], generated_token=-1) == pytest.approx(float(expected[-1]), rel=1e-5)
    # custom_saliency columns sum to one: messages plus template tokens account for all of it.
    assert (scores.scores.sum(0) < target.nansum(0) + 1e-5).all()
    with pytest.raises(ValueError, match="'assistant' is absent; units: 'system', 'user'"):
        scores.score("assistant")


def test_data_line_scores_are_sums_of_their_tokens(support_model, support_output):
    tokenizer = support_model.tokenizer
    prompt = render_chat(tokenizer, SUPPORT_CHAT)
    lines = data_block_scores(support_output, tokenizer, SUPPORT_CHAT)
    assert lines.labels == DATA_LINES
    target = support_output[0].target_attributions
    expected = torch.stack(
        [
            target[_tokens_of(prompt, tokenizer, prompt.index(line), prompt.index(line) + len(line))].nansum(0)
            for line in DATA_LINES
        ]
    )
    assert torch.allclose(lines.scores, expected)
    totals = expected.sum(1)
    assert lines.strongest() == DATA_LINES[int(totals.argmax())]
    assert [value for _, value in lines.totals()] == pytest.approx(totals.tolist(), rel=1e-5)
    # Choosing the message by role or index gives the same lines.
    assert torch.equal(
        data_block_scores(support_output, tokenizer, SUPPORT_CHAT, message="system").scores, lines.scores
    )
    assert torch.equal(data_block_scores(support_output, tokenizer, SUPPORT_CHAT, message=0).scores, lines.scores)


def test_data_block_on_one_line_scored_per_sentence(support_model):
    """A block written on one line (the demo models' trained layout) is split into its sentences."""
    tokenizer = support_model.tokenizer
    entries = ["library 9 to 13.", "email 8 to 20.", "phone 10 to 13."]
    chat = [{"role": "system", "content": f"[DATA] {' '.join(entries)} [/DATA]"},
            {"role": "user", "content": "Opening hour of the phone"}]  # fmt: skip
    output = attribute_chat(support_model, chat, answers=" 10.", show_progress=False)
    scores = data_block_scores(output, tokenizer, chat, entries="sentences")
    assert scores.labels == entries
    prompt = render_chat(tokenizer, chat)
    target = output[0].target_attributions
    spans = [(prompt.index(entry), prompt.index(entry) + len(entry)) for entry in entries]
    expected = [target[_tokens_of(prompt, tokenizer, start, end)].nansum(0) for start, end in spans]
    assert torch.allclose(scores.scores, torch.stack(expected))
    assert data_block_scores(output, tokenizer, chat).labels == [" ".join(entries)]  # by lines: one entry


def test_chat_scores_refuse_bad_input(support_model, support_output):
    tokenizer = support_model.tokenizer
    with pytest.raises(ValueError, match=r"No \[DATA\] block in message 'user'"):
        data_block_scores(support_output, tokenizer, SUPPORT_CHAT, message="user")
    with pytest.raises(ValueError, match="No 'assistant' message in the conversation; its roles: system, user"):
        data_block_scores(support_output, tokenizer, SUPPORT_CHAT, message="assistant")
    with pytest.raises(ValueError, match="message=5 is out of range"):
        data_block_scores(support_output, tokenizer, SUPPORT_CHAT, message=5)
    other = [SUPPORT_CHAT[0], {"role": "user", "content": "When is chat support open?"}]
    with pytest.raises(ValueError, match="does not start with these messages"):
        chat_message_scores(support_output, tokenizer, other)
    no_data = [{"role": "system", "content": "Be brief."}, SUPPORT_CHAT[1]]
    output = attribute_chat(support_model, no_data, answers=ANSWER, show_progress=False)
    with pytest.raises(ValueError, match=r"No \[DATA\] block in the conversation"):
        data_block_scores(output, tokenizer, no_data)


def test_data_block_extent():
    content = "Intro\n[DATA]\n  first line  \n\nsecond\n\nafter the block"
    assert [content[a:b] for a, b in data_block_lines(content)] == ["first line"]  # a blank line ends it
    closed = "[DATA]\na\n\nb\n[/DATA]\nc"
    assert [closed[a:b] for a, b in data_block_lines(closed)] == ["a", "b"]
    unclosed = "[DATA] inline\nnext\n\nnot data"
    assert [unclosed[a:b] for a, b in data_block_lines(unclosed)] == ["inline", "next"]
    with pytest.raises(ValueError, match=r"The \[DATA\] block has no lines"):
        data_block_lines("[DATA][/DATA]")
    one_line = "[DATA] library 9 to 13. email 8 to 20. phone 10 [/DATA] Opening hour of the phone"
    entries = [one_line[a:b] for a, b in data_block_lines(one_line, entries="sentences")]
    assert entries == ["library 9 to 13.", "email 8 to 20.", "phone 10"]
    with pytest.raises(ValueError, match="Unknown entries 'words'; choose one of: lines, sentences"):
        data_block_lines(one_line, entries="words")


def test_message_spans_follow_the_template():
    tokenizer = with_chat_template(
        build_tokenizer(add_bos=True),
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}\n{% endfor %}",
    )
    messages = [{"role": "system", "content": "  system  "}, {"role": "user", "content": "user"}]
    spans = message_spans(tokenizer, messages, add_generation_prompt=False)
    text = render_chat(tokenizer, messages, add_generation_prompt=False)
    assert text == "[system] system\n[user] user\n"
    # The contents are found where the template put them, not in the role markers with the same words.
    assert [(span.role, span.start, span.text) for span in spans] == [("system", 9, "system"), ("user", 23, "user")]
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids[spans[1].token_start : spans[1].token_end]).strip() == "user"
    dropping = with_chat_template(
        tokenizer, "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(ValueError, match=r"leaves out message\(s\) \[0\]"):
        message_spans(dropping, messages, add_generation_prompt=False)


def test_ensure_and_with_chat_template():
    tokenizer = build_tokenizer(add_bos=True)
    tokenizer.chat_template = TEMPLATE
    assert ensure_chat_template(tokenizer).chat_template == TEMPLATE  # an existing template is kept
    copied = with_chat_template(tokenizer, add_role_tokens=True)
    assert copied.chat_template == SIMPLE_CHAT_TEMPLATE and tokenizer.chat_template == TEMPLATE
    assert all(len(copied(marker, add_special_tokens=False).input_ids) == 1 for marker in ROLE_MARKERS)
    assert all(marker not in tokenizer.get_vocab() for marker in ROLE_MARKERS)
    with pytest.raises(ValueError, match="non-empty Jinja"):
        with_chat_template(tokenizer, template="")

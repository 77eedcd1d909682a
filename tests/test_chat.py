"""Chat-template prompts: inseq's own call fails on them, attribute_chat attributes exactly the template's tokens."""

from __future__ import annotations

import inseq
import pytest
import torch
from conftest import GREEDY

from inseq_ext.chat import attribute_chat, render_chat
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


def test_plain_inseq_call_fails_on_chat_prompts(chat_model):
    prompts = [
        chat_model.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS
    ]
    with pytest.raises(AssertionError, match="must start with the input texts"):
        chat_model.attribute(prompts, generation_args=GREEDY, show_progress=False)


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

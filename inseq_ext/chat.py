"""Attributing chat prompts built with ``tokenizer.apply_chat_template``.

Why plain ``model.attribute(rendered_chat)`` breaks in inseq 0.7.1: inseq generates, decodes the full sequence to
text and checks that it starts with the input text (``Forced generations with decoder-only models must start with
the input texts``). Chat templates are full of special tokens (``<|im_start|>``, ``<s>``): with several prompts
inseq decodes with ``skip_special_tokens=True`` and they vanish from the generated text; and when the template
writes ``<s>`` itself while the tokenizer also prepends one, the prompt is encoded with two BOS tokens.

What works (:func:`attribute_chat`): render the template to text, drop a leading BOS string when the tokenizer adds
BOS on its own (so the prompt is encoded exactly as the template intends), generate with the Hugging Face model,
decode only the new tokens *keeping* special tokens, and pass ``prompt + continuation`` to inseq as a forced
generation (``generated_texts=``). The text round-trips through the tokenizer, so inseq attributes exactly the
tokens the model generated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from inseq.data import FeatureAttributionOutput

logger = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, str]]


def render_chat(
    tokenizer: Any, messages: Conversation, add_generation_prompt: bool = True, **template_kwargs: Any
) -> str:
    """The chat prompt as text that inseq encodes to exactly the template's tokens (no doubled BOS)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("The tokenizer has no chat template; set tokenizer.chat_template (a Jinja template) first.")
    text = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=False, **template_kwargs
    )
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    if adds_bos and text.startswith(bos):
        text = text[len(bos) :]  # the tokenizer prepends it again when inseq encodes the prompt
    return text


def attribute_chat(
    model: Any,
    conversations: Conversation | Sequence[Conversation],
    generation_args: Mapping[str, Any] | None = None,
    add_generation_prompt: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    **attribute_kwargs: Any,
) -> FeatureAttributionOutput:
    """Generate an answer to one or more chat conversations and attribute it with inseq.

    Args:
        model: An inseq ``AttributionModel`` (decoder-only) whose tokenizer has a chat template.
        conversations: One conversation (a list of ``{"role": ..., "content": ...}`` messages) or a list of them.
        generation_args: Keyword arguments of Hugging Face ``generate`` (e.g. ``max_new_tokens``).
        add_generation_prompt: Append the template's assistant header (default), as for answering.
        chat_template_kwargs: Further keyword arguments of ``apply_chat_template``.
        **attribute_kwargs: Passed to ``model.attribute`` (``method=``, ``step_scores=``, ``attributed_fn=``, ...).

    Returns:
        inseq's output; sequence ``k`` attributes conversation ``k``'s answer.
    """
    for reserved in ("generated_texts", "skip_special_tokens"):
        if reserved in attribute_kwargs:
            raise ValueError(f"attribute_chat sets {reserved} itself; remove it from the arguments.")
    if getattr(model, "is_encoder_decoder", False):
        raise ValueError("attribute_chat is for decoder-only models; encoder-decoders take the prompt as source text.")
    if isinstance(conversations, Sequence) and conversations and isinstance(conversations[0], Mapping):
        conversations = [conversations]
    if not conversations or not all(conv for conv in conversations):
        raise ValueError("Give at least one non-empty conversation (a list of {'role': ..., 'content': ...}).")
    tokenizer = model.tokenizer
    prompts = [
        render_chat(tokenizer, conv, add_generation_prompt, **(chat_template_kwargs or {})) for conv in conversations
    ]
    generated = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            sequences = model.model.generate(**encoded, **(generation_args or {}))
        prompt_ids = encoded.input_ids[0].tolist()
        new_ids = sequences[0, len(prompt_ids) :].tolist()  # one prompt at a time: no padding
        continuation = tokenizer.decode(new_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        full_text = prompt + continuation
        if tokenizer(full_text).input_ids != prompt_ids + new_ids:
            logger.warning(
                "The generated text does not re-tokenize to the generated tokens; "
                "inseq attributes its re-tokenization of %r.",
                continuation,
            )
        generated.append(full_text)
    return model.attribute(prompts, generated, skip_special_tokens=False, **attribute_kwargs)

"""Attributing chat prompts built with ``tokenizer.apply_chat_template``.

Why plain ``model.attribute(rendered_chat)`` breaks in inseq 0.7.1: inseq generates, decodes the full sequence to
text and checks that it starts with the input text (``Forced generations with decoder-only models must start with
the input texts``). Chat templates are full of special tokens (``<|im_start|>``, ``<s>``): with several prompts
inseq decodes with ``skip_special_tokens=True`` and they vanish from the generated text; and when the template
writes ``<s>`` itself while the tokenizer also prepends one, the prompt is encoded with two BOS tokens. (Since
:mod:`inseq_ext.inseq_compat` the plain call no longer fails, but a batch of prompts that write ``<s>`` still gets
two BOS tokens each; :func:`attribute_chat` gives exactly the template's tokens.)

What works (:func:`attribute_chat`): render the template to text, drop a leading BOS string when the tokenizer adds
BOS on its own (so the prompt is encoded exactly as the template intends), generate with the Hugging Face model,
decode only the new tokens *keeping* special tokens, and pass ``prompt + continuation`` to inseq as a forced
generation (``generated_texts=``). The text round-trips through the tokenizer, so inseq attributes exactly the
tokens the model generated. ``answers=`` forces given answers instead (every model explains the same text).

Scores per message and per line of a ``[DATA]`` block (:func:`chat_message_scores`, :func:`data_block_scores`):
each message's content is located in the rendered prompt (:func:`message_spans`, from the template's own output,
so any template works), its tokens are merged into one unit with inseq's ``"spans"`` aggregator
(:func:`inseq_ext.views.granularity.merge_token_spans`), and a unit's score is the sum of its token scores
(``nansum``).
Role markers and special tokens of the template belong to no message.

Tokenizers without a chat template get :data:`SIMPLE_CHAT_TEMPLATE` with :func:`ensure_chat_template`.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from inseq.data import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq.utils.typing import TokenWithId

from .generation_length import check_generation_length
from .views.granularity import (
    char_spans_to_token_spans,
    merge_token_spans,
    merged_index,
    pick_sequence,
    to_2d,
    token_texts,
)
from .views.span import reduce_steps

logger = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, str]]

SIMPLE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A minimal chat template (Zephyr-like layout) for tokenizers that have none.

Each message is ``<|role|>``, a line break, the content, the end-of-sequence token and a line break; the answer
follows ``<|assistant|>`` and a line break. The role markers are plain text unless added as tokens (see
:func:`ensure_chat_template`), so any tokenizer and model can use it without a vocabulary change.
"""
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
"""The role markers :data:`SIMPLE_CHAT_TEMPLATE` writes for the usual roles."""


def ensure_chat_template(tokenizer: Any, template: str = SIMPLE_CHAT_TEMPLATE, add_role_tokens: bool = False) -> Any:
    """Give ``tokenizer`` (in place) a chat template when it has none; a tokenizer with one is left as it is.

    Args:
        tokenizer: A Hugging Face tokenizer, or an inseq model (its tokenizer is used).
        template: Jinja chat template to set; default :data:`SIMPLE_CHAT_TEMPLATE`.
        add_role_tokens: Also add :data:`ROLE_MARKERS` as special tokens, so each marker is one token. This grows
            the vocabulary: the model's embeddings must then be resized (``resize_token_embeddings``) and the new
            rows trained. By default the markers stay plain text, which every model can read.

    Returns:
        The tokenizer.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        _set_template(tokenizer, template, add_role_tokens)
    return tokenizer


def with_chat_template(tokenizer: Any, template: str = SIMPLE_CHAT_TEMPLATE, add_role_tokens: bool = False) -> Any:
    """A copy of ``tokenizer`` using ``template`` (replacing any template it has); the original is unchanged.

    See :func:`ensure_chat_template` for the arguments.
    """
    tokenizer = copy.deepcopy(getattr(tokenizer, "tokenizer", tokenizer))
    _set_template(tokenizer, template, add_role_tokens)
    return tokenizer


def _set_template(tokenizer: Any, template: str, add_role_tokens: bool) -> None:
    if not isinstance(template, str) or not template.strip():
        raise ValueError("template must be a non-empty Jinja chat template string.")
    if add_role_tokens:
        missing = [marker for marker in ROLE_MARKERS if marker not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = template


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
    answers: str | Sequence[str] | None = None,
    **attribute_kwargs: Any,
) -> FeatureAttributionOutput:
    """Generate (or force) an answer to one or more chat conversations and attribute it with inseq.

    Args:
        model: An inseq ``AttributionModel`` (decoder-only) whose tokenizer has a chat template.
        conversations: One conversation (a list of ``{"role": ..., "content": ...}`` messages) or a list of them.
        generation_args: Keyword arguments of Hugging Face ``generate`` (e.g. ``max_new_tokens``).
        add_generation_prompt: Append the template's assistant header (default), as for answering.
        chat_template_kwargs: Further keyword arguments of ``apply_chat_template``.
        answers: Forced answers, one per conversation (a string for one conversation): attributed instead of the
            model's own generation, so that any model explains the same text. ``generation_args`` is then unused.
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
    if answers is not None:
        answers = [answers] if isinstance(answers, str) else list(answers)
        if len(answers) != len(prompts) or not all(isinstance(answer, str) for answer in answers):
            raise ValueError(f"Give one answer string per conversation: {len(prompts)} expected, got {answers!r}.")
        for prompt, answer in zip(prompts, answers, strict=True):
            prompt_ids = tokenizer(prompt).input_ids
            full_ids = tokenizer(prompt + answer).input_ids
            check_generation_length(model, len(prompt_ids), generated_texts=len(full_ids))
            if full_ids[: len(prompt_ids)] != prompt_ids:
                raise ValueError(
                    f"The answer {answer!r} merges with the end of the prompt when tokenized; start it differently "
                    "(e.g. without a leading space)."
                )
        return model.attribute(
            prompts,
            [p + a for p, a in zip(prompts, answers, strict=True)],
            skip_special_tokens=False,
            **attribute_kwargs,
        )
    generated = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
        check_generation_length(model, encoded.input_ids.shape[1], generation_args=generation_args)
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


@dataclass(frozen=True)
class MessageSpan:
    """Where one message's content is in a rendered chat prompt.

    ``start``/``end`` are character offsets in :func:`render_chat`'s text (end excluded), ``text`` the content as
    rendered there. ``token_start``/``token_end`` index the prompt's tokens as inseq encodes the text (a BOS the
    tokenizer adds included, so they are positions in the attributed sequence); ``None`` for an empty content.
    """

    index: int
    role: str
    start: int
    end: int
    text: str
    token_start: int | None
    token_end: int | None


def _sentinel(index: int) -> str:
    return f"\u2063inseq-ext-message-{index}\u2063"  # invisible separators: never in real content


def message_spans(
    tokenizer: Any, messages: Conversation, add_generation_prompt: bool = True, **template_kwargs: Any
) -> list[MessageSpan]:
    """Character and token spans of each message's content in the rendered chat prompt.

    The template is rendered twice: with the real contents and with a unique placeholder per message. The text
    around the placeholders is the template's own (role markers, special tokens); walking both renderings side by
    side locates every content, whatever the template's layout (a template may strip the content's blanks).

    Args:
        tokenizer: Hugging Face tokenizer with a chat template, or an inseq model.
        messages: The conversation (``{"role": ..., "content": ...}`` dicts).
        add_generation_prompt: As given to :func:`attribute_chat`.
        **template_kwargs: Further keyword arguments of ``apply_chat_template``.

    Raises:
        ValueError: When a content is not a string, or the template drops or rewrites a message.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    for idx, message in enumerate(messages):
        if not isinstance(message.get("content"), str):
            raise ValueError(f"Message {idx} has no text content (a 'content' string is needed).")
    text = render_chat(tokenizer, messages, add_generation_prompt, **template_kwargs)
    placeholders = [{**message, "content": _sentinel(idx)} for idx, message in enumerate(messages)]
    marked = render_chat(tokenizer, placeholders, add_generation_prompt, **template_kwargs)
    pieces = re.split("(" + "|".join(re.escape(_sentinel(idx)) for idx in range(len(messages))) + ")", marked)
    char_spans: dict[int, tuple[int, int]] = {}
    position = 0
    for number, piece in enumerate(pieces):
        if number % 2 == 0:  # template text
            if not text.startswith(piece, position):
                raise ValueError("The chat template rewrites message contents; their positions cannot be found.")
            position += len(piece)
            continue
        idx = int(piece.strip("\u2063").rsplit("-", 1)[1])
        after = pieces[number + 1]
        content = messages[idx]["content"]
        for candidate in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            if text.startswith(candidate, position) and text.startswith(after, position + len(candidate)):
                break
        else:
            raise ValueError(f"The chat template rewrites message {idx} ({messages[idx]['role']}); cannot locate it.")
        char_spans.setdefault(idx, (position, position + len(candidate)))
        position += len(candidate)
    dropped = [idx for idx in range(len(messages)) if idx not in char_spans]
    if dropped:
        raise ValueError(f"The chat template leaves out message(s) {dropped}; their scores cannot be reported.")
    texts, shift = _prompt_token_texts(tokenizer, text)
    ordered = sorted(char_spans.items())
    token_spans = char_spans_to_token_spans(texts, [(start + shift, end + shift) for _, (start, end) in ordered])
    return [
        MessageSpan(idx, messages[idx]["role"], start, end, text[start:end], *(tokens or (None, None)))
        for (idx, (start, end)), tokens in zip(ordered, token_spans, strict=True)
    ]


def _prompt_token_texts(tokenizer: Any, text: str) -> tuple[list[str], int]:
    """Per-token texts of ``text`` encoded as inseq does, and where ``text`` starts in their concatenation."""
    ids = tokenizer(text).input_ids
    tokens = [TokenWithId(token, idx) for token, idx in zip(tokenizer.convert_ids_to_tokens(ids), ids, strict=True)]
    texts = token_texts(tokens, tokenizer)
    decoded = "".join(texts)
    shift = len(decoded) - len(text)
    if shift < 0 or decoded[shift:] != text:
        raise ValueError("The tokenizer does not decode the chat prompt back to its text; spans cannot be mapped.")
    return texts, shift


@dataclass
class ChatUnitScores:
    """Scores of prompt units (messages, or lines of a ``[DATA]`` block) for every generated token.

    ``scores[u, t]`` is the sum of the token scores of unit ``labels[u]`` (tokens ``token_spans[u]`` of the
    attributed sequence) when generating ``generated[t]``; NaN for a unit without tokens.
    """

    labels: list[str]
    token_spans: list[tuple[int, int] | None]
    scores: torch.Tensor
    generated: list[str]

    def totals(self, reduce: str = "sum") -> list[tuple[str, float]]:
        """``(label, score)`` per unit over the whole answer: ``reduce`` (``"sum"``, ``"mean"``, ``"max"``,
        ``"absmax"``) of its scores over the generated tokens (:func:`inseq_ext.views.span.reduce_steps`)."""
        combined = reduce_steps(self.scores, reduce)
        return [(label, float(value)) for label, value in zip(self.labels, combined.tolist(), strict=True)]

    def score(self, label: str, generated_token: int | None = None, reduce: str = "sum") -> float:
        """The score of the unit ``label``: for one generated token (index, negative from the end), or by default
        over the whole answer (see :meth:`totals`)."""
        matches = [idx for idx, name in enumerate(self.labels) if name == label]
        if len(matches) != 1:
            problem = "absent" if not matches else f"ambiguous ({len(matches)} units)"
            raise ValueError(f"Unit {label!r} is {problem}; units: {', '.join(map(repr, self.labels))}.")
        if generated_token is None:
            return self.totals(reduce)[matches[0]][1]
        steps = self.scores.shape[1]
        if not -steps <= generated_token < steps:
            raise ValueError(f"generated_token={generated_token} is out of range: {steps} generated tokens.")
        return float(self.scores[matches[0], generated_token])

    def strongest(self, reduce: str = "sum") -> str:
        """Label of the unit with the largest total score (by magnitude for signed methods)."""
        totals = [(abs(value), label) for label, value in self.totals(reduce) if value == value]
        if not totals:
            raise ValueError("No unit has a score.")
        return max(totals, key=lambda pair: pair[0])[1]


def _unit_scores(
    seq: FeatureAttributionSequenceOutput,
    tokenizer: Any,
    labels: list[str],
    token_spans: list[tuple[int, int] | None],
    select: Mapping[str, int] | None,
    aggregate_fn: str,
) -> ChatUnitScores:
    flat = to_2d(seq, select)
    real = [span for span in token_spans if span is not None]
    merged = merge_token_spans(flat, target_spans=real, aggregate_fn=aggregate_fn)
    steps = merged.target_attributions.shape[1]
    nan_row = torch.full((steps,), float("nan"), dtype=merged.target_attributions.dtype)
    rows = [
        nan_row if span is None else merged.target_attributions[merged_index(real, span[0])] for span in token_spans
    ]
    texts = token_texts(seq.target, tokenizer)
    generated = texts[seq.attr_pos_start : seq.attr_pos_start + steps]
    return ChatUnitScores(list(labels), list(token_spans), torch.stack(rows) if rows else nan_row[:0], generated)


def _chat_sequence(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    tokenizer: Any,
    messages: Conversation,
    sequence: int,
    add_generation_prompt: bool,
    chat_template_kwargs: Mapping[str, Any] | None,
) -> tuple[FeatureAttributionSequenceOutput, list[MessageSpan]]:
    seq = pick_sequence(output, sequence)
    if seq.source_attributions is not None or seq.target_attributions is None:
        raise ValueError("Chat scores need a decoder-only attribution whose prompt is attributed (attribute_chat).")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    spans = message_spans(tokenizer, messages, add_generation_prompt, **(chat_template_kwargs or {}))
    prompt = render_chat(tokenizer, messages, add_generation_prompt, **(chat_template_kwargs or {}))
    if [token.id for token in seq.target[: seq.attr_pos_start]] != tokenizer(prompt).input_ids:
        raise ValueError(
            f"Sequence {sequence} of the attribution does not start with these messages rendered by the tokenizer's "
            "chat template; pass the conversation given to attribute_chat (and the same template settings)."
        )
    return seq, spans


def chat_message_scores(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    tokenizer: Any,
    messages: Conversation,
    sequence: int = 0,
    select: Mapping[str, int] | None = None,
    aggregate_fn: str = "nansum",
    add_generation_prompt: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> ChatUnitScores:
    """Scores per message (system / user / earlier assistant turns) of an :func:`attribute_chat` attribution.

    A message's score for a generated token is the sum of its content tokens' scores (role markers and template
    tokens excluded); labels are the roles.

    Args:
        output: The output of :func:`attribute_chat` (or one of its sequence attributions).
        tokenizer: The model's tokenizer (or the inseq model).
        messages: The conversation that was attributed (sequence ``sequence`` of the output).
        sequence: Which sequence of the output.
        select: Layer/head for multi-dimensional methods (see :func:`inseq_ext.views.granularity.to_2d`).
        aggregate_fn: How tokens merge into a unit: ``"nansum"`` (default), ``"nanmean"``, or an inseq function.
        add_generation_prompt: As given to :func:`attribute_chat`.
        chat_template_kwargs: As given to :func:`attribute_chat`.

    Raises:
        ValueError: When the attribution's prompt is not this conversation, or the template hides a message.
    """
    seq, spans = _chat_sequence(output, tokenizer, messages, sequence, add_generation_prompt, chat_template_kwargs)
    token_spans = [None if span.token_start is None else (span.token_start, span.token_end) for span in spans]
    return _unit_scores(seq, tokenizer, [span.role for span in spans], token_spans, select, aggregate_fn)


#: How the entries of a ``[DATA]`` block are separated: one per line, or one per sentence (ending with ``.``),
#: for blocks written on one line (``[DATA] library 9 to 13. email 8 to 20. [/DATA]``).
DATA_ENTRY_PATTERNS = {"lines": r"[^\n]+", "sentences": r"[^.\n]+\.?"}


def data_block_lines(content: str, marker: str = "[DATA]", entries: str = "lines") -> list[tuple[int, int]]:
    """Character spans (blanks trimmed) of the non-blank entries of the first ``marker`` block of ``content``.

    The block starts right after the marker and ends at the closing marker (``[/DATA]`` for ``[DATA]``), else at
    the first blank line after some data, else at the end of the content. ``entries="lines"`` (default): one entry
    per line; ``"sentences"``: one per sentence ending with a full stop (a number like ``9.30`` would split).

    Raises:
        ValueError: When ``content`` has no such block, the block has no entries, or ``entries`` is unknown.
    """
    if entries not in DATA_ENTRY_PATTERNS:
        raise ValueError(f"Unknown entries {entries!r}; choose one of: {', '.join(DATA_ENTRY_PATTERNS)}.")
    at = content.find(marker)
    if at < 0:
        raise ValueError(f"No {marker} block in this content.")
    start = at + len(marker)
    closing = "[/" + marker[1:] if marker.startswith("[") else None
    end = content.find(closing, start) if closing else -1
    if end < 0:
        blank = re.compile(r"\S[^\n]*\n[ \t]*\n").search(content, start)  # a blank line after some data
        end = blank.end() if blank else len(content)
    lines = []
    for line in re.finditer(DATA_ENTRY_PATTERNS[entries], content[start:end]):
        stripped = line.group().strip()
        if stripped:
            first = start + line.start() + line.group().index(stripped)
            lines.append((first, first + len(stripped)))
    if not lines:
        raise ValueError(f"The {marker} block has no lines.")
    return lines


def data_block_scores(
    output: FeatureAttributionOutput | FeatureAttributionSequenceOutput,
    tokenizer: Any,
    messages: Conversation,
    marker: str = "[DATA]",
    message: int | str | None = None,
    sequence: int = 0,
    select: Mapping[str, int] | None = None,
    aggregate_fn: str = "nansum",
    add_generation_prompt: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    entries: str = "lines",
) -> ChatUnitScores:
    """Scores per line of the ``[DATA]`` block of a chat prompt (e.g. one line per opening-hours entry).

    A line's score for a generated token is the sum of the scores of its tokens (those whose first non-blank
    character is on the line); labels are the lines' texts. See :func:`data_block_lines` for the block's extent.

    Args:
        output: The output of :func:`attribute_chat` (or one of its sequence attributions).
        tokenizer: The model's tokenizer (or the inseq model).
        messages: The conversation that was attributed (sequence ``sequence`` of the output).
        marker: The text opening the block.
        message: The message holding the block: its index or its role; default the first message containing
            ``marker``.
        sequence: Which sequence of the output.
        select: Layer/head for multi-dimensional methods (see :func:`inseq_ext.views.granularity.to_2d`).
        aggregate_fn: How a line's tokens merge: ``"nansum"`` (default), ``"nanmean"``, or an inseq function.
        add_generation_prompt: As given to :func:`attribute_chat`.
        chat_template_kwargs: As given to :func:`attribute_chat`.
        entries: ``"lines"`` (default) or ``"sentences"``, see :func:`data_block_lines`.

    Raises:
        ValueError: When no (chosen) message contains the block, or as :func:`chat_message_scores`.
    """
    seq, spans = _chat_sequence(output, tokenizer, messages, sequence, add_generation_prompt, chat_template_kwargs)
    if message is None:
        chosen = spans
    elif isinstance(message, int) and not isinstance(message, bool):
        if not 0 <= message < len(spans):
            raise ValueError(f"message={message} is out of range: the conversation has {len(spans)} messages.")
        chosen = [spans[message]]
    else:
        chosen = [span for span in spans if span.role == message]
        if not chosen:
            roles = ", ".join(dict.fromkeys(span.role for span in spans))
            raise ValueError(f"No {message!r} message in the conversation; its roles: {roles}.")
    holder = next((span for span in chosen if marker in span.text), None)
    if holder is None:
        where = "the conversation" if message is None else f"message {message!r}"
        raise ValueError(f"No {marker} block in {where}; write the data lines after a {marker!r} line.")
    lines = data_block_lines(holder.text, marker, entries)
    hf_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    prompt = render_chat(hf_tokenizer, messages, add_generation_prompt, **(chat_template_kwargs or {}))
    texts, shift = _prompt_token_texts(hf_tokenizer, prompt)
    offset = holder.start + shift
    token_spans = char_spans_to_token_spans(texts, [(offset + low, offset + high) for low, high in lines])
    labels = [holder.text[low:high] for low, high in lines]
    return _unit_scores(seq, tokenizer, labels, token_spans, select, aggregate_fn)

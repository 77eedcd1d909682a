"""How many tokens a model can take, and a check that a prompt with its generation fits, run before generating.

A prompt that does not fit fails late and obscurely: GPT-2-style models (learned absolute positions) end in
``IndexError: index out of range in self`` from the position-embedding lookup as soon as generation passes the
last position; and inseq tokenizes its inputs with ``truncation=True``, so a generation longer than the tokenizer's
``model_max_length`` is silently cut when inseq re-encodes it, which surfaces minutes later as an unrelated error
(e.g. "Start and end attribution positions cannot be the same"). :func:`check_generation_length` says it up front.

**The limit** (:func:`context_limit`) is the smaller of two numbers, either of which may be unknown:

* the model's positions, from its (text) config: ``n_positions`` (GPT-2, learned positions: a hard limit), else
  ``max_position_embeddings`` (Llama, Mistral, Qwen, BART, ...; for rotary models this is the context the model
  was built for, rope scaling included, and is used as the limit although nothing breaks at that index), else
  ``n_ctx``, ``max_sequence_length``, ``seq_length``;
* the tokenizer's ``model_max_length``, when it is set (transformers leaves a huge placeholder, ``1e30``, when a
  tokenizer does not say): past it inseq truncates the text it attributes.

Models with neither (relative positions such as T5, a tokenizer without a length) are not checked.

**The length** is counted the way inseq encodes: prompt tokens (special tokens the tokenizer adds included) plus
the new tokens ``generate`` may add (``max_new_tokens``; else ``max_length`` as a total), or the forced target's
tokens. For encoder-decoders the source is checked against the limit on its own and the target (plus the decoder
start token) on its own, as the two stacks have separate positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Config attributes holding a model's number of positions, in the order they are looked up.
POSITION_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")
#: ``model_max_length`` at or above this is transformers' "no limit" placeholder (``int(1e30)``), not a length.
UNSET_MODEL_MAX_LENGTH = int(1e12)


@dataclass(frozen=True)
class ContextLimit:
    """The most tokens a sequence may have, and where that number comes from.

    Attributes:
        tokens: The limit; ``None`` when neither the config nor the tokenizer states one.
        source: Where it comes from, e.g. ``"config.n_positions=128"`` (both sources are named when both apply).
    """

    tokens: int | None
    source: str


def _parts(model: Any, tokenizer: Any | None) -> tuple[Any, Any, bool]:
    """(config, tokenizer, is_encoder_decoder) of an inseq ``AttributionModel`` or a Hugging Face model."""
    hf_model = getattr(model, "model", model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    config = getattr(hf_model, "config", None)
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    return config, tokenizer, is_encoder_decoder


def context_limit(model: Any, tokenizer: Any | None = None) -> ContextLimit:
    """The number of tokens ``model`` can take: the smaller of its config's positions and its tokenizer's length.

    Args:
        model: An inseq ``AttributionModel`` or a Hugging Face model (anything with a ``config``).
        tokenizer: The tokenizer; by default the inseq model's own.
    """
    config, tokenizer, _ = _parts(model, tokenizer)
    candidates: list[tuple[int, str]] = []
    if config is not None:
        get_text_config = getattr(config, "get_text_config", None)
        text_config = get_text_config() if callable(get_text_config) else config
        for name in POSITION_ATTRIBUTES:
            value = getattr(text_config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                candidates.append((value, f"config.{name}={value}"))
                break
    max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_length, int) and 0 < max_length < UNSET_MODEL_MAX_LENGTH:
        candidates.append((max_length, f"tokenizer.model_max_length={max_length}"))
    if not candidates:
        return ContextLimit(None, "no position limit in the config and no tokenizer model_max_length")
    tokens = min(value for value, _ in candidates)
    return ContextLimit(tokens, ", ".join(source for _, source in candidates))


def requested_new_tokens(
    model: Any, generation_args: Mapping[str, Any] | None = None
) -> tuple[int | None, int | None]:
    """``(max_new_tokens, max_length)`` that ``generate`` will use: the arguments first, then the model's
    generation config (``max_new_tokens`` wins over ``max_length`` when both are set, as in ``generate``)."""
    generation_args = generation_args or {}
    hf_model = getattr(model, "model", model)
    config = getattr(hf_model, "generation_config", None)
    max_new_tokens = generation_args.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    max_length = generation_args.get("max_length", getattr(config, "max_length", None))
    return max_new_tokens, max_length


def _as_list(values: Any) -> list:
    return [values] if isinstance(values, str | int) else list(values)


def _token_counts(tokenizer: Any, texts: list[str], add_special_tokens: bool, as_targets: bool = False) -> list[int]:
    """Token counts of ``texts`` as inseq encodes them (no truncation; one BOS of a doubled pair dropped, as inseq
    does for a single text)."""
    key = "text_target" if as_targets else "text"
    ids = tokenizer(**{key: texts}, add_special_tokens=add_special_tokens, truncation=False, verbose=False).input_ids
    bos = getattr(tokenizer, "bos_token_id", None)
    counts = [len(row) for row in ids]
    if len(ids) == 1 and bos is not None and len(ids[0]) >= 2 and ids[0][0] == ids[0][1] == bos:
        counts[0] -= 1
    return counts


def check_generation_length(
    model: Any,
    prompts: str | int | Sequence[str] | Sequence[int],
    max_new_tokens: int | None = None,
    generated_texts: str | Sequence[str] | None = None,
    *,
    tokenizer: Any | None = None,
    generation_args: Mapping[str, Any] | None = None,
    add_special_tokens: bool = True,
) -> int:
    """Raise a ``ValueError`` when a prompt and its generation (or forced target) exceed the model's limit.

    Call it before generating: it tokenizes, it does not run the model. Used by ``model.attribute`` for every
    method once ``inseq_ext`` is imported (see :mod:`inseq_ext.inseq_compat`), by the CLI, and by anything that
    must reject rows that cannot fit (e.g. a data-set runner).

    Args:
        model: An inseq ``AttributionModel`` or a Hugging Face model.
        prompts: One prompt or several, as texts or as token counts (already tokenized).
        max_new_tokens: Tokens to be generated; by default what ``generate`` would use (``generation_args``,
            then the model's generation config). Ignored when ``generated_texts`` are given.
        generated_texts: Forced targets instead of a generation, one per prompt: for decoder-only models the full
            text (prompt included, as inseq takes it), for encoder-decoders the target text.
        tokenizer: The tokenizer, when ``model`` is a Hugging Face model and texts are given.
        generation_args: ``generate`` keyword arguments, read for ``max_new_tokens`` / ``max_length``.
        add_special_tokens: Whether the prompt is encoded with the tokenizer's special tokens (inseq's
            ``skip_special_tokens=True`` turns them off).

    Returns:
        The largest number of positions one sequence needs (on either side for encoder-decoders); 0 when the
        model states no limit (nothing is counted then).

    Raises:
        ValueError: naming the sequence, its length in tokens and the limit with its source.
    """
    limit = context_limit(model, tokenizer)
    if limit.tokens is None:
        return 0
    _, tokenizer, is_encoder_decoder = _parts(model, tokenizer)
    prompt_list = _as_list(prompts)
    if not prompt_list:
        return 0

    def counts(values: list, as_targets: bool = False) -> list[int]:
        if all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            return list(values)
        if tokenizer is None:
            raise ValueError("check_generation_length needs a tokenizer to count the tokens of texts.")
        return _token_counts(tokenizer, [str(value) for value in values], add_special_tokens, as_targets)

    def name(index: int) -> str:
        return "The prompt" if len(prompt_list) == 1 else f"Prompt {index}"

    shorten, fewer = "Shorten the prompt", "Shorten the prompt or ask for fewer new tokens (max_new_tokens)"
    needed: list[tuple[int, str, str]] = []  # (positions, what needs them, what to do)
    prompt_counts = counts(prompt_list)
    if is_encoder_decoder:  # the source has positions of its own
        needed += [(count, f"{name(index)} is {count} tokens", shorten) for index, count in enumerate(prompt_counts)]
    if generated_texts is not None:
        for index, count in enumerate(counts(_as_list(generated_texts), as_targets=is_encoder_decoder)):
            count += int(is_encoder_decoder)  # the decoder start token inseq prepends to targets
            what = f"{name(index)}'s forced target" if is_encoder_decoder else f"{name(index)} with its forced target"
            needed.append((count, f"{what} is {count} tokens", shorten + " or the forced target"))
    else:
        new_tokens, max_length = requested_new_tokens(model, generation_args)
        if max_new_tokens is not None:
            new_tokens = max_new_tokens
        for index, count in enumerate(prompt_counts):
            if new_tokens is not None:
                total = (1 if is_encoder_decoder else count) + int(new_tokens)
                parts = f"{new_tokens} new tokens" if is_encoder_decoder else f"{count} + {new_tokens} new tokens"
                needed.append((total, f"{name(index)} with its generation needs {total} tokens ({parts})", fewer))
            elif max_length is not None:
                total = int(max_length) if is_encoder_decoder else max(int(max_length), count + 1)
                needed.append((total, f"{name(index)} with its generation needs {total} tokens (max_length)", fewer))
            elif not is_encoder_decoder:
                needed.append((count, f"{name(index)} is {count} tokens", shorten))
    for total, description, advice in needed:
        if total > limit.tokens:
            raise ValueError(
                f"{description}, over the limit of {limit.tokens} tokens of this model ({limit.source}). {advice}."
            )
    return max((total for total, _, _ in needed), default=0)

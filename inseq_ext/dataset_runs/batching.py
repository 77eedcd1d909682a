"""Attribution batches without padding: examples whose prompt and continuation have the same token counts.

inseq attributes a batch by running every step over all its rows at the same positions. Left padding shifts the
rows of shorter prompts, and a row that generated fewer tokens is padded into the attributed steps; inseq 0.7.1
therefore attributes forced (constrained) decoder-only batches one sequence at a time ("Batched constrained
decoding is currently not supported for decoder-only models"), and mixed lengths are what this package's methods
also fall back on. A batch whose rows have equal prompt and equal continuation lengths needs no padding at all: each
row's scores are those it gets alone (measured on the demo GPT-2 for custom_saliency, saliency, input_x_gradient,
integrated_gradients, block_gradient_x_input, attention and rotary_attention: differences of at most ~2e-6,
float-summation order). Such groups are attributed together, with inseq's one-sequence rule lifted for the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import inseq

Item = TypeVar("Item")


def token_lengths(attribution_model: inseq.models.AttributionModel, prompt: str, text: str) -> tuple[int, int]:
    """(prompt tokens, continuation tokens) as inseq encodes them (decoder-only: ``text`` includes the prompt)."""
    prompt_tokens = attribution_model.encode(prompt).input_ids.shape[1]
    if attribution_model.is_encoder_decoder:
        return prompt_tokens, attribution_model.encode(text, as_targets=True).input_ids.shape[1]
    return prompt_tokens, attribution_model.encode(text).input_ids.shape[1] - prompt_tokens


def equal_length_groups(keys: Sequence[tuple[int, int]], items: Sequence[Item], size: int) -> list[list[Item]]:
    """``items`` grouped by equal ``keys``, each group cut into chunks of at most ``size``, in order of first
    appearance (so the grouping is the same whenever the same items come in the same order)."""
    groups: dict[tuple[int, int], list[Item]] = {}
    for key, item in zip(keys, items, strict=True):
        groups.setdefault(key, []).append(item)
    return [group[start : start + size] for group in groups.values() for start in range(0, len(group), size)]


@contextmanager
def unpadded_forced_batches(attribution_model: inseq.models.AttributionModel, enabled: bool) -> Iterator[None]:
    """Let ``model.attribute`` batch forced decoder-only texts (only call it on equal-length groups).

    inseq's ``validate_attribute_args`` sets the batch size to 1 when generated texts are given to a decoder-only
    model; for the duration of the block it is told there are none (its other checks run unchanged). The model's
    own method is put back afterwards, whatever happens.
    """
    if not enabled or attribution_model.is_encoder_decoder:
        yield
        return
    had_own = "validate_attribute_args" in vars(attribution_model)
    previous = attribution_model.validate_attribute_args

    def validate(*args: Any, **kwargs: Any) -> int:
        kwargs["has_generated_texts"] = False
        return previous(*args, **kwargs)

    attribution_model.validate_attribute_args = validate
    try:
        yield
    finally:
        if had_own:
            attribution_model.validate_attribute_args = previous
        else:
            del attribution_model.validate_attribute_args

"""Three fixes to inseq 0.7.1's model wrapper, applied by ``import inseq_ext`` (:func:`install_inseq_compat`).

They sit in inseq's model wrapper, before any method runs, so they hold for every attribution method, ours and
inseq's built-ins, and for inseq's own CLI. Each wraps one method of :class:`inseq.models.AttributionModel` or
:class:`inseq.models.HuggingfaceModel`; installing twice changes nothing, and :func:`uninstall_inseq_compat` (or
the :func:`without_inseq_compat` block) puts inseq's own methods back.

**1. Prompts of tokenizers that add a BOS token** (``AttributionModel.validate_attribute_args``).
For a decoder-only model inseq generates, decodes each full sequence to text and asserts that the text starts
with the prompt (``Forced generations with decoder-only models must start with the input texts``), then
re-encodes that text to get the tokens it attributes. The decoding does not give the prompt back when:

* the tokenizer prepends a BOS token (Llama 2/3, Mistral, Gemma): a single prompt is decoded with its special
  tokens, ``'<s>The first president of America is George Washington.</s>'``, which does not start with
  ``'The first president of America is'`` (inseq issues #214, #271, #278), so every method fails on such models;
* several prompts are decoded with ``skip_special_tokens=True``, which also drops the special tokens the prompt
  itself contains (chat templates: ``<|im_start|>``, ``<|user|>`` ...).

The wrapper repairs the text where the check would fail: it decodes the prompt's own tokens the ways inseq may
have (with and without the tokenizer's special tokens, keeping or skipping special tokens), and when the generated
text starts with one of these renderings it replaces that start by the prompt text itself. The text then reads
``prompt + continuation``; re-encoding it adds the BOS once, as it did for the prompt, so inseq attributes exactly
the tokens the model generated, one BOS included. Texts that already start with their prompt (GPT-2, batched
prompts without special tokens, forced targets written without the BOS) are not touched, and a text that starts
with none of the renderings is left for inseq's assertion as before.

Why here: the comparison is the one place that has both the prompt texts and the generated texts. The decoding
in ``generate`` cannot know the prompt's text: inseq drops one of two leading BOS tokens of a single prompt, so
``'<s>Hi'`` and ``'Hi'`` reach ``generate`` as the same tokens, and each needs a different text to pass.

**2. A length check before generating** (``AttributionModel.attribute``).
A prompt plus its new tokens (or a forced target) longer than the model can take raises a ``ValueError`` naming
both numbers before anything runs (:func:`inseq_ext.generation_length.check_generation_length`), instead of an
``IndexError`` in the position embeddings or a misleading error after inseq silently truncated the text. The
wrapper also passes inseq copies of the prompt/target lists, which inseq would otherwise edit in place (it writes
the BOS string into empty prompts, and the repair above writes into the generated texts).

**3. Models dispatched by accelerate** (the ``HuggingfaceModel.device`` setter).
inseq moves the model to its device with ``model.to(device)`` unless the model has an ``hf_device_map``. Models
given accelerate hooks by ``cpu_offload``, ``disk_offload`` or ``attach_align_device_hook`` have none: their
offloaded weights are on the ``meta`` device between calls, so ``.to()`` fails ("Cannot copy out of meta tensor")
and would anyway undo the placement accelerate manages. The wrapper leaves such models where they are, as inseq
does for models with a device map; inputs go to inseq's device and accelerate's hooks move them on.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from inseq.models import AttributionModel, HuggingfaceModel
from inseq.utils import check_device

from .attr.model_state import is_dispatched
from .generation_length import check_generation_length

logger = logging.getLogger(__name__)

_MARK = "__inseq_ext_compat__"


def repair_prompt_prefixes(model: Any, input_texts: list[str], generated_texts: list[str]) -> list[int]:
    """Make each generated text start with its prompt where only the prompt's decoding differs (in place).

    Args:
        model: inseq's (decoder-only) model wrapper.
        input_texts: The prompts, as inseq attributes them.
        generated_texts: Generated (or forced) texts, one per prompt; rows that need it are rewritten.

    Returns:
        The indices of the rewritten rows.
    """
    mismatched = [idx for idx in range(len(input_texts)) if not generated_texts[idx].startswith(input_texts[idx])]
    if not mismatched:
        return []
    # The prompt tokens as inseq encoded them for generate (with or without the tokenizer's special tokens), with
    # their left padding (as in a generated batch) and without it (as in a text written by hand).
    encodings = [model.encode(input_texts, add_special_tokens=flag) for flag in (True, False)]
    repaired = []
    for idx in mismatched:
        rows = [encoding.input_ids[idx] for encoding in encodings]
        rows += [row[encoding.attention_mask[idx].bool()] for row, encoding in zip(rows, encodings, strict=True)]
        renderings = {model.decode(row[None], skip_special_tokens=skip)[0] for row in rows for skip in (False, True)}
        # The longest rendering that fits is the most specific one (an empty one would match anything).
        for rendering in sorted(filter(None, renderings), key=len, reverse=True):
            if generated_texts[idx].startswith(rendering):
                generated_texts[idx] = input_texts[idx] + generated_texts[idx][len(rendering) :]
                repaired.append(idx)
                logger.debug("Generated text %d starts with the prompt decoded as %r; rewritten.", idx, rendering)
                break
    return repaired


def _repairing_validate(original: Callable[..., int]) -> Callable[..., int]:
    @functools.wraps(original)
    def validate_attribute_args(self, input_texts, generated_texts, *args: Any, **kwargs: Any) -> int:
        if not self.is_encoder_decoder and isinstance(generated_texts, list) and isinstance(input_texts, list):
            repair_prompt_prefixes(self, input_texts, generated_texts)
        return original(self, input_texts, generated_texts, *args, **kwargs)

    return validate_attribute_args


def check_attribute_lengths(model: Any, arguments: dict[str, Any]) -> None:
    """The length check of ``model.attribute`` (arguments by name, as ``attribute`` received them)."""
    if getattr(model, "tokenizer", None) is None or getattr(getattr(model, "model", None), "config", None) is None:
        return
    input_texts = arguments.get("input_texts")
    if not input_texts:
        return
    generated_texts = arguments.get("generated_texts")
    generation_args = arguments.get("generation_args") or {}
    add_special_tokens = not arguments.get("skip_special_tokens", False)
    common = {"add_special_tokens": add_special_tokens}
    if generated_texts is None or arguments.get("generate_from_target_prefix", False):
        check_generation_length(model, input_texts, generation_args=generation_args, **common)
    if generated_texts is not None:
        check_generation_length(model, input_texts, generated_texts=generated_texts, **common)


def _checked_attribute(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def attribute(self, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        for name in ("input_texts", "generated_texts"):
            if isinstance(bound.arguments.get(name), list):
                bound.arguments[name] = list(bound.arguments[name])
        named = {**bound.arguments, **bound.arguments.get("kwargs", {})}
        check_attribute_lengths(self, named)
        return original(*bound.args, **bound.kwargs)

    return attribute


def _dispatch_aware_device(original: property) -> property:
    @functools.wraps(original.fset)
    def set_device(self, new_device: str) -> None:
        if getattr(self, "device_map", None) is None and is_dispatched(getattr(self, "model", None)):
            check_device(new_device)
            self._device = new_device  # where inputs go; accelerate's hooks move them on to each module's device
            return
        original.fset(self, new_device)

    return _WrappedProperty(original.fget, set_device, original.fdel, original.__doc__)


class _WrappedProperty(property):
    """A property whose setter is wrapped (a subclass, so that it can carry the marks functions carry)."""


_PATCHES: tuple[tuple[type, str, Callable[[Any], Any]], ...] = (
    (AttributionModel, "attribute", _checked_attribute),
    (AttributionModel, "validate_attribute_args", _repairing_validate),
    (HuggingfaceModel, "device", _dispatch_aware_device),
)


def install_inseq_compat() -> None:
    """Wrap inseq's ``attribute``, ``validate_attribute_args`` and ``device`` setter (once; idempotent)."""
    for owner, name, make_wrapper in _PATCHES:
        current = owner.__dict__[name]
        if getattr(current, _MARK, False):
            continue
        wrapper = make_wrapper(current)
        wrapper.__wrapped__ = current
        setattr(wrapper, _MARK, True)
        setattr(owner, name, wrapper)


def uninstall_inseq_compat() -> None:
    """Put inseq's own methods back (for comparisons and tests)."""
    for owner, name, _ in _PATCHES:
        current = owner.__dict__[name]
        if getattr(current, _MARK, False):
            setattr(owner, name, current.__wrapped__)


def inseq_compat_installed() -> bool:
    """Whether every wrapper is in place."""
    return all(getattr(owner.__dict__[name], _MARK, False) for owner, name, _ in _PATCHES)


@contextmanager
def without_inseq_compat() -> Iterator[None]:
    """Run a block with inseq's own methods (e.g. to compare with inseq's behaviour); reinstalled afterwards."""
    was_installed = inseq_compat_installed()
    uninstall_inseq_compat()
    try:
        yield
    finally:
        if was_installed:
            install_inseq_compat()

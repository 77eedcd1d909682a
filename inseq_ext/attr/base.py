"""Shared base class of every attribution method in this package.

Methods plug into inseq's own machinery: :class:`ExtFeatureAttribution` is a
:class:`inseq.attr.FeatureAttribution`, so inseq's generation-aware loop, output classes, aggregation, ``show``
and ``save``/``load`` all apply unchanged. The base class adds three things:

* every batch is attributed inside :func:`~inseq_ext.attr.model_state.preserved_model_state`, and hooks are
  registered through :attr:`hooks`, so the user's model comes back exactly as it was, on success and on error;
* two extension points around the batch, :meth:`begin_batch` and :meth:`end_batch`, that subclasses use to set up
  and release work shared by all steps (one forward pass for all generation steps, captured activations);
* batches in which sequences finish at different steps work for decoder-only models too (see
  :meth:`prepare_and_attribute` and :meth:`filtered_attribute_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from inseq.attr import FeatureAttribution
from inseq.attr.feat.attribution_utils import check_attribute_positions
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch, FeatureAttributionOutput, FeatureAttributionStepOutput
from inseq.utils import Registry

from .model_state import HookSet, preserved_model_state
from .precision import upcast_logits


class ExtFeatureAttribution(FeatureAttribution, Registry):
    """Base of the package's methods: guaranteed model restore, batch-level set-up and decoder-only filtering.

    Subclasses define ``method_name`` (their key in inseq's registry) and ``attribute_step``, and list in
    ``option_names`` the keyword arguments of ``model.attribute`` they take (what ``get_attribution_args`` keeps;
    :func:`~inseq_ext.attr.method_args.check_attribution_kwargs` names them when an unknown one is given).
    Intermediate base classes list :class:`~inseq.utils.Registry` among their bases, as inseq's do, so the registry
    skips them.
    """

    option_names: tuple[str, ...] = ()

    def __init__(self, attribution_model, hook_to_model: bool = True, **kwargs) -> None:
        super().__init__(attribution_model, hook_to_model=hook_to_model, **kwargs)
        self.hooks: HookSet | None = None
        self.current_step: int | None = None
        self.current_rows: torch.Tensor | None = None

    def begin_batch(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        steps: range,
        attribute_target: bool,
        attribution_args: dict[str, Any],
        attributed_fn_args: dict[str, Any],
    ) -> None:
        """Called once per batch, before the first step, inside the model-state guard. No-op by default.

        ``steps`` are the generation steps inseq's loop will attribute (see :func:`planned_steps`).
        """

    def end_batch(self) -> None:
        """Called once per batch after the last step (also after an error). Releases what :meth:`begin_batch` made."""

    def attribute(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        **kwargs: Any,
    ) -> FeatureAttributionOutput:
        """inseq's generation-aware attribution loop, run inside a guard that restores the model afterwards."""
        with preserved_model_state(self.attribution_model.model) as hooks:
            self.hooks = hooks
            # bfloat16/float16 models: step functions (softmax over the vocabulary) run on float32 logits.
            upcast_logits(self.attribution_model.model, hooks)
            try:
                self.begin_batch(
                    batch,
                    attributed_fn,
                    steps=planned_steps(batch, self.attribution_model.is_encoder_decoder, **kwargs),
                    attribute_target=kwargs.get("attribute_target", False),
                    attribution_args=kwargs.get("attribution_args", {}),
                    attributed_fn_args=kwargs.get("attributed_fn_args", {}),
                )
                return super().attribute(batch, attributed_fn, **kwargs)
            finally:
                self.end_batch()
                self.hooks = None
                self.current_step = self.current_rows = None

    def prepare_and_attribute(self, sources, targets, *args: Any, batch_size: int | None = None, **kwargs: Any):
        """inseq's batch preparation and attribution, one sequence at a time where right-alignment would break.

        inseq left-pads decoder-only batches and attributes the same positions of every row, which assumes every
        sequence generated the same number of tokens. When one sequence ends before the others its padding
        reaches into the attributed steps: inseq 0.7.1 then fails in its filtering, and even once that is fixed its
        per-sequence assembly picks the wrong steps. Such batches are attributed one sequence at a time, so each
        sequence gets exactly the attribution it gets alone. Batches of equal generated length stay batched.
        """
        if self._generated_lengths_differ(sources, targets, kwargs.get("skip_special_tokens", False)):
            batch_size = 1
        return super().prepare_and_attribute(sources, targets, *args, batch_size=batch_size, **kwargs)

    def _generated_lengths_differ(self, sources, targets, skip_special_tokens: bool) -> bool:
        if self.attribution_model.is_encoder_decoder or isinstance(sources, str) or len(sources) < 2:
            return False

        def length(text: str) -> int:
            return self.attribution_model.encode(text, add_special_tokens=not skip_special_tokens).input_ids.shape[1]

        return len({length(target) - length(source) for source, target in zip(sources, targets, strict=True)}) > 1

    def filtered_attribute_step(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        target_ids: torch.Tensor,
        attributed_fn: Callable[..., torch.Tensor],
        target_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> FeatureAttributionStepOutput:
        """One attribution step over the sequences of the batch that have not finished yet.

        inseq 0.7.1 filters finished sequences out and puts NaN rows back in their place, but its re-insertion
        reads ``batch.sources``, which decoder-only batches lack (``AttributeError: 'DecoderOnlyBatch' object has
        no attribute 'sources'`` as soon as one of several prompts ends before the others). Here the filtering is
        done before calling inseq's step and the NaN rows are put back by :func:`scatter_active_rows`, the same way
        for both model kinds. :attr:`current_step` and :attr:`current_rows` (indices of the attributed rows in the
        full batch) are set for ``attribute_step``.
        """
        self.current_step = batch.max_generation_length
        active = None if target_attention_mask is None else target_attention_mask.reshape(-1).bool()
        if active is None or bool(active.all()):
            self.current_rows = torch.arange(target_ids.shape[0])
            return super().filtered_attribute_step(batch, target_ids, attributed_fn, None, **kwargs)
        self.current_rows = active.nonzero().reshape(-1)
        step_output = super().filtered_attribute_step(
            batch.select_active(target_attention_mask), target_ids[active], attributed_fn, None, **kwargs
        )
        scatter_active_rows(step_output, active)
        return step_output


def planned_steps(
    batch: DecoderOnlyBatch | EncoderDecoderBatch,
    is_encoder_decoder: bool,
    attr_pos_start: int | None = None,
    attr_pos_end: int | None = None,
    **_: Any,
) -> range:
    """The generation steps inseq's loop visits for a batch (same bounds as ``FeatureAttribution.attribute``)."""
    start, end = check_attribute_positions(batch.max_generation_length, attr_pos_start, attr_pos_end)
    if is_encoder_decoder:
        end = min(end + 1, batch.max_generation_length)
    return range(start, end)


def scatter_active_rows(step_output: FeatureAttributionStepOutput, active: torch.Tensor) -> None:
    """Expand a step output computed on the ``active`` rows back to the full batch, with NaN in finished rows."""

    def expand(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        full = torch.full((active.shape[0], *tensor.shape[1:]), float("nan"), dtype=tensor.dtype)
        full[active] = tensor.reshape(-1, *tensor.shape[1:]).to(full.device)
        return full

    step_output.source_attributions = expand(step_output.source_attributions)
    step_output.target_attributions = expand(step_output.target_attributions)
    for scores in (step_output.step_scores, step_output.sequence_scores):
        for name, tensor in (scores or {}).items():
            scores[name] = expand(tensor)

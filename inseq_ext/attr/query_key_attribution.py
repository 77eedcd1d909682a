"""Base class of the methods computed from the attention of one captured forward pass.

``rotary_attention`` and ``attention_rollout`` read nothing from a generation step but its attention rows, which one
forward pass over the final sequences gives for every step at once (:class:`~inseq_ext.attr.attention_pass.
AttentionPass`). inseq runs its own ``attention`` as a *final-step* method: its loop calls the method once, at the
last step, and splits the output into steps; it therefore refuses ``step_scores`` for it, and attributes
encoder-decoder batches one sequence at a time. These methods take whichever of inseq's two paths fits the call:

* per step (step scores asked for, or an encoder-decoder): inseq's loop visits every step, each reads its rows from
  the pass (run at the first step), and ``step_scores`` (``probability``, ``logprob``, ``entropy``, ...) are computed
  per step from the same pass's logits (``out.show()`` shows them under the heatmap); encoder-decoder batches stay
  batched;
* final step (decoder-only, no step scores): one call of the loop for all steps, as inseq's ``attention``. inseq's
  per-step bookkeeping re-joins the whole prefix's tokens at every step (quadratic in the prompt length: about half
  the time of a 2,000-token prompt with 32 generated tokens), which this path avoids.

inseq reads :attr:`is_final_step_method` before it sees the step scores (to refuse them), so the attribute is
``False`` between calls and set for the duration of :meth:`prepare_and_attribute`, which receives them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from inseq.data import (
    DecoderOnlyBatch,
    EncoderDecoderBatch,
    FeatureAttributionInput,
    FeatureAttributionOutput,
    FeatureAttributionStepOutput,
)
from inseq.utils import Registry

from .attention_pass import AttentionPass
from .base import ExtFeatureAttribution
from .pass_step_scores import split_step_scores, step_scores_from_output
from .query_key_capture import attention_specs


class QueryKeyAttribution(ExtFeatureAttribution, Registry):
    """Method served by one :class:`AttentionPass` per batch.

    Subclasses define :meth:`step_output` (one step's attributions, per-step path) and :meth:`all_steps_output`
    (every step's, final-step path). There, :attr:`attention_pass` holds the batch's captured pass and
    :attr:`attribute_target` says whether the target prefix of an encoder-decoder is attributed.
    """

    def __init__(self, attribution_model, **kwargs: Any) -> None:
        attention_specs(attribution_model.model)  # fails early, naming the supported families
        super().__init__(attribution_model, **kwargs)
        # As inseq's ``attention``: the scores do not depend on the attributed function or on how tokens were chosen.
        self.use_predicted_target = False
        self.attention_pass: AttentionPass | None = None
        self.attribute_target = False

    def begin_batch(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        steps: range,
        attribute_target: bool,
        attribution_args: dict[str, Any],
        attributed_fn_args: dict[str, Any],
    ) -> None:
        self.attention_pass = AttentionPass(self.attribution_model, batch, steps, self.forward_batch_embeds)
        self.attribute_target = attribute_target

    def end_batch(self) -> None:
        if self.attention_pass is not None:
            self.attention_pass.release()
        self.attention_pass = None

    def prepare_and_attribute(
        self, sources: FeatureAttributionInput, targets: FeatureAttributionInput, *args: Any, **kwargs: Any
    ) -> FeatureAttributionOutput:
        """inseq's preparation and loop, on its final-step path when nothing needs the per-step one."""
        self.is_final_step_method = not kwargs.get("step_scores") and not self.attribution_model.is_encoder_decoder
        try:
            return super().prepare_and_attribute(sources, targets, *args, **kwargs)
        finally:
            self.is_final_step_method = False

    def step_output(self, step: int, rows: torch.Tensor) -> FeatureAttributionStepOutput:
        """Attributions of generation ``step`` for the batch rows ``rows``: ``(rows, keys, ...)`` tensors."""
        raise NotImplementedError

    def all_steps_output(self, rows: torch.Tensor) -> FeatureAttributionStepOutput:
        """Decoder-only attributions of every attributed step: ``target_attributions`` of shape ``(rows, prefix up
        to the last step, steps, ...)``, split into steps by :meth:`_build_multistep_output_from_single_step`."""
        raise NotImplementedError

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] = {}
    ) -> FeatureAttributionStepOutput:
        """The current step's attributions, or every step's on the final-step path, read from the captured pass."""
        if self.is_final_step_method:
            return self.all_steps_output(self.current_rows)
        return self.step_output(self.current_step, self.current_rows)

    def _build_multistep_output_from_single_step(
        self,
        single_step_output: FeatureAttributionStepOutput,
        attr_pos_start: int,
        attr_pos_end: int,
    ) -> list[FeatureAttributionStepOutput]:
        """inseq's split of a final-step output into steps, reading each step's column of the compact output."""
        steps = self.attention_pass.steps
        if list(steps) != list(range(attr_pos_start, attr_pos_end)):
            raise RuntimeError(f"Attributed steps {steps} differ from inseq's [{attr_pos_start}, {attr_pos_end}).")
        prefix = single_step_output.prefix
        outputs = []
        for column, position in enumerate(steps):
            step_output = single_step_output.clone_empty()
            step_output.prefix = [tokens[:position] for tokens in prefix]
            # The last step's target is the one inseq's loop attached; earlier targets are read from the prefix.
            step_output.target = (
                single_step_output.target if position == steps.stop - 1 else [[tokens[position]] for tokens in prefix]
            )
            step_output.target_attributions = single_step_output.target_attributions[:, :position, column]
            outputs.append(step_output)
        return outputs

    @property
    def is_first_step(self) -> bool:
        """Whether the current step is the batch's first attributed step (where sequence-level scores are attached)."""
        return self.current_step == self.attention_pass.steps.start

    def filtered_attribute_step(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        target_ids: torch.Tensor,
        attributed_fn: Callable[..., torch.Tensor],
        target_attention_mask: torch.Tensor | None = None,
        step_scores: list[str] = [],
        step_scores_args: dict[str, Any] = {},
        **kwargs: Any,
    ) -> FeatureAttributionStepOutput:
        """The step's attributions, with the step scores that read only logits served from the captured pass."""
        served, left_to_inseq = split_step_scores(list(step_scores))
        self.attention_pass.run(with_logits=bool(served))
        step_output = super().filtered_attribute_step(
            batch,
            target_ids,
            attributed_fn,
            target_attention_mask,
            step_scores=left_to_inseq,
            step_scores_args=step_scores_args,
            **kwargs,
        )
        if not served:
            return step_output
        active = torch.ones(target_ids.shape[0], dtype=torch.bool)
        if target_attention_mask is not None:
            active = target_attention_mask.reshape(-1).bool().cpu()
        step_batch = batch if bool(active.all()) else batch.select_active(target_attention_mask)
        scores = step_scores_from_output(
            self.attribution_model,
            self.attention_pass.step_forward_output(self.current_step, self.current_rows),
            step_batch,
            target_ids.reshape(-1, 1)[active.to(target_ids.device)],
            served,
            step_scores_args,
        )
        for name, values in scores.items():
            full = torch.full((active.shape[0],), float("nan"), dtype=values.dtype)
            full[active] = values.reshape(-1)
            scores[name] = full
        # In the order asked for, as inseq lists them.
        step_output.step_scores = {name: scores.get(name, step_output.step_scores.get(name)) for name in step_scores}
        return step_output

"""Base class of the methods computed from the attention of one captured forward pass.

``rotary_attention`` and ``attention_rollout`` read nothing from a generation step but its attention rows, which one
forward pass over the final sequences gives for every step at once (:class:`~inseq_ext.attr.attention_pass.
AttentionPass`). Unlike inseq's ``attention``, which inseq runs as a *final-step* method (one call for the whole
sequence, and therefore no ``step_scores``), these methods are ordinary per-step methods for inseq's loop: the pass
runs at the first step and every step reads its own rows from it, so ``step_scores`` (``probability``, ``logprob``,
``entropy``, ...) are computed per step, from the same pass's logits, and come out with the attributions
(``out.show()`` shows them under the heatmap). Encoder-decoder batches are attributed batched, where inseq's final-step
path falls back to one sequence at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch, FeatureAttributionStepOutput
from inseq.utils import Registry

from .attention_pass import AttentionPass
from .base import ExtFeatureAttribution
from .pass_step_scores import split_step_scores, step_scores_from_output
from .query_key_capture import attention_specs


class QueryKeyAttribution(ExtFeatureAttribution, Registry):
    """Method served by one :class:`AttentionPass` per batch; subclasses define ``attribute_step``.

    In ``attribute_step``, :attr:`attention_pass` holds the batch's captured pass, :attr:`current_step` the step and
    :attr:`current_rows` the batch rows (unfinished sequences) to return, and :attr:`attribute_target` whether the
    target prefix of an encoder-decoder is attributed.
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

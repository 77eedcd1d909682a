"""One forward pass over a batch's final sequences, with every attention layer's queries and keys captured.

The attention methods of this package (``rotary_attention``, ``attention_rollout``) need nothing from a step but its
row of attention, and in a causal decoder the row of position ``t - 1`` in a pass over the full sequences is exactly
the attention the model computes when it generates token ``t`` (KV-cached or not). So one pass serves every step:
:class:`AttentionPass` runs it with the model's own attention kernel (SDPA, flash, eager), through inseq's own
``get_forward_output`` (the same inputs, positions and masks as inseq's ``attention`` method), and keeps the captured
queries and keys (:class:`~inseq_ext.attr.query_key_capture.QueryKeyCapture`) and, when step scores are asked for,
the logits of the attributed steps.
"""

from __future__ import annotations

import inspect

import torch
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch
from transformers.utils import ModelOutput

from .model_state import HookSet
from .query_key_capture import QueryKeyCapture, Stack


class AttentionPass:
    """The captured forward pass of one batch, serving the attention rows and logits of its attributed steps.

    Args:
        attribution_model: inseq's model wrapper.
        batch: The full batch inseq attributes (prompt/source and every target token).
        steps: The generation steps inseq's loop will attribute; step ``t`` reads decoder position ``t - 1``.
        use_embeddings: Feed the batch's input embeddings (inseq's ``forward_batch_embeds``) rather than its ids.

    The pass runs on the first call of :meth:`run`, over the decoder prefix up to the last attributed step.
    """

    def __init__(
        self,
        attribution_model,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        steps: range,
        use_embeddings: bool = True,
    ) -> None:
        if not steps or steps.start < 1:
            raise ValueError(f"Attributed steps must be a non-empty range of positions >= 1; got {steps}.")
        self.attribution_model = attribution_model
        self.steps = steps
        self.use_embeddings = use_embeddings
        # Positions 0 ... last step - 1: the last target token is never a query, and causality hides it from the rest.
        self.batch = batch[: steps.stop - 1]
        self.is_encoder_decoder = attribution_model.is_encoder_decoder
        self.capture: QueryKeyCapture | None = None
        self.logits: torch.Tensor | None = None
        self.first_logit_position = 0

    @property
    def query_positions(self) -> torch.Tensor:
        """Decoder position of each attributed step, in order: ``step - 1``."""
        return torch.arange(self.steps.start - 1, self.steps.stop - 1)

    def column(self, step: int) -> int:
        """Index of ``step`` among the attributed steps (its row in :attr:`query_positions`)."""
        return step - self.steps.start

    def key_mask(self, stack: Stack) -> torch.Tensor | None:
        """The padding mask over the keys of ``stack``: the source's for encoder and cross-attention."""
        if self.is_encoder_decoder:
            return self.batch.sources.attention_mask if stack != "decoder" else self.batch.targets.attention_mask
        return self.batch.attention_mask

    def run(self, with_logits: bool = False) -> None:
        """Run the captured pass (once; ``with_logits`` again later re-runs it to get the logits)."""
        if self.capture is not None and (self.logits is not None or not with_logits):
            return
        model = self.attribution_model.model
        kwargs: dict = {"use_cache": False}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            # The language-model head runs only where it is read: the attributed steps' positions, or one position.
            if with_logits:
                self.first_logit_position = self.steps.start - 1
                kwargs["logits_to_keep"] = self.query_positions
            else:
                kwargs["logits_to_keep"] = 1
        hooks = HookSet()  # its own: the capture hooks come off right after the pass, before inseq's loop goes on
        try:
            capture = QueryKeyCapture(model, hooks)
            with torch.no_grad():
                output = self.attribution_model.get_forward_output(
                    self.batch, use_embeddings=self.use_embeddings, **kwargs
                )
        finally:
            hooks.remove_all()
        self.capture = capture
        if with_logits:
            self.logits = output.logits.detach()
            self._output_type = type(output)

    def attention(self, stack: Stack, query_positions: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """:meth:`QueryKeyCapture.attention` of ``stack`` with the batch's own padding mask."""
        self.run()
        return self.capture.attention(query_positions, attention_mask=self.key_mask(stack), stack=stack, **kwargs)

    def step_forward_output(self, step: int, rows: torch.Tensor) -> ModelOutput:
        """The model output a forward pass over the prefix of ``step`` gives, for the batch rows ``rows``: the logits
        of its last position (what inseq's step functions read), as a one-position ``logits`` tensor."""
        self.run(with_logits=True)
        position = step - 1 - self.first_logit_position
        return self._output_type(logits=self.logits[rows.to(self.logits.device), position : position + 1])

    def release(self) -> None:
        """Free the captured tensors and logits."""
        self.capture = self.logits = None

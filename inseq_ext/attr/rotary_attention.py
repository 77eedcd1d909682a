r"""``rotary_attention``: attention weights rebuilt from queries and keys, for models that return none (SDPA/flash)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from inseq.data import DecoderOnlyBatch, EncoderDecoderBatch, FeatureAttributionStepOutput
from inseq.data.attribution import MultiDimensionalFeatureAttributionStepOutput

from .base import ExtFeatureAttribution
from .model_state import HookSet
from .query_key_capture import QueryKeyCapture, attention_spec


class RotaryAttentionAttribution(ExtFeatureAttribution):
    r"""Attention weights of every layer and head, rebuilt from the model's rotated queries and keys.

    For generated token :math:`t` (predicted at position :math:`t - 1`), prefix token :math:`i`, layer :math:`l`
    and head :math:`h` (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762; rotary embedding :math:`R_p` of
    Su et al., 2021, RoFormer, https://arxiv.org/abs/2104.09864):

    .. math::
        a_{i,t,l,h} = \operatorname{softmax}_i\left(s_l \, (R_{t-1} q^{(l,h)}_{t-1})^\top
        (R_i k^{(l,g(h))}_i) + M_{t-1,i}\right)

    with :math:`s_l` the model's scaling, :math:`g(h)` the key head shared by query head :math:`h` (grouped-query
    attention) and :math:`M` the causal, padding and sliding-window mask. These are the weights inseq's
    ``attention`` method reads from ``output_attentions``, but they come from **one** forward pass with the model's
    own attention implementation (SDPA, flash, ...): hooks (see :mod:`~inseq_ext.attr.query_key_capture`) record
    the queries and keys of every layer, and only the rows of the attributed steps are rebuilt, so no
    ``tokens x tokens`` matrix per layer is ever materialised. With a causal mask, the row of position :math:`t - 1`
    in that pass is exactly the attention the model computes at that step of KV-cached generation.

    Like inseq's ``attention``, the method does not depend on the attributed function or on how the tokens were
    chosen (greedy, sampling or beam search: the weights of the final sequence are the same), runs once per batch
    (a final-step method, so ``step_scores`` are refused as for ``attention``), and returns the same layout:
    ``target_attributions`` of shape ``(prefix, generated tokens, layers, heads)`` per sequence, whose default
    aggregation (``out.aggregate()``, ``out.show()``) is the mean over layers then heads, i.e. the "mean group"
    view. The raw per-layer, per-head scores are the unaggregated tensors
    (``out.sequence_attributions[i].target_attributions``; layer ``l``, head ``h``: ``[..., l, h]``).

    Supported: decoder-only families whose adapter has an :class:`~inseq_ext.adapters.AttentionSpec` (Llama,
    Mistral, Qwen2, Qwen3, GPT-NeoX, Phi, and GPT-2, where there is no rotary embedding and the scores are plain
    :math:`q k^\top`); anything else raises a ``ValueError`` when the method is loaded.
    """

    method_name = "rotary_attention"

    def __init__(self, attribution_model, **kwargs: Any) -> None:
        if attribution_model.is_encoder_decoder:
            raise ValueError(
                "rotary_attention supports decoder-only models; for encoder-decoder models use inseq's 'attention'."
            )
        attention_spec(attribution_model.model)  # fails early, naming the supported families
        super().__init__(attribution_model, **kwargs)
        # As inseq's ``attention``: independent of the attributed function, computed once at the final step.
        self.use_predicted_target = False
        self.is_final_step_method = True
        self.query_steps: range | None = None

    def begin_batch(
        self,
        batch: DecoderOnlyBatch | EncoderDecoderBatch,
        attributed_fn: Callable[..., torch.Tensor],
        steps: range,
        attribute_target: bool,
        attribution_args: dict[str, Any],
        attributed_fn_args: dict[str, Any],
    ) -> None:
        self.query_steps = steps

    def end_batch(self) -> None:
        self.query_steps = None

    def attribute_step(
        self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] = {}
    ) -> MultiDimensionalFeatureAttributionStepOutput:
        """One forward pass over the whole prefix, then the attention rows of every attributed step.

        Returns ``target_attributions`` of shape ``(batch, prefix, steps, layers, heads)``: column ``j`` is step
        ``query_steps[j]`` (:meth:`_build_multistep_output_from_single_step` splits it into inseq's steps).
        """
        (input_embeds,) = attribute_fn_main_args["inputs"]
        attention_mask = attribute_fn_main_args["additional_forward_args"][3]
        model = self.attribution_model.model
        # A HookSet of its own: the capture hooks come off right after the pass, before inseq's loop goes on.
        hooks = HookSet()
        # Only the attention layers are needed: the language-model head runs on one position (where the model
        # takes ``logits_to_keep``), not on every position of a long prompt.
        head_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        try:
            capture = QueryKeyCapture(model, hooks)
            with torch.no_grad():
                model(inputs_embeds=input_embeds, attention_mask=attention_mask, use_cache=False, **head_kwargs)
        finally:
            hooks.remove_all()
        positions = torch.tensor([step - 1 for step in self.query_steps])
        weights = capture.attention(query_positions=positions, attention_mask=attention_mask)
        # (batch, layers, heads, steps, prefix) -> inseq's (batch, prefix, steps, layers, heads)
        # Kept in float32 (the dtype of the softmax): a bfloat16 copy would round every weight to 8 bits.
        target = weights.permute(0, 4, 3, 1, 2)
        return MultiDimensionalFeatureAttributionStepOutput(
            source_attributions=None, target_attributions=target, _num_dimensions=2
        )

    def _build_multistep_output_from_single_step(
        self,
        single_step_output: FeatureAttributionStepOutput,
        attr_pos_start: int,
        attr_pos_end: int,
    ) -> list[FeatureAttributionStepOutput]:
        """inseq's split of a final-step output into steps, reading each step's column of the compact output."""
        if single_step_output.step_scores:
            raise ValueError("step_scores are not supported for final step attribution methods.")
        if self.query_steps is None or list(self.query_steps) != list(range(attr_pos_start, attr_pos_end)):
            raise RuntimeError(f"Attributed steps {self.query_steps} differ from [{attr_pos_start}, {attr_pos_end}).")
        prefix = single_step_output.prefix
        steps = []
        for column, position in enumerate(range(attr_pos_start, attr_pos_end)):
            step_output = single_step_output.clone_empty()
            step_output.source = single_step_output.source
            step_output.prefix = [tokens[:position] for tokens in prefix]
            # The last step's target is the one inseq's loop attached; earlier targets are read from the prefix.
            step_output.target = (
                single_step_output.target
                if position == attr_pos_end - 1
                else [[tokens[position]] for tokens in prefix]
            )
            step_output.target_attributions = single_step_output.target_attributions[:, :position, column]
            if single_step_output.sequence_scores is not None:
                step_output.sequence_scores = single_step_output.sequence_scores
            steps.append(step_output)
        single_step_output.step_scores = {}
        return steps

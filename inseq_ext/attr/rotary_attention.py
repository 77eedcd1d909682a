r"""``rotary_attention``: attention weights rebuilt from queries and keys, for models that return none (SDPA/flash)."""

from __future__ import annotations

import torch
from inseq.data.attribution import MultiDimensionalFeatureAttributionStepOutput

from .query_key_attribution import QueryKeyAttribution


class RotaryAttentionAttribution(QueryKeyAttribution):
    r"""Attention weights of every layer and head, rebuilt from the model's (rotated) queries and keys.

    For generated token :math:`t` (predicted at decoder position :math:`t - 1`), key token :math:`i`, layer
    :math:`l` and head :math:`h` (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762; rotary embedding
    :math:`R_p` of Su et al., 2021, RoFormer, https://arxiv.org/abs/2104.09864, where the model has one):

    .. math::
        a_{i,t,l,h} = \operatorname{softmax}_i\left(s_l \, (R_{t-1} q^{(l,h)}_{t-1})^\top
        (R_i k^{(l,g(h))}_i) + b^{(l,h)}_{t-1,i} + M_{t-1,i}\right)

    with :math:`s_l` the model's scaling, :math:`g(h)` the key head shared by query head :math:`h` (grouped-query
    attention), :math:`b` T5's relative position bias (zero elsewhere) and :math:`M` the causal, padding and
    sliding-window mask (:mod:`~inseq_ext.attr.attention_scores`). These are the weights inseq's ``attention`` method
    reads from ``output_attentions``, but they come from **one** forward pass with the model's own attention
    implementation (SDPA, flash, ...): hooks (:mod:`~inseq_ext.attr.query_key_capture`) record the queries and keys
    of every layer, and only the rows of the attributed steps are rebuilt, so no ``tokens x tokens`` matrix per layer
    is materialised for decoder-only models. With a causal mask, the row of position :math:`t - 1` in that pass is
    exactly the attention the model computes at that step of KV-cached generation.

    Output, as inseq's ``attention`` (same layout and numbers, checked against it on eager copies):

    * decoder-only: ``target_attributions`` of shape ``(prefix, generated tokens, layers, heads)`` per sequence;
    * encoder-decoder: ``source_attributions`` = cross-attention ``(source, generated, layers, heads)``;
      ``target_attributions`` = decoder self-attention ``(target prefix, generated, layers, heads)`` with
      ``attribute_target=True``; ``sequence_scores["encoder_self_attentions"]`` ``(source keys, source queries,
      layers, heads)`` and, without ``attribute_target``, ``sequence_scores["decoder_self_attentions"]``.

    The default aggregation (``out.aggregate()``, ``out.show()``) is the mean over layers then heads (the "mean
    group" view); the raw per-layer, per-head scores are the unaggregated tensors
    (``out.sequence_attributions[i].target_attributions[..., l, h]``).

    Like inseq's ``attention`` the weights do not depend on the attributed function or on how the tokens were chosen
    (greedy, sampling or beam search: the weights of the final sequence are the same). Unlike it, the method serves
    inseq's per-step loop where needed (see :mod:`~inseq_ext.attr.query_key_attribution`), so
    ``step_scores=["probability", ...]`` work and are computed from the same pass's logits.

    Supported: the families whose adapter describes their attention (Llama, Mistral, Qwen2, Qwen3, GPT-NeoX, Phi,
    GPT-2 without rotary embedding; BART, Marian, mBART and T5 encoder-decoders); anything else raises a
    ``ValueError`` naming them when the method is loaded.
    """

    method_name = "rotary_attention"

    def begin_batch(self, batch, attributed_fn, steps, attribute_target, attribution_args, attributed_fn_args) -> None:
        super().begin_batch(batch, attributed_fn, steps, attribute_target, attribution_args, attributed_fn_args)
        self.weights: dict[str, torch.Tensor] = {}

    def end_batch(self) -> None:
        super().end_batch()
        self.weights = {}

    def _rebuild(self) -> dict[str, torch.Tensor]:
        """Every tensor the batch's steps read, in inseq's ``(batch, keys, queries, layers, heads)`` layout."""
        attention_pass = self.attention_pass
        rows = attention_pass.query_positions
        weights = {}
        whole_decoder = attention_pass.is_encoder_decoder and not self.attribute_target
        decoder = attention_pass.attention("decoder", None if whole_decoder else rows)
        weights["decoder"] = decoder.permute(0, 4, 3, 1, 2)
        if attention_pass.is_encoder_decoder:
            weights["cross"] = attention_pass.attention("cross", rows).permute(0, 4, 3, 1, 2)
            weights["encoder"] = attention_pass.attention("encoder").permute(0, 4, 3, 1, 2)
        return weights

    def _weights(self) -> dict[str, torch.Tensor]:
        if not self.weights:
            self.weights = self._rebuild()
        return self.weights

    def all_steps_output(self, rows: torch.Tensor) -> MultiDimensionalFeatureAttributionStepOutput:
        """Every step's rows: ``(rows, prefix, steps, layers, heads)`` (decoder-only)."""
        return MultiDimensionalFeatureAttributionStepOutput(
            target_attributions=self._weights()["decoder"][rows], _num_dimensions=2
        )

    def step_output(self, step: int, rows: torch.Tensor) -> MultiDimensionalFeatureAttributionStepOutput:
        """The rows of ``step``: ``(rows, keys, layers, heads)`` attributions, sequence scores at the first step."""
        weights, attention_pass = self._weights(), self.attention_pass
        column = attention_pass.column(step)
        if not attention_pass.is_encoder_decoder:
            return MultiDimensionalFeatureAttributionStepOutput(
                target_attributions=weights["decoder"][rows, :step, column], _num_dimensions=2
            )
        sequence_scores = {}
        if self.is_first_step:  # inseq reads sequence-level scores from the first step's output
            sequence_scores["encoder_self_attentions"] = weights["encoder"][rows]
        if self.attribute_target:
            target = weights["decoder"][rows, :step, column]
        else:
            target = None
            if self.is_first_step:
                sequence_scores["decoder_self_attentions"] = weights["decoder"][rows]
        return MultiDimensionalFeatureAttributionStepOutput(
            source_attributions=weights["cross"][rows, :, column],
            target_attributions=target,
            sequence_scores=sequence_scores,
            _num_dimensions=2,
        )

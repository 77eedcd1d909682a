r"""``attention_rollout``: attention rolled out through the layers (Abnar & Zuidema, 2020), from queries and keys."""

from __future__ import annotations

import torch
from inseq.data import CoarseFeatureAttributionStepOutput

from .attention_pass import AttentionPass
from .query_key_attribution import QueryKeyAttribution


def residual_attention(mean_attention: torch.Tensor, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\tilde A = \operatorname{rownorm}(0.5 \bar A + 0.5 I)` for head-averaged attention rows.

    Args:
        mean_attention: ``(batch, queries, keys)`` head-averaged weights (rows of decoder self-attention or of
            encoder self-attention; all-zero rows for queries that see no key).
        query_positions: Key position of each query row (the identity's column); ``None``: row ``i`` is position ``i``.

    Rows are renormalised to sum to 1, which changes only the rows of queries that see no key (they become the
    identity's row).
    """
    n_queries, n_keys = mean_attention.shape[-2:]
    positions = torch.arange(n_queries) if query_positions is None else query_positions
    identity = torch.zeros(n_queries, n_keys, dtype=mean_attention.dtype, device=mean_attention.device)
    identity[torch.arange(n_queries), positions.to(identity.device)] = 1.0
    mixed = 0.5 * mean_attention + 0.5 * identity
    return mixed / mixed.sum(-1, keepdim=True)


def decoder_rollout(attention_pass: AttentionPass, query_positions: torch.Tensor) -> torch.Tensor:
    r"""Rows ``query_positions`` of :math:`\tilde A_L \tilde A_{L-1} \cdots \tilde A_1` over the decoder's layers.

    Computed from the top down, one layer's head-averaged weights at a time: the top layer only at the asked rows,
    every lower layer over all positions (the rows reach every earlier position). Returns ``(batch, queries, keys)``.
    """
    layers = len(attention_pass.capture.stacks["decoder"])
    top = attention_pass.attention("decoder", query_positions, layers=[layers - 1], mean_over_heads=True)[:, 0]
    rows = residual_attention(top, query_positions)
    for layer in reversed(range(layers - 1)):
        mean = attention_pass.attention("decoder", layers=[layer], mean_over_heads=True)[:, 0]
        rows = rows @ residual_attention(mean).to(rows.device)  # layers may sit on different devices
    return rows


def encoder_decoder_rollout(
    attention_pass: AttentionPass, query_positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rollout of an encoder-decoder at the decoder rows ``query_positions``: ``(source, target)`` shares.

    Encoder: :math:`E = \tilde A^{enc}_{L_e} \cdots \tilde A^{enc}_1` (what each encoder output is made of, over the
    source tokens). Decoder layer :math:`l` = self-attention then cross-attention, each with its residual, on the
    decoder rows' mixture :math:`(X, T)` over source and target tokens (start: :math:`X = 0, T = I`):

    .. math::
        (X, T) \leftarrow \tilde A^{self}_l (X, T), \qquad
        (X, T) \leftarrow (0.5 X + 0.5 \bar C_l E,\; 0.5 T)

    with :math:`\bar C_l` the head-averaged cross-attention. Returned: rows ``query_positions`` of the final
    :math:`X` (``(batch, queries, source)``) and :math:`T` (``(batch, queries, target)``); each row of the two
    together sums to 1. Evaluated from the top down with row vectors, so only ``queries x tokens`` products are
    carried through the layers.
    """
    encoder_layers = len(attention_pass.capture.stacks["encoder"])
    encoder = None
    for layer in range(encoder_layers):
        mixed = residual_attention(attention_pass.attention("encoder", layers=[layer], mean_over_heads=True)[:, 0])
        encoder = mixed if encoder is None else mixed.to(encoder.device) @ encoder
    n_target = attention_pass.capture.query_length("decoder")
    rows = torch.arange(len(query_positions))
    target = encoder.new_zeros(encoder.shape[0], len(rows), n_target)
    target[:, rows, query_positions.to(encoder.device)] = 1.0
    source = encoder.new_zeros(encoder.shape[0], len(rows), encoder.shape[-1])
    for layer in reversed(range(len(attention_pass.capture.stacks["decoder"]))):
        cross = attention_pass.attention("cross", layers=[layer], mean_over_heads=True)[:, 0].to(encoder.device)
        source = source + 0.5 * (target @ (cross @ encoder))
        target = 0.5 * target
        self_attention = attention_pass.attention("decoder", layers=[layer], mean_over_heads=True)[:, 0]
        target = target @ residual_attention(self_attention).to(target.device)
    return source, target


class AttentionRolloutAttribution(QueryKeyAttribution):
    r"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers", ACL,
    https://aclanthology.org/2020.acl-main.385/), with the attention rebuilt from queries and keys.

    Each layer's attention, averaged over heads, is mixed with the identity to account for the residual connection
    and renormalised, :math:`\tilde A_l = \operatorname{rownorm}(0.5 \bar A_l + 0.5 I)`, and the layers are
    multiplied through:

    .. math::
        R = \tilde A_L \tilde A_{L-1} \cdots \tilde A_1, \qquad a_{i,t} = R_{t-1,\,i}

    the score of prefix token :math:`i` for generated token :math:`t` is the row of the position that predicts
    :math:`t`. Rows are distributions over the prefix (they sum to 1). The attention weights are the ones
    ``rotary_attention`` rebuilds (:mod:`~inseq_ext.attr.query_key_capture`): the model keeps its SDPA/flash kernel,
    one forward pass serves every step, and they equal the eager model's ``output_attentions``.

    **Encoder-decoders** (BART, Marian, mBART, T5). Abnar & Zuidema define rollout for one stack of self-attention
    layers. Here the same residual model is applied to every attention sublayer of the encoder-decoder's graph, in
    the spirit of the relevance propagation rules of Chefer, Gur & Wolf (2021, "Generic Attention-model
    Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV,
    https://arxiv.org/abs/2103.15679), with attention weights instead of their gradient-weighted ones: the encoder
    is rolled out on its own (:math:`E`), and each decoder layer's self-attention mixes the decoder rows, then its
    cross-attention replaces half of each row by the attended encoder outputs' composition over the source
    (:func:`encoder_decoder_rollout`). A generated token's row splits into ``source_attributions`` (over the source
    tokens) and, with ``attribute_target=True``, ``target_attributions`` (over the target prefix); together they sum
    to 1. Without ``attribute_target`` only the source share is returned.

    Output: inseq's token-level (coarse) output, ``(prefix, generated tokens)`` per sequence (``rotary_attention``'s
    layout without the layer and head axes); the default aggregation leaves the scores as they are. Like
    ``rotary_attention``, served by one pass on inseq's per-step or final-step path, so ``step_scores`` work.

    Cost: one forward pass, then, per layer, the head-averaged attention over all positions (``tokens x tokens`` for
    one key head at a time) and a ``steps x tokens`` by ``tokens x tokens`` product: :math:`O(L H T^2 d)` time,
    :math:`O(T^2)` memory beyond the captured queries and keys.
    """

    method_name = "attention_rollout"

    def begin_batch(self, batch, attributed_fn, steps, attribute_target, attribution_args, attributed_fn_args) -> None:
        super().begin_batch(batch, attributed_fn, steps, attribute_target, attribution_args, attributed_fn_args)
        self.rollout: dict[str, torch.Tensor] = {}

    def end_batch(self) -> None:
        super().end_batch()
        self.rollout = {}

    def _rollout(self) -> dict[str, torch.Tensor]:
        """Rollout rows of every attributed step (computed once per batch): ``(batch, steps, keys)`` each."""
        if not self.rollout:
            attention_pass = self.attention_pass
            positions = attention_pass.query_positions
            if attention_pass.is_encoder_decoder:
                source, target = encoder_decoder_rollout(attention_pass, positions)
                self.rollout = {"source": source, "target": target}
            else:
                self.rollout = {"target": decoder_rollout(attention_pass, positions)}
        return self.rollout

    def all_steps_output(self, rows: torch.Tensor) -> CoarseFeatureAttributionStepOutput:
        """Every step's rollout row: ``(rows, prefix, steps)`` (decoder-only)."""
        return CoarseFeatureAttributionStepOutput(target_attributions=self._rollout()["target"][rows].transpose(1, 2))

    def step_output(self, step: int, rows: torch.Tensor) -> CoarseFeatureAttributionStepOutput:
        """The rollout row of ``step``: ``(rows, prefix)`` target and, for encoder-decoders, ``(rows, source)``."""
        rollout, attention_pass = self._rollout(), self.attention_pass
        column = attention_pass.column(step)
        target = rollout["target"][rows, column, :step]
        if not attention_pass.is_encoder_decoder:
            return CoarseFeatureAttributionStepOutput(target_attributions=target)
        return CoarseFeatureAttributionStepOutput(
            source_attributions=rollout["source"][rows, column],
            target_attributions=target if self.attribute_target else None,
        )

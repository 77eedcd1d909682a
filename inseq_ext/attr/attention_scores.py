r"""Attention weights from queries and keys: rotary embedding, masks and the softmax, as the models compute them.

For layer :math:`l`, query head :math:`h`, query position :math:`i` and key position :math:`j` (Vaswani et al., 2017,
https://arxiv.org/abs/1706.03762):

.. math::
    A^{(l,h)}_{ij} = \operatorname{softmax}_j\left(s_l \, \tilde q^{(l,h)}_i \cdot \tilde k^{(l,g(h))}_j
    + b^{(l,h)}_{ij} + M_{ij}\right)

with :math:`s_l` the module's own scaling (usually :math:`d^{-1/2}`; 1 for T5), :math:`g(h)` the key head shared by
query head :math:`h` under grouped-/multi-query attention, :math:`b` an additive score bias where the model has one
(T5's relative position bias, Raffel et al., 2020, https://arxiv.org/abs/1910.10683), :math:`M` the mask (0 or
:math:`-\infty`: causal for decoder self-attention, padding, optional sliding window) and :math:`\tilde q, \tilde k`
the queries and keys after the rotary position embedding where the model uses one (Su et al., 2021, RoFormer,
https://arxiv.org/abs/2104.09864), applied on the first :math:`r` channels of each head as
:math:`x \cos\theta + \operatorname{rotate\_half}(x) \sin\theta`. Scores and softmax are computed in float32.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension (the RoFormer rotation in halves form)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (``(batch, heads, tokens, head_dim)``) on its first ``cos.shape[-1]`` channels.

    ``cos`` and ``sin`` are ``(batch, tokens, rotary_dim)`` as the model's rotary module returns them; channels past
    ``rotary_dim`` (partial rotary: GPT-NeoX, Phi) pass unchanged. Same operations, in the same order and dtype, as
    the families' ``apply_rotary_pos_emb``, so the rotated keys equal the ones in the model's KV cache.
    """
    rotary_dim = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = (rotated * cos) + (rotate_half(rotated) * sin)
    return torch.cat((rotated, passed), dim=-1) if passed.shape[-1] else rotated


def visible_keys(
    query_positions: torch.Tensor,
    n_keys: int,
    attention_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Which keys each query row may attend to: ``(batch or 1, 1, queries, keys)`` booleans.

    Causal (keys up to the query's position; ``causal=False`` for encoder self-attention and cross-attention), not
    padding (``attention_mask`` is ``(batch, keys)``, 0 on padding) and, with ``sliding_window``, less than
    ``sliding_window`` positions back (transformers' sliding-window rule).
    """
    key_positions = torch.arange(n_keys, device=query_positions.device)
    rows = query_positions.reshape(-1, 1)
    visible = key_positions <= rows if causal else torch.ones(len(rows), n_keys, dtype=torch.bool, device=rows.device)
    if sliding_window is not None:
        visible = visible & (rows - key_positions < sliding_window)
    visible = visible.unsqueeze(0)
    if attention_mask is not None:
        visible = visible & attention_mask.to(visible.device).bool().unsqueeze(1)
    return visible.unsqueeze(1)


def attention_rows(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    visible: torch.Tensor,
    score_bias: torch.Tensor | None = None,
    mean_over_heads: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T * scaling + bias)`` over the ``visible`` keys (:func:`visible_keys`) for the given query rows.

    Args:
        queries: ``(batch, heads, rows, head_dim)``.
        keys: ``(batch, key_value_heads, positions, head_dim)``; each key head serves ``heads / key_value_heads``
            consecutive query heads (grouped-query attention, as ``repeat_kv`` in transformers).
        scaling: Factor on the dot products.
        visible: ``(batch or 1, 1, rows, positions)`` booleans.
        score_bias: ``(batch or 1, heads, rows, positions)`` added to the scaled scores (T5), or ``None``.
        mean_over_heads: Return the mean over the query heads, ``(batch, rows, positions)``, computed one key head
            (group of query heads) at a time, so that only one group's weights exist at once.

    Returns:
        Float32 ``(batch, heads, rows, positions)`` (or its mean over heads); rows with no visible key are all zero.
    """
    batch, heads, n_rows, head_dim = queries.shape
    kv_heads, n_keys = keys.shape[1], keys.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads evenly.")
    group = heads // kv_heads
    no_key = ~visible.any(-1, keepdim=True)

    def weights_of(kv_heads_slice: slice) -> torch.Tensor:
        # Query heads kv * group ... kv * group + group - 1 share key head kv: fold them into the row axis, so that
        # one matmul per key head serves its whole group without copying the keys.
        head_slice = slice(kv_heads_slice.start * group, kv_heads_slice.stop * group)
        n_kv = kv_heads_slice.stop - kv_heads_slice.start
        grouped = queries[:, head_slice].float().reshape(batch, n_kv, -1, head_dim)
        scores = torch.matmul(grouped, keys[:, kv_heads_slice].float().transpose(-1, -2))
        scores = scores.reshape(batch, n_kv * group, n_rows, n_keys).mul_(scaling)
        if score_bias is not None:
            scores = scores.add_(score_bias[:, head_slice].float())
        scores = scores.masked_fill_(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1).masked_fill_(no_key, 0.0)

    if not mean_over_heads:
        return weights_of(slice(0, kv_heads))
    total = torch.zeros(batch, n_rows, n_keys, dtype=torch.float32, device=queries.device)
    for kv in range(kv_heads):
        total += weights_of(slice(kv, kv + 1)).sum(1)
    return total.div_(heads)


def rebuild_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    query_positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    causal: bool = True,
    score_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scaling + bias + mask)`` for the rows ``query_positions``, in float32.

    Args:
        queries: ``(batch, heads, positions, head_dim)``, rotary already applied.
        keys: ``(batch, key_value_heads, keys, head_dim)``; each key head serves ``heads / key_value_heads``
            consecutive query heads (grouped-query attention, as ``repeat_kv`` in transformers).
        scaling: Factor on the scores (the attention module's ``scaling``).
        query_positions: ``(queries,)`` indices of the rows to compute.
        attention_mask: ``(batch, keys)``, 0 on padding; ``None``: no padding.
        sliding_window: Keys at ``query - key >= sliding_window`` are masked (transformers' sliding-window rule).
        causal: Mask keys after the query's position (decoder self-attention).
        score_bias: ``(batch or 1, heads, positions, keys)`` added to the scaled scores (T5), or ``None``.

    Returns:
        ``(batch, heads, queries, keys)``; rows with no visible key (padding queries) are all zero.
    """
    visible = visible_keys(query_positions.to(queries.device), keys.shape[2], attention_mask, sliding_window, causal)
    bias = None if score_bias is None else score_bias[:, :, query_positions]
    return attention_rows(queries[:, :, query_positions], keys, scaling, visible, bias)

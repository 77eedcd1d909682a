r"""Attention weights rebuilt from the queries and keys a model computes, without ``output_attentions``.

Models running SDPA or flash attention return no attention weights. The weights are a function of the queries and
keys alone (Vaswani et al., 2017, https://arxiv.org/abs/1706.03762):

.. math::
    A^{(l,h)} = \operatorname{softmax}\left(s \, \tilde q^{(l,h)} \tilde k^{(l,g(h))\top} + M\right)

with :math:`s` the model's own scaling (usually :math:`d^{-1/2}`), :math:`g(h) = \lfloor h / (H / H_{kv}) \rfloor`
the key head shared by query head :math:`h` under grouped-/multi-query attention, :math:`M` the causal, padding
and (optional) sliding-window mask, and :math:`\tilde q, \tilde k` the queries and keys after the rotary position
embedding (Su et al., 2021, RoFormer, https://arxiv.org/abs/2104.09864), applied on the first :math:`r` channels
of each head as :math:`x \cos\theta + \operatorname{rotate\_half}(x) \sin\theta`.

:class:`QueryKeyCapture` records :math:`\tilde q` and :math:`\tilde k` of every layer through hooks while the model
runs: the projections (or q/k norms) give the queries and keys before the rotation, and a pre-hook on the attention
module reads the ``position_embeddings=(cos, sin)`` the model passes to it, so the rotation uses the model's own
positions (left padding included). The tensors are appended along the sequence axis at each call, so the same
capture works for one forward pass over a full sequence and for KV-cached generation, where every step adds one
position. :meth:`QueryKeyCapture.attention` then rebuilds the weights for any set of query positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..adapters import AttentionSpec, get_adapter, registered_adapters, resolve_module
from .model_state import HookSet

# Keyword names under which the families' decoder blocks hand the KV cache to their attention module.
_CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


def attention_spec(model: torch.nn.Module) -> AttentionSpec:
    """The family's :class:`AttentionSpec`; a ``ValueError`` naming the supported families when there is none."""
    supported = sorted(adapter.family for adapter in registered_adapters() if adapter.attention is not None)
    how_to_add = (
        "To add a family, register a ModelAdapter with an attention=AttentionSpec(module='self_attn', "
        "query='q_proj', key='k_proj', ...) via inseq_ext.adapters.register_adapter (see inseq_ext/adapters/base.py)."
    )
    try:
        adapter = get_adapter(model)
    except ValueError:
        adapter = None
    if adapter is None or adapter.attention is None or getattr(model.config, "is_encoder_decoder", False):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"Rebuilding attention is not supported for model type {model_type!r} ({type(model).__name__}): it needs "
            f"a decoder-only model of a family whose queries and keys are described. Supported families: "
            f"{', '.join(supported)}. {how_to_add}"
        )
    return adapter.attention


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


@dataclass
class _LayerRecord:
    """What one attention layer produced so far: rotated queries and keys, chunk by chunk along the sequence."""

    attention: torch.nn.Module
    scaling: float
    sliding_window: int | None
    query_chunks: list[torch.Tensor]  # not rotated yet: only the rows asked for are rotated (see rotary_chunks)
    key_chunks: list[torch.Tensor]
    cos_chunks: list[torch.Tensor]
    sin_chunks: list[torch.Tensor]
    pending_query: torch.Tensor | None = None
    pending_key: torch.Tensor | None = None
    pending_rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    pending_cache: object | None = None


class QueryKeyCapture:
    """Rotated queries and keys of every self-attention layer, accumulated along the sequence axis.

    Args:
        model: A decoder-only Hugging Face model of a family with an :class:`AttentionSpec` (see
            :func:`attention_spec`).
        hooks: Where to register the hooks (removed with it).

    Attributes:
        attention_mask: The last 2-D attention mask passed to the model's ``forward`` (``generate`` passes the
            growing mask at every step), used by :meth:`attention` when it is given none.
    """

    def __init__(self, model: torch.nn.Module, hooks: HookSet) -> None:
        self.spec = attention_spec(model)
        self.attention_mask: torch.Tensor | None = None
        self.layers: list[_LayerRecord] = []
        blocks = get_adapter(model).block_stacks(model).decoder
        config = model.config
        for idx, block in enumerate(blocks):
            attention = resolve_module(block, self.spec.module)
            if attention is None:
                raise ValueError(
                    f"Block {idx} of {type(model).__name__} has no attention module {self.spec.module!r}."
                )
            window = getattr(attention, "sliding_window", None)
            if not hasattr(attention, "sliding_window") and self.spec.sliding_window_from_config:
                window = getattr(config, "sliding_window", None)
            scaling = getattr(attention, "scaling", None)
            if scaling is None:  # transformers 5 attention modules keep the factor they multiply the scores by
                raise ValueError(f"{type(attention).__name__} has no 'scaling' attribute to scale the scores with.")
            record = _LayerRecord(attention, float(scaling), window, [], [], [], [])
            self.layers.append(record)
            self._register(hooks, record)
        hooks.forward_pre_hook(model, self._record_mask, with_kwargs=True)

    # --- hooks -------------------------------------------------------------------------------------------------

    def _record_mask(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def _register(self, hooks: HookSet, record: _LayerRecord) -> None:
        spec, attention = self.spec, record.attention
        query_norm = resolve_module(attention, spec.query_norm) if spec.query_norm else None
        key_norm = resolve_module(attention, spec.key_norm) if spec.key_norm else None
        sources = {
            "query": query_norm or resolve_module(attention, spec.query),
            "key": key_norm or resolve_module(attention, spec.key),
        }
        for name, source in sources.items():
            if source is None:
                raise ValueError(f"{type(attention).__name__} has no submodule {getattr(spec, name)!r}.")
        hooks.forward_pre_hook(attention, self._pre_attention(record), with_kwargs=True)
        if sources["query"] is sources["key"]:  # fused projection
            hooks.forward_hook(sources["query"], self._fused_output(record))
        else:
            hooks.forward_hook(sources["query"], self._output(record, "query", normed=query_norm is not None))
            hooks.forward_hook(sources["key"], self._output(record, "key", normed=key_norm is not None))
        hooks.forward_hook(attention, self._post_attention(record))

    def _pre_attention(self, record: _LayerRecord):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            record.pending_rotary = kwargs.get("position_embeddings")
            record.pending_cache = next((kwargs[name] for name in _CACHE_KWARGS if kwargs.get(name) is not None), None)

        return hook

    def _heads_first(self, flat: torch.Tensor, record: _LayerRecord) -> torch.Tensor:
        """``(batch, tokens, heads * head_dim)`` -> ``(batch, heads, tokens, head_dim)``."""
        head_dim = getattr(record.attention, self.spec.head_dim_attribute)
        return flat.reshape(*flat.shape[:2], -1, head_dim).transpose(1, 2)

    def _output(self, record: _LayerRecord, name: str, normed: bool):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not normed:
                value = self._heads_first(output, record)
            elif self.spec.norm_heads_first:
                value = output
            else:  # norm over (batch, tokens, heads, head_dim)
                value = output.transpose(1, 2)
            setattr(record, f"pending_{name}", value.detach())

        return hook

    def _fused_output(self, record: _LayerRecord):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            output = output.detach()
            if self.spec.layout == "fused_per_head":
                # (batch, tokens, heads, [q | k | v] of one head)
                head_dim = getattr(record.attention, self.spec.head_dim_attribute)
                per_head = output.reshape(*output.shape[:2], -1, 3, head_dim).transpose(1, 2)
                record.pending_query, record.pending_key = per_head[..., 0, :], per_head[..., 1, :]
            else:  # fused_stacked: [q | k | v] along the last dimension
                query, key, _ = output.chunk(3, dim=-1)
                record.pending_query = self._heads_first(query, record)
                record.pending_key = self._heads_first(key, record)

        return hook

    def _post_attention(self, record: _LayerRecord):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            query, key = record.pending_query, record.pending_key
            rotary, cache = record.pending_rotary, record.pending_cache
            record.pending_query = record.pending_key = record.pending_rotary = record.pending_cache = None
            if query is None or key is None:
                raise RuntimeError(f"{type(module).__name__} ran without computing queries and keys where expected.")
            if self.spec.rotary:
                if rotary is None:
                    raise RuntimeError(
                        f"{type(module).__name__} received no position_embeddings=(cos, sin); this transformers "
                        "version passes the rotary embedding differently and the family's adapter needs updating."
                    )
                cos, sin = rotary
                # Keys are rotated now (all of them are needed, and they are compared with the KV cache); queries
                # later, and only at the positions whose attention is asked for.
                key = apply_rotary(key, cos, sin)
                record.cos_chunks.append(cos.detach())
                record.sin_chunks.append(sin.detach())
            if record.key_chunks and cache is None:
                # Without a KV cache every call starts again from position 0: appending would mix sequences.
                raise ValueError(
                    "A second forward pass without a KV cache inside one capture_queries_keys block: use "
                    "generate(..., use_cache=True), or one block per forward pass."
                )
            if record.key_chunks and record.key_chunks[0].shape[0] != key.shape[0]:
                raise ValueError(
                    f"The batch size changed from {record.key_chunks[0].shape[0]} to {key.shape[0]} during one"
                    " capture; use one capture_queries_keys block per forward pass or generate() call."
                )
            record.query_chunks.append(query)
            record.key_chunks.append(key)
            if cache is not None:
                self._check_cache(record, cache)

        return hook

    def _check_cache(self, record: _LayerRecord, cache: object) -> None:
        """The accumulated keys must be the ones in the model's KV cache.

        Beam search and other decoding strategies that reorder or crop the cache (assisted/contrastive decoding)
        break the one-position-per-step accumulation; comparing with the cache detects it. Only dynamic cache
        layers are compared (static caches hold unused slots; other layer types store keys differently).
        """
        layers = getattr(cache, "layers", None)
        layer_idx = getattr(record.attention, "layer_idx", None)
        if layers is None or layer_idx is None or layer_idx >= len(layers):
            return
        layer = layers[layer_idx]
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) or getattr(layer, "keys", None) is None:
            return
        cached = layer.keys
        # One growing tensor, as the cache itself keeps (a concatenation per step, like the cache's own update).
        ours = self._joined(record.key_chunks)
        if type(layer) is DynamicLayer:
            length_ok = cached.shape[2] == ours.shape[2]
        else:  # sliding-window layers keep only the most recent keys
            length_ok = cached.shape[2] <= ours.shape[2]
        ours = ours[:, :, ours.shape[2] - cached.shape[2] :] if length_ok else ours
        if not length_ok or ours.shape != cached.shape or not torch.allclose(ours, cached, rtol=1e-3, atol=1e-3):
            raise ValueError(
                "The KV cache no longer matches the queries and keys captured step by step: beam search "
                "(num_beams > 1), assisted or contrastive decoding, and several generate() calls in one "
                "capture_queries_keys block are not supported. Use greedy or sampling decoding with use_cache=True, "
                "one call per block (or rebuild attention from one forward pass over the final sequences)."
            )

    # --- results -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of positions captured so far."""
        return sum(chunk.shape[2] for chunk in self.layers[0].key_chunks) if self.layers else 0

    def queries(self, layer: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotated queries of ``layer``: ``(batch, heads, positions, head_dim)``, all or at ``positions`` only."""
        record = self.layers[layer]
        queries = self._joined(record.query_chunks)
        if positions is not None:
            queries = queries[:, :, positions]
        if not self.spec.rotary:
            return queries
        cos, sin = self._joined(record.cos_chunks, dim=1), self._joined(record.sin_chunks, dim=1)
        if positions is not None:
            cos, sin = cos[:, positions], sin[:, positions]
        return apply_rotary(queries, cos, sin)

    def keys(self, layer: int) -> torch.Tensor:
        """Rotated keys of ``layer`` (as in the KV cache): ``(batch, key_value_heads, positions, head_dim)``."""
        return self._joined(self.layers[layer].key_chunks)

    @staticmethod
    def _joined(chunks: list[torch.Tensor], dim: int = 2) -> torch.Tensor:
        """The chunks concatenated along the sequence axis ``dim`` (kept, so that later calls do not redo it)."""
        if not chunks:
            raise RuntimeError("Nothing captured yet: run the model (forward or generate) inside the capture block.")
        if len(chunks) > 1:
            chunks[:] = [torch.cat(chunks, dim=dim)]
        return chunks[0]

    def attention(
        self,
        query_positions: Sequence[int] | torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Attention weights ``(batch, layers, heads, queries, keys)`` rebuilt from the captured queries and keys.

        Args:
            query_positions: Positions (indices along the captured sequence) whose attention rows to rebuild;
                all positions by default. The row of position ``p`` is the attention of the token at ``p``, i.e.
                the one computed when the model predicted token ``p + 1``.
            attention_mask: ``(batch, keys)`` mask, 1 for real tokens and 0 for padding; by default the last mask
                passed to the model (:attr:`attention_mask`), or no padding.
            layers: Layer indices to rebuild (all by default).
        """
        n_positions = len(self)
        positions = torch.arange(n_positions) if query_positions is None else torch.as_tensor(query_positions)
        if positions.numel() and (positions.min() < 0 or positions.max() >= n_positions):
            raise ValueError(f"query_positions must lie in [0, {n_positions}); got {positions.tolist()}.")
        mask = self.attention_mask if attention_mask is None else attention_mask
        if mask is not None:
            mask = mask[:, :n_positions]
            if mask.shape[1] != n_positions:
                raise ValueError(f"attention_mask covers {mask.shape[1]} positions; {n_positions} were captured.")
        layer_ids = list(range(len(self.layers)) if layers is None else layers)
        if not layer_ids or not all(0 <= idx < len(self.layers) for idx in layer_ids):
            raise ValueError(f"layers must be a non-empty list of indices in [0, {len(self.layers)}); got {layers}.")
        # One mask per sliding-window size and device, shared by the layers (a model dispatched over devices by
        # accelerate has its layers, hence their queries and keys, on different devices).
        masks: dict[tuple[int | None, torch.device], torch.Tensor] = {}
        weights = None
        for slot, idx in enumerate(layer_ids):
            record = self.layers[idx]
            queries, keys = self.queries(idx, positions), self.keys(idx)
            key = (record.sliding_window, queries.device)
            if key not in masks:
                masks[key] = visible_keys(positions.to(queries.device), n_positions, mask, record.sliding_window)
            layer_weights = attention_rows(queries, keys, record.scaling, masks[key])
            if weights is None:  # filled layer by layer: no list of per-layer tensors to stack (and copy)
                weights = layer_weights.new_empty((layer_weights.shape[0], len(layer_ids), *layer_weights.shape[1:]))
            weights[:, slot] = layer_weights
        return weights


def visible_keys(
    query_positions: torch.Tensor,
    n_keys: int,
    attention_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Which keys each query row may attend to: ``(batch or 1, 1, queries, keys)`` booleans.

    Causal (keys up to the query's position), not padding (``attention_mask`` is ``(batch, keys)``, 0 on padding)
    and, with ``sliding_window``, less than ``sliding_window`` positions back (transformers' sliding-window rule).
    """
    key_positions = torch.arange(n_keys, device=query_positions.device)
    rows = query_positions.reshape(-1, 1)
    visible = key_positions <= rows
    if sliding_window is not None:
        visible = visible & (rows - key_positions < sliding_window)
    visible = visible.unsqueeze(0)
    if attention_mask is not None:
        visible = visible & attention_mask.to(visible.device).bool().unsqueeze(1)
    return visible.unsqueeze(1)


def rebuild_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    query_positions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scaling + mask)`` for the rows ``query_positions``, in float32.

    Args:
        queries: ``(batch, heads, positions, head_dim)``, rotary already applied.
        keys: ``(batch, key_value_heads, positions, head_dim)``; each key head serves ``heads / key_value_heads``
            consecutive query heads (grouped-query attention, as ``repeat_kv`` in transformers).
        scaling: Factor on the scores (the attention module's ``scaling``).
        query_positions: ``(queries,)`` indices of the rows to compute.
        attention_mask: ``(batch, positions)``, 0 on padding; ``None``: no padding.
        sliding_window: Keys at ``query - key >= sliding_window`` are masked (transformers' sliding-window rule).

    Returns:
        ``(batch, heads, queries, positions)``; rows with no visible key (padding queries) are all zero.
    """
    visible = visible_keys(query_positions.to(queries.device), keys.shape[2], attention_mask, sliding_window)
    return attention_rows(queries[:, :, query_positions], keys, scaling, visible)


def attention_rows(queries: torch.Tensor, keys: torch.Tensor, scaling: float, visible: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T * scaling)`` over the ``visible`` keys (:func:`visible_keys`) for the given query rows.

    ``queries`` are ``(batch, heads, rows, head_dim)``, ``keys`` ``(batch, key_value_heads, positions, head_dim)``.
    Returns float32 ``(batch, heads, rows, positions)``; rows with no visible key are all zero.
    """
    batch, heads, n_rows, head_dim = queries.shape
    kv_heads, n_keys = keys.shape[1], keys.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads evenly.")
    # Query heads kv * group ... kv * group + group - 1 share key head kv: fold them into the row axis, so that
    # one matmul per key head serves its whole group without copying the keys.
    grouped = queries.float().reshape(batch, kv_heads, -1, head_dim)
    scores = torch.matmul(grouped, keys.float().transpose(-1, -2)).reshape(batch, heads, n_rows, n_keys)
    scores = scores.mul_(scaling).masked_fill_(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights.masked_fill_(~visible.any(-1, keepdim=True), 0.0)


@contextmanager
def capture_queries_keys(model: torch.nn.Module) -> Iterator[QueryKeyCapture]:
    """Record the rotated queries and keys of every layer while the block runs the model; hooks removed on exit.

    Works around one forward pass or one ``model.generate(..., use_cache=True)`` call (greedy or sampling): each
    decoding step appends its position, so the captured keys are exactly the KV cache's. Example::

        with capture_queries_keys(model) as capture:
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        weights = capture.attention()  # (batch, layers, heads, positions, positions), padding from the mask

    Raises:
        ValueError: for models without an :class:`AttentionSpec` (the message lists the supported families), and,
            from inside ``generate``, for decoding that reorders or crops the cache (beam search, assisted decoding),
            for ``use_cache=False`` and for a second ``generate`` call in the same block.
    """
    hooks = HookSet()
    try:
        yield QueryKeyCapture(model, hooks)
    finally:
        hooks.remove_all()

r"""Attention weights rebuilt from the queries and keys a model computes, without ``output_attentions``.

Models running SDPA or flash attention return no attention weights. The weights are a function of the queries and
keys (and, for T5, of a score bias) alone; :mod:`~inseq_ext.attr.attention_scores` states the formula.

:class:`QueryKeyCapture` records the queries and keys of every attention layer through hooks while the model runs:
the projections (or q/k norms) give the queries and keys before any rotation; a pre-hook on the attention module
reads the ``position_embeddings=(cos, sin)`` the model passes to it, so the rotation uses the model's own positions
(left padding included); a hook on its output reads a score bias where the family has one (T5's relative position
bias). The tensors are appended along the query axis at each call, so the same capture works for one forward pass
over full sequences and for KV-cached generation, where every step adds one position.

Three stacks of attention layers are recorded (model families describe theirs in
:class:`~inseq_ext.adapters.ModelAdapter`): ``"decoder"``, the causal self-attention of a decoder-only model or of an
encoder-decoder's decoder; and, for encoder-decoders, ``"encoder"`` (bidirectional self-attention over the source)
and ``"cross"`` (decoder queries, keys projected from the encoder output, every non-padding source token visible).
:meth:`QueryKeyCapture.attention` then rebuilds the weights of a stack for any set of query positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..adapters import AttentionSpec, get_adapter, registered_adapters, resolve_module
from .attention_scores import apply_rotary, attention_rows, rebuild_attention, rotate_half, visible_keys
from .model_state import HookSet

#: An attention stack: decoder (or decoder-only) self-attention, encoder self-attention, cross-attention.
Stack = Literal["decoder", "encoder", "cross"]
STACKS: tuple[Stack, ...] = get_args(Stack)

# Keyword names under which the families' blocks hand the KV cache to their attention module.
_CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


def attention_specs(model: torch.nn.Module) -> dict[Stack, AttentionSpec]:
    """Where each attention stack of ``model`` computes its queries and keys (``"decoder"``; for encoder-decoders
    also ``"encoder"`` and ``"cross"``); a ``ValueError`` naming the supported families when one is not described.
    """
    is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    try:
        adapter = get_adapter(model)
    except ValueError:
        adapter = None
    specs = {}
    if adapter is not None:
        described = {"decoder": adapter.attention}
        if is_encoder_decoder:
            described.update(encoder=adapter.encoder_attention, cross=adapter.cross_attention)
        specs = {stack: spec for stack, spec in described.items() if spec is not None}
        if len(specs) == len(described):
            return specs
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    decoder_only = sorted(a.family for a in registered_adapters() if a.attention and not a.encoder_blocks)
    encoder_decoder = sorted(
        a.family for a in registered_adapters() if a.encoder_blocks and a.attention and a.cross_attention
    )
    raise ValueError(
        f"Rebuilding attention is not supported for model type {model_type!r} ({type(model).__name__}): its family's "
        f"queries and keys are not described. Supported families: {', '.join(sorted(decoder_only + encoder_decoder))} "
        f"(encoder-decoders: {', '.join(encoder_decoder)}). To add a family, register a ModelAdapter with "
        "attention=AttentionSpec(module='self_attn', query='q_proj', key='k_proj', ...) (and encoder_attention, "
        "cross_attention for encoder-decoders) via inseq_ext.adapters.register_adapter "
        "(see inseq_ext/adapters/base.py)."
    )


def attention_spec(model: torch.nn.Module) -> AttentionSpec:
    """The family's decoder self-attention :class:`AttentionSpec` (see :func:`attention_specs`)."""
    return attention_specs(model)["decoder"]


@dataclass
class _LayerRecord:
    """What one attention layer produced so far: queries, rotated keys and score bias, chunk by chunk."""

    attention: torch.nn.Module
    spec: AttentionSpec
    stack: Stack
    scaling: float
    sliding_window: int | None
    query_chunks: list[torch.Tensor] = field(default_factory=list)  # rotated only at the rows asked for
    key_chunks: list[torch.Tensor] = field(default_factory=list)
    cos_chunks: list[torch.Tensor] = field(default_factory=list)
    sin_chunks: list[torch.Tensor] = field(default_factory=list)
    bias_chunks: list[torch.Tensor] = field(default_factory=list)
    pending_query: torch.Tensor | None = None
    pending_key: torch.Tensor | None = None
    pending_rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    pending_cache: object | None = None


class QueryKeyCapture:
    """Queries and keys of every attention layer of a model, accumulated along the query axis.

    Args:
        model: A Hugging Face model of a family whose adapter describes its attention (see
            :func:`attention_specs`): decoder-only, or encoder-decoder (encoder, decoder and cross-attention).
        hooks: Where to register the hooks (removed with it).

    Attributes:
        stacks: The layer records of each stack (``"decoder"``; ``"encoder"`` and ``"cross"`` for encoder-decoders).
        attention_mask: The last 2-D ``attention_mask`` passed to the model's ``forward`` (``generate`` passes the
            growing mask at every step): the padding mask of a decoder-only model, of the source of an
            encoder-decoder.
        decoder_attention_mask: The last 2-D ``decoder_attention_mask`` (encoder-decoders), if any.
    """

    def __init__(self, model: torch.nn.Module, hooks: HookSet) -> None:
        specs = attention_specs(model)
        self.is_encoder_decoder = "encoder" in specs
        self.attention_mask: torch.Tensor | None = None
        self.decoder_attention_mask: torch.Tensor | None = None
        self.stacks: dict[Stack, list[_LayerRecord]] = {stack: [] for stack in specs}
        block_stacks = get_adapter(model).block_stacks(model)
        blocks_of = {"decoder": block_stacks.decoder, "cross": block_stacks.decoder, "encoder": block_stacks.encoder}
        for stack, spec in specs.items():
            for idx, block in enumerate(blocks_of[stack]):
                record = self._record(model, block, idx, spec, stack)
                self.stacks[stack].append(record)
                self._register(hooks, record)
        hooks.forward_pre_hook(model, self._record_mask, with_kwargs=True)

    @property
    def layers(self) -> list[_LayerRecord]:
        """The decoder (self-attention) layer records."""
        return self.stacks["decoder"]

    @staticmethod
    def _record(model: torch.nn.Module, block, idx: int, spec: AttentionSpec, stack: Stack) -> _LayerRecord:
        attention = resolve_module(block, spec.module)
        if attention is None:
            raise ValueError(f"Block {idx} of {type(model).__name__} has no attention module {spec.module!r}.")
        window = getattr(attention, "sliding_window", None)
        if not hasattr(attention, "sliding_window") and spec.sliding_window_from_config:
            window = getattr(model.config, "sliding_window", None)
        scaling = getattr(attention, "scaling", None)
        if scaling is None:  # transformers 5 attention modules keep the factor they multiply the scores by
            raise ValueError(f"{type(attention).__name__} has no 'scaling' attribute to scale the scores with.")
        return _LayerRecord(attention, spec, stack, float(scaling), window if stack == "decoder" else None)

    # --- hooks -------------------------------------------------------------------------------------------------

    def _record_mask(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        def two_dimensional(name: str) -> torch.Tensor | None:
            mask = kwargs.get(name)
            return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

        self.attention_mask = two_dimensional("attention_mask")
        self.decoder_attention_mask = two_dimensional("decoder_attention_mask")

    def _register(self, hooks: HookSet, record: _LayerRecord) -> None:
        spec, attention = record.spec, record.attention
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

    @staticmethod
    def _heads_first(flat: torch.Tensor, record: _LayerRecord) -> torch.Tensor:
        """``(batch, tokens, heads * head_dim)`` -> ``(batch, heads, tokens, head_dim)``."""
        head_dim = getattr(record.attention, record.spec.head_dim_attribute)
        return flat.reshape(*flat.shape[:2], -1, head_dim).transpose(1, 2)

    def _output(self, record: _LayerRecord, name: str, normed: bool):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not normed:
                value = self._heads_first(output, record)
            elif record.spec.norm_heads_first:
                value = output
            else:  # norm over (batch, tokens, heads, head_dim)
                value = output.transpose(1, 2)
            setattr(record, f"pending_{name}", value.detach())

        return hook

    def _fused_output(self, record: _LayerRecord):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            output = output.detach()
            if record.spec.layout == "fused_per_head":
                # (batch, tokens, heads, [q | k | v] of one head)
                head_dim = getattr(record.attention, record.spec.head_dim_attribute)
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
            # Cross-attention computes its keys (from the encoder output) once; cached decoding steps reuse them.
            keys_from_cache = record.stack == "cross" and key is None and cache is not None and record.key_chunks
            if query is None or (key is None and not keys_from_cache):
                raise RuntimeError(f"{type(module).__name__} ran without computing queries and keys where expected.")
            if record.spec.rotary and key is not None:
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
            if record.query_chunks and cache is None:
                # Without a KV cache every call starts again from position 0: appending would mix sequences.
                raise ValueError(
                    "A second forward pass without a KV cache inside one capture_queries_keys block: use "
                    "generate(..., use_cache=True), or one block per forward pass."
                )
            if record.query_chunks and record.query_chunks[0].shape[0] != query.shape[0]:
                raise ValueError(
                    f"The batch size changed from {record.query_chunks[0].shape[0]} to {query.shape[0]} during one"
                    " capture; use one capture_queries_keys block per forward pass or generate() call."
                )
            record.query_chunks.append(query)
            if record.spec.score_bias_output is not None:
                record.bias_chunks.append(output[record.spec.score_bias_output].detach())
            if record.stack == "cross":
                if key is not None:  # the encoder output's keys: the same at every step, never appended
                    record.key_chunks[:] = [key]
                return
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
        cache = getattr(cache, "self_attention_cache", cache)  # encoder-decoder caches hold two
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
        """Number of decoder positions captured so far."""
        return self.query_length("decoder")

    def _records(self, stack: Stack) -> list[_LayerRecord]:
        if stack not in self.stacks:
            raise ValueError(f"stack must be one of {', '.join(self.stacks)} for this model; got {stack!r}.")
        return self.stacks[stack]

    def query_length(self, stack: Stack = "decoder") -> int:
        """Number of query positions of ``stack`` captured so far."""
        records = self._records(stack)
        return sum(chunk.shape[2] for chunk in records[0].query_chunks) if records else 0

    def queries(self, layer: int, positions: torch.Tensor | None = None, stack: Stack = "decoder") -> torch.Tensor:
        """Queries (rotated) of ``layer``: ``(batch, heads, positions, head_dim)``, all or at ``positions`` only."""
        record = self._records(stack)[layer]
        queries = self._joined(record.query_chunks)
        if positions is not None:
            queries = queries[:, :, positions]
        if not record.spec.rotary:
            return queries
        cos, sin = self._joined(record.cos_chunks, dim=1), self._joined(record.sin_chunks, dim=1)
        if positions is not None:
            cos, sin = cos[:, positions], sin[:, positions]
        return apply_rotary(queries, cos, sin)

    def keys(self, layer: int, stack: Stack = "decoder") -> torch.Tensor:
        """Keys (rotated, as in the KV cache) of ``layer``: ``(batch, key_value_heads, keys, head_dim)``."""
        return self._joined(self._records(stack)[layer].key_chunks)

    def score_bias(self, layer: int, positions: torch.Tensor | None = None, stack: Stack = "decoder"):
        """The additive score bias of ``layer`` (``(batch or 1, heads, queries, keys)``), or ``None`` if it has none.

        Chunks recorded during cached decoding cover the keys seen so far; they are right-padded with zeros, which
        only fall on keys the causal mask hides from those queries.
        """
        record = self._records(stack)[layer]
        if not record.bias_chunks:
            return None
        if len(record.bias_chunks) > 1:
            n_keys = max(chunk.shape[-1] for chunk in record.bias_chunks)
            n_batch = max(chunk.shape[0] for chunk in record.bias_chunks)
            padded = [
                torch.nn.functional.pad(chunk, (0, n_keys - chunk.shape[-1])).expand(n_batch, -1, -1, -1)
                for chunk in record.bias_chunks
            ]
            record.bias_chunks[:] = [torch.cat(padded, dim=2)]
        bias = record.bias_chunks[0]
        return bias if positions is None else bias[:, :, positions]

    @staticmethod
    def _joined(chunks: list[torch.Tensor], dim: int = 2) -> torch.Tensor:
        """The chunks concatenated along the sequence axis ``dim`` (kept, so that later calls do not redo it)."""
        if not chunks:
            raise RuntimeError("Nothing captured yet: run the model (forward or generate) inside the capture block.")
        if len(chunks) > 1:
            chunks[:] = [torch.cat(chunks, dim=dim)]
        return chunks[0]

    def key_mask(self, stack: Stack = "decoder") -> torch.Tensor | None:
        """The recorded padding mask over the keys of ``stack`` (``None``: no padding)."""
        if stack == "decoder" and self.is_encoder_decoder:
            return self.decoder_attention_mask
        return self.attention_mask

    def attention(
        self,
        query_positions: Sequence[int] | torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        layers: Sequence[int] | None = None,
        stack: Stack = "decoder",
        mean_over_heads: bool = False,
    ) -> torch.Tensor:
        """Attention weights ``(batch, layers, heads, queries, keys)`` rebuilt from the captured queries and keys.

        Args:
            query_positions: Positions (indices along the captured queries) whose attention rows to rebuild; all
                positions by default. In a decoder, the row of position ``p`` is the attention of the token at
                ``p``, i.e. the one computed when the model predicted token ``p + 1``.
            attention_mask: ``(batch, keys)`` mask, 1 for real tokens and 0 for padding; by default the last mask
                passed to the model (:meth:`key_mask`), or no padding.
            layers: Layer indices to rebuild (all by default).
            stack: ``"decoder"`` (causal self-attention), ``"encoder"`` or ``"cross"`` (encoder-decoders).
            mean_over_heads: Return the mean over heads, ``(batch, layers, queries, keys)``, holding one key head's
                weights at a time.
        """
        records = self._records(stack)
        n_queries = self.query_length(stack)
        positions = torch.arange(n_queries) if query_positions is None else torch.as_tensor(query_positions)
        if positions.numel() and (positions.min() < 0 or positions.max() >= n_queries):
            raise ValueError(f"query_positions must lie in [0, {n_queries}); got {positions.tolist()}.")
        n_keys = self.keys(0, stack).shape[2]
        mask = self.key_mask(stack) if attention_mask is None else attention_mask
        if mask is not None:
            mask = mask[:, :n_keys]
            if mask.shape[1] != n_keys:
                raise ValueError(f"attention_mask covers {mask.shape[1]} positions; {n_keys} keys were captured.")
        layer_ids = list(range(len(records)) if layers is None else layers)
        if not layer_ids or not all(0 <= idx < len(records) for idx in layer_ids):
            raise ValueError(f"layers must be a non-empty list of indices in [0, {len(records)}); got {layers}.")
        # One mask per sliding-window size and device, shared by the layers (a model dispatched over devices by
        # accelerate has its layers, hence their queries and keys, on different devices).
        masks: dict[tuple[int | None, torch.device], torch.Tensor] = {}
        weights = None
        for slot, idx in enumerate(layer_ids):
            record = records[idx]
            queries, keys = self.queries(idx, positions, stack), self.keys(idx, stack)
            mask_key = (record.sliding_window, queries.device)
            if mask_key not in masks:
                masks[mask_key] = visible_keys(
                    positions.to(queries.device), n_keys, mask, record.sliding_window, causal=stack == "decoder"
                )
            bias = self.score_bias(idx, positions, stack)
            bias = None if bias is None else bias.to(queries.device)
            layer_weights = attention_rows(queries, keys, record.scaling, masks[mask_key], bias, mean_over_heads)
            if weights is None:  # filled layer by layer: no list of per-layer tensors to stack (and copy)
                weights = layer_weights.new_empty((layer_weights.shape[0], len(layer_ids), *layer_weights.shape[1:]))
            weights[:, slot] = layer_weights
        return weights


@contextmanager
def capture_queries_keys(model: torch.nn.Module) -> Iterator[QueryKeyCapture]:
    """Record the queries and keys of every attention layer while the block runs the model; hooks removed on exit.

    Works around one forward pass or one ``model.generate(..., use_cache=True)`` call (greedy or sampling): each
    decoding step appends its position, so the captured keys are exactly the KV cache's. Example::

        with capture_queries_keys(model) as capture:
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        weights = capture.attention()  # (batch, layers, heads, positions, positions), padding from the mask
        # encoder-decoders also: capture.attention(stack="encoder"), capture.attention(stack="cross")

    Raises:
        ValueError: for models whose family does not describe its attention (the message lists the supported
            families), and, from inside ``generate``, for decoding that reorders or crops the cache (beam search,
            assisted decoding), for ``use_cache=False`` and for a second ``generate`` call in the same block.
    """
    hooks = HookSet()
    try:
        yield QueryKeyCapture(model, hooks)
    finally:
        hooks.remove_all()


__all__ = [
    "STACKS",
    "QueryKeyCapture",
    "Stack",
    "apply_rotary",
    "attention_rows",
    "attention_spec",
    "attention_specs",
    "capture_queries_keys",
    "rebuild_attention",
    "rotate_half",
    "visible_keys",
]

"""Where a model family keeps its internals: one :class:`ModelAdapter` per family.

Methods reach model internals only through an adapter, so that supporting a new architecture means adding one
adapter (see :func:`~inseq_ext.adapters.register_adapter`), not special cases spread through the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

#: How a self-attention module produces its queries and keys (see :class:`AttentionSpec`).
QueryKeyLayout = Literal["separate", "fused_per_head", "fused_stacked"]
#: Which normalization a family uses (see :class:`RelevanceSpec`).
NormKind = Literal["rms", "layer"]


@dataclass(frozen=True)
class BlockStacks:
    """The transformer block lists of a model: the encoder's (encoder-decoders only) and the decoder's."""

    encoder: torch.nn.ModuleList | None
    decoder: torch.nn.ModuleList


@dataclass(frozen=True)
class AttentionSpec:
    """Where one family's self-attention computes its queries and keys, and how it turns them into scores.

    Paths are attribute paths relative to the attention module of a block (``module``, itself relative to the
    block). The queries and keys are read from the outputs of those submodules, i.e. *before* the rotary embedding,
    which is then re-applied with the ``position_embeddings=(cos, sin)`` the model passes to the attention module.

    Attributes:
        module: Path of the self-attention module inside a block, e.g. ``"self_attn"``.
        query, key: Submodules whose outputs are the queries / keys (``(batch, tokens, heads * head_dim)``).
            For fused projections both name the fused module.
        layout: ``"separate"`` (own projections), ``"fused_per_head"`` (one projection whose output is
            ``(batch, tokens, heads, 3 * head_dim)``, split per head into q, k, v: GPT-NeoX) or ``"fused_stacked"``
            (output ``(batch, tokens, 3 * hidden)``, split into q, k, v blocks: GPT-2).
        query_norm, key_norm: Normalization submodules applied to queries / keys after the projection (Qwen3
            ``q_norm``, Phi ``q_layernorm``); when the module has them, their outputs are read instead.
        norm_heads_first: The norms receive ``(batch, heads, tokens, head_dim)`` (Phi) rather than
            ``(batch, tokens, heads, head_dim)`` (Qwen3).
        head_dim_attribute: Attribute of the attention module holding the head size.
        rotary: Whether the family applies a rotary position embedding to queries and keys (``rotate_half`` style,
            on the first ``cos.shape[-1]`` channels of each head, so partial rotary needs nothing extra).
        sliding_window_from_config: Use ``config.sliding_window`` for every layer when the attention module has no
            ``sliding_window`` attribute of its own (Mistral).
        score_bias_output: Index, in the attention module's output tuple, of an additive bias on the scores
            (``(batch or 1, heads, queries, keys)``, before the mask), e.g. T5's relative position bias (output 1 of
            ``T5Attention``); ``None`` when the scores have no such bias.

    The same description serves the self-attention of a decoder-only model, and an encoder-decoder's encoder
    self-attention, decoder self-attention and cross-attention (whose keys are projections of the encoder output).
    """

    module: str
    query: str
    key: str
    layout: QueryKeyLayout = "separate"
    query_norm: str | None = None
    key_norm: str | None = None
    norm_heads_first: bool = False
    head_dim_attribute: str = "head_dim"
    rotary: bool = True
    sliding_window_from_config: bool = False
    score_bias_output: int | None = None


@dataclass(frozen=True)
class RelevanceSpec:
    r"""Where a family normalizes, applies element-wise activations and gates: what AttnLRP's rules attach to.

    Attention needs no entry: its rule is installed on the attention function the model calls through
    transformers' attention registry, whatever the module layout. Paths of submodules that only some configurations
    have (Qwen3's ``q_norm``, Phi's optional ``q_layernorm``, mBART's final ``layer_norm``) are skipped where absent.

    Attributes:
        norm_kind: ``"rms"``: :math:`y = w \odot x / \sqrt{\overline{x^2} + \epsilon}` (Llama-style RMSNorm);
            ``"layer"``: :math:`y = w \odot (x - \bar x) / \sqrt{\operatorname{var} x + \epsilon} + b`
            (``torch.nn.LayerNorm``). Both over the last dimension.
        epsilon_attribute: Attribute of the normalization modules holding :math:`\epsilon`.
        block_norms: Normalization modules, relative to a block (both stacks of an encoder-decoder).
        model_norms: Normalization modules outside the blocks, relative to the model (final norm, embedding norm).
        activations: Element-wise activation modules (``ACT2FN`` modules such as SiLU or GELU), relative to a block.
        gate_consumers: Modules whose input is an element-wise product of two branches, relative to a block: the
            down projection of a gated MLP, which receives ``act(gate_proj(x)) * up_proj(x)``.
        eager_bypass_flags: Config flags that, with eager attention, make the family compute attention without
            transformers' attention registry (where the attention rule is installed); such models are refused.
    """

    norm_kind: NormKind
    epsilon_attribute: str
    block_norms: tuple[str, ...]
    model_norms: tuple[str, ...]
    activations: tuple[str, ...]
    gate_consumers: tuple[str, ...] = ()
    eager_bypass_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelAdapter:
    """Locations of one model family's internals, as attribute paths relative to the Hugging Face model.

    Attributes:
        family: Short name shown in messages (e.g. ``"llama"``).
        model_types: ``config.model_type`` values this adapter serves.
        decoder_blocks: Path of the decoder's (or decoder-only model's) block list, e.g. ``"model.layers"``.
        encoder_blocks: Path of the encoder's block list, for encoder-decoder models.
        attention: Where the decoder blocks' self-attention computes queries and keys (``None``: not described).
        final_norm, encoder_final_norm: Path of the normalization applied to the output of the last decoder
            (encoder) block and nothing else, in pre-norm architectures (GPT-2 ``transformer.ln_f``, Llama
            ``model.norm``); ``None``, or a path the model lacks (BART has none, mBART has one), when there is none.
        relevance: Where normalizations, activations and gates are, for ``attnlrp`` (``None``: not described).
        encoder_attention: Where the encoder blocks' self-attention computes them (encoder-decoders).
        cross_attention: Where the decoder blocks' cross-attention (queries from the decoder, keys from the encoder
            output) computes them (encoder-decoders).
    """

    family: str
    model_types: tuple[str, ...]
    decoder_blocks: str
    encoder_blocks: str | None = None
    attention: AttentionSpec | None = None
    final_norm: str | None = None
    encoder_final_norm: str | None = None
    relevance: RelevanceSpec | None = None
    encoder_attention: AttentionSpec | None = None
    cross_attention: AttentionSpec | None = None

    def block_stacks(self, model: torch.nn.Module) -> BlockStacks:
        return BlockStacks(
            encoder=resolve_module_list(model, self.encoder_blocks) if self.encoder_blocks else None,
            decoder=resolve_module_list(model, self.decoder_blocks),
        )

    def last_block_feeds_scale_invariant_norm(self, model: torch.nn.Module, encoder: bool = False) -> bool:
        """Whether the last (encoder) block's output only enters a LayerNorm or RMSNorm.

        Such a norm gives the same output for ``c * h`` as for ``h`` (up to its epsilon), so any function ``F`` of
        it has ``sum_d dF/dh[d] * h[d] = d/dc F(norm(c * h)) at c = 1 = 0``: gradient x input there is zero.
        """
        path = self.encoder_final_norm if encoder else self.final_norm
        module = resolve_module(model, path) if path else None
        return module is not None and is_scale_invariant_norm(module)


def is_scale_invariant_norm(module: torch.nn.Module) -> bool:
    """LayerNorm and RMSNorm (``torch.nn`` or a family's own class, e.g. ``LlamaRMSNorm``, ``T5LayerNorm``)."""
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm | torch.nn.RMSNorm) or name.endswith(("LayerNorm", "RMSNorm"))


def resolve_module(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """The submodule at attribute path ``path`` of ``root``, or ``None`` where the path does not lead to a module."""
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
    return module if isinstance(module, torch.nn.Module) else None


def resolve_module_list(model: torch.nn.Module, path: str) -> torch.nn.ModuleList:
    """The ``torch.nn.ModuleList`` at attribute path ``path`` of ``model``; a ``ValueError`` says what is there."""
    module: object = model
    for part in path.split("."):
        if not hasattr(module, part):
            raise ValueError(
                f"{type(model).__name__} has no module at {path!r} (no attribute {part!r} on {type(module).__name__})."
            )
        module = getattr(module, part)
    if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
        raise ValueError(
            f"{path!r} on {type(model).__name__} is a {type(module).__name__}, not a non-empty list of blocks "
            "(torch.nn.ModuleList)."
        )
    return module

"""The model families this package knows, one adapter each."""

from __future__ import annotations

from .base import AttentionSpec, ModelAdapter

# Llama, Mistral and Qwen2 share one attention layout: q_proj / k_proj, rotary on the whole head.
_LLAMA_ATTENTION = AttentionSpec(module="self_attn", query="q_proj", key="k_proj")

GPT2 = ModelAdapter(
    family="gpt2",
    model_types=("gpt2",),
    decoder_blocks="transformer.h",
    # No rotary embedding: positions enter through the input embeddings, attention is plain q k^T.
    attention=AttentionSpec(module="attn", query="c_attn", key="c_attn", layout="fused_stacked", rotary=False),
)
LLAMA = ModelAdapter(family="llama", model_types=("llama",), decoder_blocks="model.layers", attention=_LLAMA_ATTENTION)
MISTRAL = ModelAdapter(
    family="mistral",
    model_types=("mistral",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(module="self_attn", query="q_proj", key="k_proj", sliding_window_from_config=True),
)
QWEN2 = ModelAdapter(family="qwen2", model_types=("qwen2",), decoder_blocks="model.layers", attention=_LLAMA_ATTENTION)
QWEN3 = ModelAdapter(
    family="qwen3",
    model_types=("qwen3",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(module="self_attn", query="q_proj", key="k_proj", query_norm="q_norm", key_norm="k_norm"),
)
GPT_NEOX = ModelAdapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    decoder_blocks="gpt_neox.layers",
    attention=AttentionSpec(
        module="attention",
        query="query_key_value",
        key="query_key_value",
        layout="fused_per_head",
        head_dim_attribute="head_size",
    ),
)
PHI = ModelAdapter(
    family="phi",
    model_types=("phi",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(
        module="self_attn",
        query="q_proj",
        key="k_proj",
        query_norm="q_layernorm",
        key_norm="k_layernorm",
        norm_heads_first=True,
    ),
)
# Encoder-decoders: no rotary embedding (BART, Marian and mBART add learned or sinusoidal positions to the inputs;
# T5 adds a relative position bias to the scores, returned as output 1 of its attention modules).
_BART_SELF_ATTENTION = AttentionSpec(module="self_attn", query="q_proj", key="k_proj", rotary=False)
BART = ModelAdapter(
    family="bart",
    model_types=("bart", "marian", "mbart"),
    decoder_blocks="model.decoder.layers",
    encoder_blocks="model.encoder.layers",
    attention=_BART_SELF_ATTENTION,
    encoder_attention=_BART_SELF_ATTENTION,
    cross_attention=AttentionSpec(module="encoder_attn", query="q_proj", key="k_proj", rotary=False),
)
_T5_SPEC = {"query": "q", "key": "k", "head_dim_attribute": "key_value_proj_dim", "rotary": False}
_T5_SELF_ATTENTION = AttentionSpec(module="layer.0.SelfAttention", score_bias_output=1, **_T5_SPEC)
T5 = ModelAdapter(
    family="t5",
    model_types=("t5", "mt5"),
    decoder_blocks="decoder.block",
    encoder_blocks="encoder.block",
    attention=_T5_SELF_ATTENTION,
    encoder_attention=_T5_SELF_ATTENTION,
    cross_attention=AttentionSpec(module="layer.1.EncDecAttention", score_bias_output=1, **_T5_SPEC),
)

BUILT_IN_ADAPTERS = (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, GPT_NEOX, PHI, BART, T5)

"""The model families this package knows, one adapter each."""

from __future__ import annotations

from .base import AttentionSpec, ModelAdapter

# Llama, Mistral and Qwen2 share one attention layout: q_proj / k_proj, rotary on the whole head.
_LLAMA_ATTENTION = AttentionSpec(module="self_attn", query="q_proj", key="k_proj")

GPT2 = ModelAdapter(
    family="gpt2",
    model_types=("gpt2",),
    decoder_blocks="transformer.h",
    final_norm="transformer.ln_f",
    # No rotary embedding: positions enter through the input embeddings, attention is plain q k^T.
    attention=AttentionSpec(module="attn", query="c_attn", key="c_attn", layout="fused_stacked", rotary=False),
)
LLAMA = ModelAdapter(
    family="llama",
    model_types=("llama",),
    decoder_blocks="model.layers",
    attention=_LLAMA_ATTENTION,
    final_norm="model.norm",
)
MISTRAL = ModelAdapter(
    family="mistral",
    model_types=("mistral",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(module="self_attn", query="q_proj", key="k_proj", sliding_window_from_config=True),
    final_norm="model.norm",
)
QWEN2 = ModelAdapter(
    family="qwen2",
    model_types=("qwen2",),
    decoder_blocks="model.layers",
    attention=_LLAMA_ATTENTION,
    final_norm="model.norm",
)
QWEN3 = ModelAdapter(
    family="qwen3",
    model_types=("qwen3",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(module="self_attn", query="q_proj", key="k_proj", query_norm="q_norm", key_norm="k_norm"),
    final_norm="model.norm",
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
    final_norm="gpt_neox.final_layer_norm",
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
    final_norm="model.final_layernorm",
)
BART = ModelAdapter(
    family="bart",
    model_types=("bart", "marian", "mbart"),
    decoder_blocks="model.decoder.layers",
    encoder_blocks="model.encoder.layers",
    # Post-norm BART and Marian end their blocks with a norm and have none after the stack; pre-norm mBART has one.
    final_norm="model.decoder.layer_norm",
    encoder_final_norm="model.encoder.layer_norm",
)
T5 = ModelAdapter(
    family="t5",
    model_types=("t5", "mt5"),
    decoder_blocks="decoder.block",
    encoder_blocks="encoder.block",
    final_norm="decoder.final_layer_norm",
    encoder_final_norm="encoder.final_layer_norm",
)

BUILT_IN_ADAPTERS = (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, GPT_NEOX, PHI, BART, T5)

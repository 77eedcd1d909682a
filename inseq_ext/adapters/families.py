"""The model families this package knows, one adapter each."""

from __future__ import annotations

from .base import AttentionSpec, ModelAdapter, RelevanceSpec

# Llama, Mistral and Qwen2 share one attention layout: q_proj / k_proj, rotary on the whole head.
_LLAMA_ATTENTION = AttentionSpec(module="self_attn", query="q_proj", key="k_proj")
# Llama, Mistral, Qwen2 and Qwen3: RMSNorm before attention and MLP, gated MLP
# down_proj(act(gate_proj(x)) * up_proj(x));
# Qwen3 also normalizes queries and keys per head.
_LLAMA_RELEVANCE = RelevanceSpec(
    norm_kind="rms",
    epsilon_attribute="variance_epsilon",
    block_norms=("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"),
    model_norms=("model.norm",),
    activations=("mlp.act_fn",),
    gate_consumers=("mlp.down_proj",),
)

GPT2 = ModelAdapter(
    family="gpt2",
    model_types=("gpt2",),
    decoder_blocks="transformer.h",
    final_norm="transformer.ln_f",
    # No rotary embedding: positions enter through the input embeddings, attention is plain q k^T.
    attention=AttentionSpec(module="attn", query="c_attn", key="c_attn", layout="fused_stacked", rotary=False),
    relevance=RelevanceSpec(
        norm_kind="layer",
        epsilon_attribute="eps",
        block_norms=("ln_1", "ln_2"),
        model_norms=("transformer.ln_f",),
        activations=("mlp.act",),
        # GPT2Attention's eager path with this flag calls its own _upcast_and_reordered_attn.
        eager_bypass_flags=("reorder_and_upcast_attn",),
    ),
)
LLAMA = ModelAdapter(
    family="llama",
    model_types=("llama",),
    decoder_blocks="model.layers",
    attention=_LLAMA_ATTENTION,
    final_norm="model.norm",
    relevance=_LLAMA_RELEVANCE,
)
MISTRAL = ModelAdapter(
    family="mistral",
    model_types=("mistral",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(module="self_attn", query="q_proj", key="k_proj", sliding_window_from_config=True),
    final_norm="model.norm",
    relevance=_LLAMA_RELEVANCE,
)
QWEN2 = ModelAdapter(
    family="qwen2",
    model_types=("qwen2",),
    decoder_blocks="model.layers",
    attention=_LLAMA_ATTENTION,
    final_norm="model.norm",
    relevance=_LLAMA_RELEVANCE,
)
QWEN3 = ModelAdapter(
    family="qwen3",
    model_types=("qwen3",),
    decoder_blocks="model.layers",
    attention=AttentionSpec(module="self_attn", query="q_proj", key="k_proj", query_norm="q_norm", key_norm="k_norm"),
    final_norm="model.norm",
    relevance=_LLAMA_RELEVANCE,
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
    relevance=RelevanceSpec(
        norm_kind="layer",
        epsilon_attribute="eps",
        block_norms=("input_layernorm", "post_attention_layernorm"),
        model_norms=("gpt_neox.final_layer_norm",),
        activations=("mlp.act",),
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
    final_norm="model.final_layernorm",
    # One LayerNorm feeds attention and MLP in parallel; q/k LayerNorms only with qk_layernorm=True.
    relevance=RelevanceSpec(
        norm_kind="layer",
        epsilon_attribute="eps",
        block_norms=("input_layernorm", "self_attn.q_layernorm", "self_attn.k_layernorm"),
        model_norms=("model.final_layernorm",),
        activations=("mlp.activation_fn",),
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
    # Post-norm BART and Marian end their blocks with a norm and have none after the stack; pre-norm mBART has one.
    final_norm="model.decoder.layer_norm",
    encoder_final_norm="model.encoder.layer_norm",
    # Post-norm blocks (LayerNorm after each residual sum); BART normalizes the embeddings, mBART also each stack's
    # output, Marian neither.
    relevance=RelevanceSpec(
        norm_kind="layer",
        epsilon_attribute="eps",
        block_norms=("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
        model_norms=(
            "model.encoder.layernorm_embedding",
            "model.decoder.layernorm_embedding",
            "model.encoder.layer_norm",
            "model.decoder.layer_norm",
        ),
        activations=("activation_fn",),
    ),
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
    final_norm="decoder.final_layer_norm",
    encoder_final_norm="encoder.final_layer_norm",
    attention=_T5_SELF_ATTENTION,
    encoder_attention=_T5_SELF_ATTENTION,
    cross_attention=AttentionSpec(module="layer.1.EncDecAttention", score_bias_output=1, **_T5_SPEC),
)

BUILT_IN_ADAPTERS = (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, GPT_NEOX, PHI, BART, T5)

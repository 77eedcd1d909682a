"""The model families this package knows, one adapter each."""

from __future__ import annotations

from .base import ModelAdapter

GPT2 = ModelAdapter(family="gpt2", model_types=("gpt2",), decoder_blocks="transformer.h")
LLAMA = ModelAdapter(family="llama", model_types=("llama",), decoder_blocks="model.layers")
MISTRAL = ModelAdapter(family="mistral", model_types=("mistral",), decoder_blocks="model.layers")
QWEN2 = ModelAdapter(family="qwen2", model_types=("qwen2",), decoder_blocks="model.layers")
QWEN3 = ModelAdapter(family="qwen3", model_types=("qwen3",), decoder_blocks="model.layers")
GPT_NEOX = ModelAdapter(family="gpt_neox", model_types=("gpt_neox",), decoder_blocks="gpt_neox.layers")
PHI = ModelAdapter(family="phi", model_types=("phi",), decoder_blocks="model.layers")
BART = ModelAdapter(
    family="bart",
    model_types=("bart", "marian", "mbart"),
    decoder_blocks="model.decoder.layers",
    encoder_blocks="model.encoder.layers",
)
T5 = ModelAdapter(
    family="t5", model_types=("t5", "mt5"), decoder_blocks="decoder.block", encoder_blocks="encoder.block"
)

BUILT_IN_ADAPTERS = (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, GPT_NEOX, PHI, BART, T5)

"""Tiny, seeded transformer models and a small trained tokenizer that need no network.

Tests, benchmarks and the offline demo build their models here: random weights from a ``transformers`` config
(fixed seed) and a byte-level BPE tokenizer trained with ``tokenizers`` on a short built-in corpus. Nothing is
downloaded. The weights are random, so attributions on these models are only good for checking the arithmetic.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

_CORPUS = [
    "Hello ladies and gentlemen, I am a member of the Board.",
    "The first president of America is George Washington.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "This film is a compelling drama that captivates audiences with its storytelling.",
    "The movie was boring and the acting was terrible.",
    "Online chat support is open Monday to Friday from 8:00 AM to 8:00 PM.",
    "Phone support is available 24/7 for premium customers.",
    "def add(a, b):\n    return a + b\n",
    "Which input tokens mattered when the model generated this word?",
    "A saliency map shows the gradient of the output with respect to each input token.",
]

DECODER_ONLY_ARCHITECTURES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "phi")
ENCODER_DECODER_ARCHITECTURES = ("bart", "marian", "mbart", "t5")
ARCHITECTURES = DECODER_ONLY_ARCHITECTURES + ENCODER_DECODER_ARCHITECTURES


def build_tokenizer(vocab_size: int = 384, add_bos: bool = False, add_eos: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus (deterministic, a fraction of a second).

    Args:
        vocab_size: Target vocabulary size, special tokens included.
        add_bos: Prepend ``<s>`` to every encoded text (Llama-style tokenizers do).
        add_eos: Append ``</s>`` to every encoded text (sequence-to-sequence tokenizers do).
    """
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    if add_bos or add_eos:
        single = " ".join(([BOS] if add_bos else []) + ["$A"] + ([EOS] if add_eos else []))
        pair = " ".join(([BOS] if add_bos else []) + ["$A", "$B"] + ([EOS] if add_eos else []))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single,
            pair=pair,
            special_tokens=[(BOS, tokenizer.token_to_id(BOS)), (EOS, tokenizer.token_to_id(EOS))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )


def build_sentencepiece_tokenizer(vocab_size: int = 384, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style BPE tokenizer (``▁`` marks spaces, Llama-like) on the built-in corpus.

    Pre-tokenization and decoding use the Metaspace scheme of SentencePiece (Kudo & Richardson, 2018): spaces
    become ``▁`` and one is prepended to the first word only; decoding turns them back and drops that first one.
    Pair it with any model via ``build_model(architecture, tokenizer=build_sentencepiece_tokenizer())``.

    Args:
        vocab_size: Target vocabulary size, special tokens included.
        add_bos: Prepend ``<s>`` to every encoded text (Llama-style).
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK], show_progress=False)
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )


def _model_config(architecture: str, vocab_size: int, ids: dict[str, int], size: dict[str, int]):
    hidden, layers, heads = size["hidden"], size["layers"], size["heads"]
    ffn = size.get("ffn", 4 * hidden)
    max_positions = size.get("max_positions", 512)
    common = {"vocab_size": vocab_size, **ids}
    dense = {
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_positions,
        **common,
    }
    rotary_family = {**dense, "num_key_value_heads": size.get("kv_heads", max(1, heads // 2))}
    if architecture == "gpt2":
        return GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=max_positions, **common
        )
    if architecture == "llama":
        return LlamaConfig(**rotary_family)
    if architecture == "mistral":
        return MistralConfig(sliding_window=None, **rotary_family)
    if architecture == "qwen2":
        return Qwen2Config(**rotary_family)
    if architecture == "qwen3":
        return Qwen3Config(head_dim=hidden // heads, **rotary_family)
    if architecture == "gpt_neox":
        return GPTNeoXConfig(rotary_pct=0.5, **dense)
    if architecture == "phi":
        return PhiConfig(partial_rotary_factor=0.5, **dense)
    if architecture in ("bart", "marian", "mbart"):
        config_class = {"bart": BartConfig, "marian": MarianConfig, "mbart": MBartConfig}[architecture]
        return config_class(
            d_model=hidden,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=ffn,
            decoder_ffn_dim=ffn,
            max_position_embeddings=max_positions,
            scale_embedding=True,
            # Marian starts decoding from <pad>, BART and mBART (in this tiny set-up) from </s>.
            decoder_start_token_id=ids["pad_token_id"] if architecture == "marian" else ids["eos_token_id"],
            forced_eos_token_id=None,
            **common,
        )
    if architecture == "t5":
        # T5: no absolute positions; a learned relative position bias is added to the attention scores, which are
        # not scaled (Raffel et al., 2020). Decoding starts from <pad>.
        return T5Config(
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=ffn,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            decoder_start_token_id=ids["pad_token_id"],
            vocab_size=vocab_size,
            pad_token_id=ids["pad_token_id"],
            eos_token_id=ids["eos_token_id"],
        )
    raise ValueError(f"Unknown tiny architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}.")


def build_model(
    architecture: str,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    attn_implementation: str | None = None,
    **size: int,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny randomly initialised model of a given architecture, in eval mode, with its tokenizer.

    Args:
        architecture: One of :data:`ARCHITECTURES`.
        tokenizer: Tokenizer to pair with the model; by default one is trained with :func:`build_tokenizer`
            (``<s>`` prepended for Llama-style models, ``</s>`` appended for encoder-decoders).
        seed: Seed for the random weights.
        hidden: Hidden size.
        layers: Number of blocks (in each stack of an encoder-decoder).
        heads: Number of attention heads.
        **size: Further size keys: ``ffn``, ``kv_heads``, ``max_positions``, ``vocab_size`` (rows of the embedding
            matrix, at least the tokenizer's size).
        attn_implementation: Attention kernel (``"eager"``, ``"sdpa"``, ...); transformers' default (SDPA) if None.
    """
    if tokenizer is None:
        tokenizer = build_tokenizer(
            add_bos=architecture in ("llama", "mistral"), add_eos=architecture in ENCODER_DECODER_ARCHITECTURES
        )
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vocab_size = size.pop("vocab_size", len(tokenizer))
    config = _model_config(architecture, vocab_size, ids, {"hidden": hidden, "layers": layers, "heads": heads, **size})
    model_classes = {
        "gpt2": GPT2LMHeadModel,
        "llama": LlamaForCausalLM,
        "mistral": MistralForCausalLM,
        "qwen2": Qwen2ForCausalLM,
        "qwen3": Qwen3ForCausalLM,
        "gpt_neox": GPTNeoXForCausalLM,
        "phi": PhiForCausalLM,
        "bart": BartForConditionalGeneration,
        "marian": MarianMTModel,
        "mbart": MBartForConditionalGeneration,
        "t5": T5ForConditionalGeneration,
    }
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_classes[architecture](config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    return model.eval(), tokenizer

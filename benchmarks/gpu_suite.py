"""GPU suite: a Llama-3-8B-shaped model (random bfloat16 weights, nothing downloaded), inseq's methods against ours.

One prepared script for a machine with a GPU:

* ``rotary_attention`` (SDPA) against inseq ``attention`` on the same model switched to eager attention, at 2k, 8k
  and 32k-token prompts. inseq's ``attention`` needs ``output_attentions``, i.e. a ``tokens x tokens`` matrix per
  layer and head (inseq issue #279: out of memory past ~2.5k tokens on 7B models even on 80 GB); an out-of-memory
  error is caught and reported as such in the table.
* ``custom_saliency`` against inseq ``saliency`` at 1k and 4k-token prompts.

Each attributes 16 forced new tokens (``--new-tokens``). Time is wall-clock (CUDA synchronised), peak memory is
``torch.cuda.max_memory_allocated`` above what was allocated before the call (the model's weights excluded).

The model is Llama 3 8B's shape (32 layers x 4096, 32 query / 8 key-value heads, MLP 14,336, vocabulary 128,256,
rope theta 500,000), built directly on the device in bfloat16 from its config. When its weights would take more than
half of the free GPU memory, layers are dropped until they fit (the table header says how many were kept).

``--tiny`` runs the same script on the CPU with a small model and short prompts (the test suite does so to check the
script and its table). Nothing is downloaded in either case.

Usage: python benchmarks/gpu_suite.py [--tiny] [--attention-lengths 2048 8192 32768] [--saliency-lengths 1024 4096]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import contextmanager

import inseq
import torch
from bench_common import PairRow, compare, make_texts, pair_table
from transformers import LlamaConfig, LlamaForCausalLM

import inseq_ext  # noqa: F401  (registers the methods)
from inseq_ext.tiny_models import build_tokenizer

#: Llama 3 8B's architecture (public config values).
LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
}
#: A small model of the same family for ``--tiny`` (CPU, seconds).
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
}


def llama_config(shape: dict, max_positions: int, tokenizer) -> LlamaConfig:
    rope_theta = shape["rope_theta"]
    fields = {key: value for key, value in shape.items() if key != "rope_theta"}
    return LlamaConfig(
        **fields,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def parameter_bytes(config: LlamaConfig, dtype: torch.dtype) -> int:
    """Bytes of the model's weights (embeddings, LM head, blocks), from the config."""
    hidden, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = hidden // config.num_attention_heads
    attention = hidden * hidden * 2 + 2 * hidden * config.num_key_value_heads * head_dim
    block = attention + 3 * hidden * ffn + 2 * hidden
    total = 2 * vocab * hidden + config.num_hidden_layers * block + hidden
    return total * torch.finfo(dtype).bits // 8


def build(config: LlamaConfig, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Random weights (seeded), built directly on ``device`` in ``dtype``."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


@contextmanager
def eager_attention(model):
    """The model with eager attention (so that it returns attention weights) inside the block, SDPA again after."""
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation("sdpa")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small model on the CPU (for tests)")
    parser.add_argument("--attention-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--saliency-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.tiny:
        shape, device, dtype = TINY, torch.device("cpu"), torch.float32
        attention_lengths, saliency_lengths, new_tokens = [32, 64, 128], [32, 64], 4
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_suite.py needs a CUDA device (or --tiny for a CPU check).")
        shape, device, dtype = dict(LLAMA3_8B), torch.device("cuda"), torch.bfloat16
        attention_lengths, saliency_lengths, new_tokens = [2048, 8192, 32768], [1024, 4096], 16
    attention_lengths = args.attention_lengths or attention_lengths
    saliency_lengths = args.saliency_lengths or saliency_lengths
    new_tokens = args.new_tokens or new_tokens

    tokenizer = build_tokenizer(vocab_size=384, add_bos=True)
    longest = max(attention_lengths + saliency_lengths) + new_tokens + 8
    config = llama_config(shape, longest, tokenizer)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        while config.num_hidden_layers > 1 and parameter_bytes(config, dtype) > free / 2:
            config.num_hidden_layers -= 1
    model = build(config, device, dtype)
    ours = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer, device=str(device))
    rotary = inseq.load_model(model, "rotary_attention", tokenizer=tokenizer, device=str(device))
    theirs_attention = inseq.load_model(model, "attention", tokenizer=tokenizer, device=str(device))
    name = "Llama-3-8B-shaped" if not args.tiny else "tiny Llama"
    print(
        f"model: {name}, {config.num_hidden_layers} layers x {config.hidden_size} hidden, "
        f"{config.num_attention_heads} query / {config.num_key_value_heads} key-value heads, MLP "
        f"{config.intermediate_size}, vocabulary {config.vocab_size}, {str(dtype).removeprefix('torch.')}, random "
        f"weights ({parameter_bytes(config, dtype) / 2**30:.1f} GiB); device {device_name(device)}; "
        f"{new_tokens} forced new tokens",
        flush=True,
    )

    def call(wrapper, prompt: str, full: str, method: str, aggregate: bool):
        def run():
            out = wrapper.attribute(prompt, full, method=method, show_progress=False)
            return out.aggregate()[0].target_attributions if aggregate else out[0].target_attributions

        return run

    def eager_call(prompt: str, full: str):
        def run():
            with eager_attention(model):
                return call(theirs_attention, prompt, full, "attention", aggregate=False)()

        return run

    warm_prompt, warm_full = make_texts(tokenizer, 16, new_tokens)
    for wrapper, method in [(ours, "saliency"), (ours, "custom_saliency"), (rotary, "rotary_attention")]:
        wrapper.attribute(warm_prompt, warm_full, method=method, show_progress=False)
    eager_call(warm_prompt, warm_full)()

    attention_rows: list[PairRow] = []
    for length in attention_lengths:
        prompt, full = make_texts(tokenizer, length, new_tokens)
        row = compare(length, eager_call(prompt, full), call(rotary, prompt, full, "rotary_attention", False), device)
        attention_rows.append(row)
        print(f"{length}: attention {status(row, 'baseline')}, rotary_attention {status(row, 'ours')}", flush=True)
    saliency_rows: list[PairRow] = []
    for length in saliency_lengths:
        prompt, full = make_texts(tokenizer, length, new_tokens)
        row = compare(
            length,
            call(ours, prompt, full, "saliency", True),
            call(ours, prompt, full, "custom_saliency", True),
            device,
        )
        saliency_rows.append(row)
        print(f"{length}: saliency {status(row, 'baseline')}, custom_saliency {status(row, 'ours')}", flush=True)

    print("\nAttention weights:\n")
    print(pair_table(attention_rows, "attention (eager)", "rotary_attention", lambda row: "-"))
    print("\nGradient saliency:\n")
    print(pair_table(saliency_rows, "saliency", "custom_saliency", lambda row: "-"))


def status(row: PairRow, side: str) -> str:
    measurement = getattr(row, side)
    return measurement.error or f"{measurement.wall_s:.2f} s, peak +{measurement.peak_mib:,.0f} MiB"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


if __name__ == "__main__":
    main()

"""Benchmark: inseq ``saliency`` vs ``custom_saliency`` on a GPT-2-small-sized model, in one process.

GPT-2 architecture with 12 layers and 768 hidden units (random weights from a config: speed does not depend on
the weights), a ~100-token prompt and 32 forced new tokens. Both methods attribute the same forced generation;
the script prints the wall-clock times, their ratio and the largest absolute difference between the two
aggregated heatmaps. Target: ratio >= 1.8, difference <= 1e-4.

Usage: python benchmarks/bench_custom_saliency.py [--repeats 3] [--prompt-tokens 100] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import logging
import time

import inseq
import torch
from bench_common import make_texts

import inseq_ext  # noqa: F401  (registers custom_saliency)
from inseq_ext.tiny_models import build_model, build_tokenizer


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options for the benchmark model and texts, shared by the benchmark scripts."""
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257, help="rows of the embedding/LM head (GPT-2 small: 50257)")


def benchmark_model_and_texts(args: argparse.Namespace):
    """GPT-2-sized model (random weights), its tokenizer, a prompt and the forced text, from parsed arguments."""
    tokenizer = build_tokenizer(vocab_size=384)
    model, tokenizer = build_model(
        "gpt2",
        tokenizer=tokenizer,
        hidden=args.hidden,
        layers=args.layers,
        heads=12,
        max_positions=1024,
        vocab_size=max(args.vocab, len(tokenizer)),
    )
    prompt, full = make_texts(tokenizer, args.prompt_tokens, args.new_tokens)
    return model, tokenizer, prompt, full


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_model_arguments(parser)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model, tokenizer, prompt, full = benchmark_model_and_texts(args)
    attribution_model = inseq.load_model(model, "saliency", tokenizer=tokenizer)

    def run(method: str):
        return attribution_model.attribute(prompt, full, method=method, show_progress=False).aggregate()

    run("saliency"), run("custom_saliency")  # warm-up
    t_inseq, ref = best_time(lambda: run("saliency"), args.repeats)
    t_ours, ours = best_time(lambda: run("custom_saliency"), args.repeats)
    a, b = ref[0].target_attributions, ours[0].target_attributions
    n_steps = a.shape[1]
    max_diff = (a - b).nan_to_num().abs().max().item()
    print(
        f"model: GPT-2, {args.layers} layers x {args.hidden} hidden, vocabulary {model.config.vocab_size}; "
        f"prompt {len(tokenizer(prompt).input_ids)} tokens, {n_steps} forced new tokens; "
        f"torch threads {torch.get_num_threads()}; best of {args.repeats}"
    )
    print(f"inseq saliency:            {t_inseq:8.3f} s")
    print(f"inseq_ext custom_saliency: {t_ours:8.3f} s")
    print(f"speed-up ratio (saliency / custom_saliency): {t_inseq / t_ours:.2f}x (target >= 1.8x)")
    print(f"max abs difference of aggregated heatmaps: {max_diff:.2e} (target <= 1e-4)")


if __name__ == "__main__":
    main()

"""Benchmark: inseq ``layer_gradient_x_activation`` once per block vs ``block_gradient_x_input`` once, one process.

GPT-2 architecture with 12 layers and 768 hidden units (random weights, GPT-2's 50,257-token vocabulary), a
100-token prompt and 32 forced new tokens. inseq needs one run per block (its layer methods take one target
layer); ``block_gradient_x_input`` returns every block (and the embeddings) from one run. The script prints both
times, their ratio and the largest absolute difference between inseq's per-block scores (summed over the hidden
size) and ours. Target: ratio >= 5.

Usage: python benchmarks/bench_block_gradient_x_input.py [--repeats 1] [--layers 12]
"""

from __future__ import annotations

import argparse
import logging
import time

import inseq
import torch
from bench_custom_saliency import add_model_arguments, benchmark_model_and_texts

import inseq_ext  # noqa: F401  (registers block_gradient_x_input)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    add_model_arguments(parser)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model, tokenizer, prompt, full = benchmark_model_and_texts(args)
    ours_model = inseq.load_model(model, "block_gradient_x_input", tokenizer=tokenizer)
    per_layer_models = [
        inseq.load_model(
            model, "layer_gradient_x_activation", tokenizer=tokenizer, target_layer=f"transformer.h.{idx}"
        )
        for idx in range(args.layers)
    ]

    def run_inseq() -> list[torch.Tensor]:
        return [
            m.attribute(prompt, full, show_progress=False)[0].target_attributions.sum(-1) for m in per_layer_models
        ]

    def run_ours() -> torch.Tensor:
        return ours_model.attribute(prompt, full, show_progress=False)[0].target_attributions

    run_ours()  # warm-up
    t_inseq, t_ours = float("inf"), float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        reference = run_inseq()
        t_inseq = min(t_inseq, time.perf_counter() - start)
        start = time.perf_counter()
        ours = run_ours()
        t_ours = min(t_ours, time.perf_counter() - start)
    max_diff = max((ours[..., idx + 1] - ref).nan_to_num().abs().max().item() for idx, ref in enumerate(reference))
    scale = max(ref.nan_to_num().abs().max().item() for ref in reference)
    print(
        f"model: GPT-2, {args.layers} layers x {args.hidden} hidden, vocabulary {model.config.vocab_size}; prompt "
        f"{len(tokenizer(prompt).input_ids)} tokens, {ours.shape[1]} forced new tokens; torch threads "
        f"{torch.get_num_threads()}; best of {args.repeats}"
    )
    print(f"inseq layer_gradient_x_activation, {args.layers} runs: {t_inseq:8.2f} s")
    print(f"inseq_ext block_gradient_x_input, 1 run:      {t_ours:8.2f} s")
    print(f"speed-up ratio: {t_inseq / t_ours:.1f}x (target >= 5x)")
    print(f"max abs difference per block: {max_diff:.2e} (largest score {scale:.2e})")


if __name__ == "__main__":
    main()

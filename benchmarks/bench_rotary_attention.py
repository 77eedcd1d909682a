"""Benchmark: inseq ``attention`` (eager model) vs ``rotary_attention`` (SDPA model): time and peak memory.

``--methods rotary_attention attention_rollout`` also measures ``attention_rollout`` (SDPA model) against the same
inseq ``attention`` run, to show what rolling the attention out through the layers costs on top.

Llama architecture, 8 layers, 512 hidden units, grouped-query attention (8 query heads, 2 key/value heads), a
32,000-token vocabulary like Llama's, random weights from a config (speed and memory do not depend on the weights).
Both methods attribute the same 32 forced new tokens after a 100-token and a 2,000-token prompt, in one process,
after one warm-up call of each method at the first prompt size; the time is the best of 3 alternating runs for short
prompts (the development machine is shared and noisy) and of one run for the 2,000-token prompt. inseq's
``attention`` needs ``output_attentions``, so it gets a copy of the model with eager attention; ``rotary_attention``
runs the model with its default SDPA attention.

Peak memory: resident set size above the level before the run, sampled every 2 ms (``bench_common.PeakResidentMemory``;
the figure is the largest over the runs).

CPU time (``time.process_time``, all threads of the process) is printed beside the wall-clock time: on a shared,
busy machine it varies less. The script prints the times and peak memories, their ratios (inseq / ours: above 1
means ours is faster or lighter) and the largest difference between the two methods' raw scores. Targets: time
ratio >= 1 at 100 tokens; time and memory ratios > 1 at 2,000 tokens.

Usage: python benchmarks/bench_rotary_attention.py [--prompt-tokens 100 2000] [--new-tokens 32]
       [--methods rotary_attention attention_rollout]
"""

from __future__ import annotations

import argparse
import logging
import time

import inseq
import torch
from bench_common import LLAMA_BENCH_SIZE, PeakResidentMemory, llama_benchmark_models, make_texts

import inseq_ext  # noqa: F401  (registers rotary_attention and attention_rollout)


def measured_run(attribution_model, prompt: str, full: str, method: str):
    """(wall seconds, CPU seconds, peak MiB above baseline, raw scores of the one sequence) of one call."""
    with PeakResidentMemory() as memory:
        start, start_cpu = time.perf_counter(), time.process_time()
        out = attribution_model.attribute(prompt, full, method=method, show_progress=False)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    scores = out.sequence_attributions[0].target_attributions
    del out
    return elapsed, cpu, memory.above_baseline_mib, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument(
        "--methods", nargs="+", default=["rotary_attention"], choices=["rotary_attention", "attention_rollout"]
    )
    parser.add_argument(
        "--short-repeats", type=int, default=3, help="runs per method (best time) for prompts <= 500 tokens; else 1"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    sdpa_model, eager_model, tokenizer = llama_benchmark_models(max_positions=4096, vocab_size=args.vocab)
    size = {**LLAMA_BENCH_SIZE, "vocab_size": sdpa_model.config.vocab_size}
    ours = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer)
    theirs = inseq.load_model(eager_model, "attention", tokenizer=tokenizer)
    # Warm-up at the first size: the first call at a new shape pays one-off costs (kernel selection, allocator).
    warm_prompt, warm_full = make_texts(tokenizer, args.prompt_tokens[0], args.new_tokens)
    for method in args.methods:
        ours.attribute(warm_prompt, warm_full, method=method, show_progress=False)
    theirs.attribute(warm_prompt, warm_full, show_progress=False)
    print(
        f"model: Llama, {size['layers']} layers x {size['hidden']} hidden, {size['heads']} query heads / "
        f"{size['kv_heads']} key-value heads, vocabulary {size['vocab_size']}; {args.new_tokens} forced new tokens; "
        f"torch threads {torch.get_num_threads()}; best of {args.short_repeats} runs up to 500 prompt tokens, "
        "one run above"
    )
    for prompt_tokens in args.prompt_tokens:
        prompt, full = make_texts(tokenizer, prompt_tokens, args.new_tokens)
        repeats = args.short_repeats if prompt_tokens <= 500 else 1
        times = {method: float("inf") for method in ["attention", *args.methods]}
        cpus, peaks, scores = dict(times), dict.fromkeys(times, 0.0), {}
        for _ in range(repeats):  # alternated, so that a busy moment of the machine hits the methods alike
            for method in times:
                model = theirs if method == "attention" else ours
                elapsed, cpu, memory, scores[method] = measured_run(model, prompt, full, method)
                times[method], cpus[method] = min(times[method], elapsed), min(cpus[method], cpu)
                peaks[method] = max(peaks[method], memory)
        print(f"\nprompt {len(tokenizer(prompt).input_ids)} tokens, scores {tuple(scores['attention'].shape)}:")
        for method in times:
            label = "inseq attention (eager)" if method == "attention" else f"inseq_ext {method}"
            print(f"  {label + ':':31}{times[method]:8.3f} s wall {cpus[method]:8.3f} s CPU  "
                  f"peak +{peaks[method]:8.1f} MiB")  # fmt: skip
        for method in args.methods:
            line = (
                f"  ratios inseq attention / {method}: time {times['attention'] / times[method]:.2f}x "
                f"(CPU {cpus['attention'] / cpus[method]:.2f}x), "
                f"peak memory {peaks['attention'] / max(peaks[method], 1e-9):.2f}x"
            )
            if method == "rotary_attention":
                difference = (scores[method] - scores["attention"]).nan_to_num().abs().max().item()
                line += f"; max abs score difference {difference:.2e}"
            print(line)


if __name__ == "__main__":
    main()

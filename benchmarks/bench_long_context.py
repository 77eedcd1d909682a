"""Benchmark: long prompts, inseq's methods against ours, side by side in one process: time and peak memory.

Model: Llama architecture, 8 layers x 512 hidden units, grouped-query attention with 8 query and 2 key/value heads,
32,000-token vocabulary, random weights from a config (``bench_common.llama_benchmark_models``). Prompts of 512,
1,024, 2,048 and 4,096 tokens (``--lengths``), each followed by 16 forced new tokens (``--new-tokens``).

Pairs, run one after the other at each length (baseline first), after one warm-up call of every method on a short
prompt:

* inseq ``saliency`` vs ``custom_saliency`` (the SDPA model; difference of the aggregated heatmaps, which are equal
  up to float rounding);
* inseq ``attention`` on an eager copy of the model (same weights; it needs ``output_attentions``) vs
  ``rotary_attention`` on the SDPA model (difference of the raw per-layer, per-head scores).

Time is wall-clock (CPU time of the process in brackets); peak memory is the resident set size above the level
before the call (``bench_common.PeakResidentMemory``). Ratios are inseq / ours: above 1 means ours is faster or
lighter. Targets: ``custom_saliency`` at least 1.5x faster than ``saliency`` with a peak no higher, at every length;
``rotary_attention`` peak below 1/10 of ``attention``'s from 2,048 tokens on.

inseq's ``attention`` keeps a ``tokens x tokens`` matrix per layer and head (4 GiB at 4k tokens here, several copies
at the peak): before running it the script compares an estimate of its need with the memory available
(``MemAvailable``) and reports "skipped" instead of pushing a shared machine into swap or the OOM killer.

Usage: python benchmarks/bench_long_context.py [--lengths 512 1024 2048 4096] [--new-tokens 16] [--threads N]
"""

from __future__ import annotations

import argparse
import logging

import inseq
import torch
from bench_common import (
    LLAMA_BENCH_SIZE,
    Measurement,
    PairRow,
    available_bytes,
    compare,
    llama_benchmark_models,
    make_texts,
    measure,
    pair_table,
)

import inseq_ext  # noqa: F401  (registers the methods)

#: Copies of the per-layer attention weights inseq's ``attention`` holds at its peak (the model's output tuple,
#: inseq's stacked copy, and transient buffers), used to decide whether to run it.
EAGER_ATTENTION_COPIES = 3


def eager_attention_bytes(total_tokens: int, layers: int, heads: int) -> int:
    """Estimated peak bytes of inseq's ``attention`` on the eager model (float32 weights)."""
    return EAGER_ATTENTION_COPIES * layers * heads * total_tokens**2 * 4


def saliency_target(row: PairRow) -> str:
    ok = row.time_ratio is not None and row.time_ratio >= 1.5 and row.ours.peak_mib <= row.baseline.peak_mib
    return "met" if ok else "MISSED"


def attention_target(row: PairRow) -> str:
    if row.prompt_tokens < 2048:
        return "(from 2k)"
    if row.baseline.error:
        return f"met (inseq {row.baseline.error})"
    return "met" if row.memory_ratio is not None and row.memory_ratio > 10 else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--methods", choices=["saliency", "attention", "both"], default="both", help="which pair(s) to run"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    longest = max(args.lengths) + args.new_tokens + 8
    sdpa_model, eager_model, tokenizer = llama_benchmark_models(max_positions=longest)
    gradients = inseq.load_model(sdpa_model, "custom_saliency", tokenizer=tokenizer)
    attention = inseq.load_model(eager_model, "attention", tokenizer=tokenizer)
    rotary = inseq.load_model(sdpa_model, "rotary_attention", tokenizer=tokenizer)

    def heatmap(model, prompt: str, full: str, method: str):
        def run():
            out = model.attribute(prompt, full, method=method, show_progress=False)
            return out.aggregate()[0].target_attributions

        return run

    def raw_scores(model, prompt: str, full: str, method: str):
        return lambda: model.attribute(prompt, full, method=method, show_progress=False)[0].target_attributions

    run_saliency, run_attention = args.methods in ("saliency", "both"), args.methods in ("attention", "both")
    warm_prompt, warm_full = make_texts(tokenizer, 64, args.new_tokens)
    for model, method in [(gradients, "saliency"), (gradients, "custom_saliency")] * run_saliency + [
        (attention, "attention"),
        (rotary, "rotary_attention"),
    ] * run_attention:
        model.attribute(warm_prompt, warm_full, method=method, show_progress=False)

    size = {**LLAMA_BENCH_SIZE, "vocab_size": sdpa_model.config.vocab_size}
    print(
        f"model: Llama, {size['layers']} layers x {size['hidden']} hidden, {size['heads']} query heads / "
        f"{size['kv_heads']} key-value heads, vocabulary {size['vocab_size']}, float32, random weights; "
        f"{args.new_tokens} forced new tokens; torch threads {torch.get_num_threads()}; one run per method and length",
        flush=True,
    )
    saliency_rows, attention_rows = [], []
    for length in args.lengths:
        prompt, full = make_texts(tokenizer, length, args.new_tokens)
        total = len(tokenizer(full).input_ids)
        if run_saliency:
            row = compare(
                length,
                heatmap(gradients, prompt, full, "saliency"),
                heatmap(gradients, prompt, full, "custom_saliency"),
            )
            saliency_rows.append(row)
            print(f"{length}: saliency {describe(row.baseline)}, custom_saliency {describe(row.ours)}", flush=True)
        if run_attention:
            need = eager_attention_bytes(total, size["layers"], size["heads"])
            if need > 0.8 * available_bytes():
                skipped = Measurement(0.0, 0.0, 0.0, error=f"skipped: needs ~{need / 2**30:.1f} GiB")
                ours = measure(raw_scores(rotary, prompt, full, "rotary_attention"))
                row = PairRow(length, skipped, ours, None)
            else:
                row = compare(
                    length,
                    raw_scores(attention, prompt, full, "attention"),
                    raw_scores(rotary, prompt, full, "rotary_attention"),
                )
            attention_rows.append(row)
            print(f"{length}: attention {describe(row.baseline)}, rotary_attention {describe(row.ours)}", flush=True)
    if saliency_rows:
        print("\nGradient saliency (target: custom_saliency >= 1.5x faster, peak no higher):\n")
        print(pair_table(saliency_rows, "saliency", "custom_saliency", saliency_target))
    if attention_rows:
        print("\nAttention weights (target: rotary_attention peak < 1/10 of attention's from 2k tokens):\n")
        print(pair_table(attention_rows, "attention (eager)", "rotary_attention", attention_target))


def describe(measurement: Measurement) -> str:
    if measurement.error:
        return measurement.error
    return f"{measurement.wall_s:.2f} s ({measurement.cpu_s:.2f} s CPU), peak +{measurement.peak_mib:,.0f} MiB"


if __name__ == "__main__":
    main()

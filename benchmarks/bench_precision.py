"""How close bfloat16 / float16 maps are to float32 maps, per method, on the demo models' probes.

For each demo model (GPT-2 and Llama, trained, shipped in the package) and each method, the model is loaded in
float32 and in the low-precision dtype, both attribute the same forced targets (prompt + the probe's true answer,
every probe: 50 per task), and the maps are compared column by column
(``inseq_ext.evaluation.precision.compare_maps``): share of generated tokens whose top-1 attributed token (largest
absolute score) is the same, largest absolute score difference, and the largest float32 score for scale.

Usage: python benchmarks/bench_precision.py [--models gpt2 llama] [--dtypes bfloat16 float16] [--per-task 50]
"""

from __future__ import annotations

import argparse
import logging

import torch

import inseq_ext
from inseq_ext.demo_models import demo_probes
from inseq_ext.evaluation.precision import low_precision_agreement

METHODS = ("custom_saliency", "block_gradient_x_input", "rotary_attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo models are tiny)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    print("| model | dtype | method | generated tokens | same top-1 | max abs difference | largest float32 score |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        counts: dict[str, int] = {}
        prompts, targets = [], []
        for probe in demo_probes(name):
            if counts.get(probe["task"], 0) < args.per_task:
                counts[probe["task"]] = counts.get(probe["task"], 0) + 1
                prompts.append(probe["prompt"])
                targets.append(probe["prompt"] + probe["answer"])
        for dtype_name in args.dtypes:
            for method in args.methods:
                agreement = low_precision_agreement(
                    inseq_ext.demo_model(name), method, prompts, targets, getattr(torch, dtype_name)
                )
                print(
                    f"| {name} | {dtype_name} | {method} | {agreement.columns} | {agreement.top1_rate:.1%} "
                    f"({agreement.same_top1}) | {agreement.max_abs_difference:.2e} | "
                    f"{agreement.max_abs_reference:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

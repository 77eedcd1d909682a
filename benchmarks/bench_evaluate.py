"""Benchmark: faithfulness evaluation vs attribution of the same generation, on a GPT-2-small-sized model.

GPT-2 architecture with 12 layers and 768 hidden units (random weights from a config, as in
``bench_custom_saliency.py``: speed does not depend on the weights), a ~100-token prompt and 32 forced new tokens.
The script attributes the generation with ``custom_saliency``, then evaluates that output with comprehensiveness and
sufficiency at the 5 default ks (ERASER's 1, 5, 10, 20, 50 %), and prints both wall-clock times and their ratio
(target: evaluation < attribution, ratio < 1). It also prints the cost of the random baseline (3 seeds, computed
once per generation and shared by every method evaluated on it) and of the soft metrics, and the forward passes and
tokens the scorer ran, against the tokens a naive one-pass-per-removal evaluation would run and against the scorer
without shared key/value prefixes.

Usage: python benchmarks/bench_evaluate.py [--repeats 3] [--prompt-tokens 100] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import logging
import math

import inseq
import torch
from bench_custom_saliency import add_model_arguments, benchmark_model_and_texts, best_time

import inseq_ext  # noqa: F401  (registers custom_saliency)
from inseq_ext.evaluation import evaluate_faithfulness
from inseq_ext.evaluation.faithfulness import DEFAULT_KS, ProbabilityScorer


def naive_tokens(output, ks) -> int:
    """Tokens a one-forward-per-removal evaluation of comp + suff would run (no sharing across steps)."""
    sequence = output.sequence_attributions[0]
    total = 0
    for column in range(sequence.target_attributions.shape[1]):
        prefix = sequence.attr_pos_start + column
        for k in ks:
            removed = min(prefix, max(1, math.ceil(k * prefix - 1e-9)))
            total += (prefix - removed) + removed  # comp input + suff input
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_model_arguments(parser)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model, tokenizer, prompt, full = benchmark_model_and_texts(args)
    attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)

    def attribute():
        return attribution_model.attribute(prompt, full, show_progress=False)

    def evaluate(output, metrics=("comprehensiveness", "sufficiency"), random_seeds=0, **scorer_options):
        scorer = ProbabilityScorer(model, **scorer_options)  # fresh cache: nothing carried over between repeats
        result = evaluate_faithfulness(
            attribution_model, output, metrics=metrics, random_seeds=random_seeds, bootstrap=0, scorer=scorer
        )
        return result, scorer

    output = attribute()
    evaluate(output)  # warm-up
    # Interleaved repeats (attribution, then each evaluation, again and again): on a machine shared with other work
    # a change of load then hits both sides; each side keeps its best time.
    times: dict[str, float] = {}
    runs = {
        "attribute": attribute,
        "evaluate": lambda: evaluate(output),
        "random": lambda: evaluate(output, random_seeds=3),
        "soft": lambda: evaluate(output, metrics=("soft_comprehensiveness", "soft_sufficiency")),
        "unshared": lambda: evaluate(output, min_shared_prefix=None),
    }
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            elapsed, results[name] = best_time(run, 1)
            times[name] = min(times.get(name, float("inf")), elapsed)
    t_attribute, t_evaluate, t_random, t_soft, t_unshared = (times[name] for name in runs)
    output = results["attribute"]
    result, scorer = results["evaluate"]
    scorer_random = results["random"][1]
    steps = result.steps
    print(
        f"model: GPT-2, {args.layers} layers x {args.hidden} hidden, vocabulary {model.config.vocab_size}; "
        f"prompt {len(tokenizer(prompt).input_ids)} tokens, {steps} forced new tokens; "
        f"torch threads {torch.get_num_threads()}; best of {args.repeats}"
    )
    print(f"attribution, custom_saliency:                      {t_attribute:8.3f} s")
    print(f"evaluation, comprehensiveness + sufficiency (5 ks): {t_evaluate:8.3f} s")
    print(f"cost ratio (evaluation / attribution): {t_evaluate / t_attribute:.2f} (target < 1)")
    print(
        f"scorer: {scorer.forward_passes} forward passes computing {scorer.forward_tokens} tokens; a naive evaluation "
        f"(one pass per removal and step) would compute {naive_tokens(output, DEFAULT_KS)} tokens"
    )
    unshared = results["unshared"][1]
    print(
        f"without the shared key/value prefixes: {t_unshared:8.3f} s ({t_unshared / t_attribute:.2f} x attribution; "
        f"{unshared.forward_passes} passes, {unshared.forward_tokens} tokens)"
    )
    print(
        f"with the random baseline (3 seeds, once per generation): {t_random:8.3f} s "
        f"({t_random / t_attribute:.2f} x attribution; {scorer_random.forward_tokens} tokens)"
    )
    print(f"soft comprehensiveness + soft sufficiency: {t_soft:8.3f} s ({t_soft / t_attribute:.2f} x attribution)")
    print(
        "comp AOPC {:.4f}, suff AOPC {:.4f}".format(
            result.metrics["comprehensiveness"].mean, result.metrics["sufficiency"].mean
        )
    )


if __name__ == "__main__":
    main()

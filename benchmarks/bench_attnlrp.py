"""Benchmark: ``attnlrp`` vs ``custom_saliency`` on a GPT-2-small-sized model, in one process.

GPT-2 architecture with 12 layers and 768 hidden units (random weights from a config: speed does not depend on
the weights), GPT-2's 50,257-token vocabulary, a ~100-token prompt and 32 forced new tokens, SDPA attention. Both
methods attribute the same forced generation through the same single-forward engine; ``attnlrp`` adds its rules
(hooks on 25 LayerNorms and 12 GELUs, the attention-registry wrapper) and gradient x input. The script prints the
best wall-clock time and the best process CPU time of each (on a machine shared with other jobs the CPU time is the
steadier figure), their ratios and whether the vectorized backward pass stayed on. Target: ratio <= 1.5.

Usage: python benchmarks/bench_attnlrp.py [--repeats 3] [--prompt-tokens 100] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import logging
import time

import inseq
import torch
from bench_custom_saliency import add_model_arguments, benchmark_model_and_texts, best_time

import inseq_ext  # noqa: F401  (registers attnlrp and custom_saliency)
from inseq_ext.attr.step_gradients import SingleForwardGradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_model_arguments(parser)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model, tokenizer, prompt, full = benchmark_model_and_texts(args)
    attribution_model = inseq.load_model(model, "custom_saliency", tokenizer=tokenizer)
    vectorized: list[bool] = []
    release = SingleForwardGradients.release

    def recording_release(engine: SingleForwardGradients) -> None:
        vectorized.append(engine.vectorized_backward)
        release(engine)

    SingleForwardGradients.release = recording_release

    def run(method: str):
        return attribution_model.attribute(prompt, full, method=method, show_progress=False).aggregate()

    run("custom_saliency"), run("attnlrp")  # warm-up
    # Interleaved repeats, so that load from other processes hits both methods alike.
    wall = {"custom_saliency": float("inf"), "attnlrp": float("inf")}
    cpu = dict(wall)
    for _ in range(args.repeats):
        for method in wall:
            vectorized.clear()
            cpu_start = time.process_time()
            wall[method] = min(wall[method], best_time(lambda method=method: run(method), 1)[0])
            cpu[method] = min(cpu[method], time.process_time() - cpu_start)
    t_saliency, t_attnlrp = wall["custom_saliency"], wall["attnlrp"]
    n_steps = run("attnlrp")[0].target_attributions.shape[1]
    print(
        f"model: GPT-2, {args.layers} layers x {args.hidden} hidden, vocabulary {model.config.vocab_size}, "
        f"{model.config._attn_implementation} attention; prompt {len(tokenizer(prompt).input_ids)} tokens, "
        f"{n_steps} forced new tokens; torch threads {torch.get_num_threads()}; best of {args.repeats}"
    )
    print(f"inseq_ext custom_saliency: {t_saliency:8.3f} s wall, {cpu['custom_saliency']:8.3f} s CPU")
    print(f"inseq_ext attnlrp:         {t_attnlrp:8.3f} s wall, {cpu['attnlrp']:8.3f} s CPU")
    print(f"cost ratio (attnlrp / custom_saliency): {t_attnlrp / t_saliency:.2f}x wall (target <= 1.5x)")
    print(f"cost ratio (attnlrp / custom_saliency): {cpu['attnlrp'] / cpu['custom_saliency']:.2f}x CPU time")
    print(f"attnlrp vectorized backward kept: {all(vectorized)}")


if __name__ == "__main__":
    main()

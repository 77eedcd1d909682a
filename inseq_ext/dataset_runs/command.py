"""The ``inseq-ext attribute-dataset`` and ``inseq-ext summarize`` commands (arguments and handlers).

``inseq_ext.cli`` registers the two subcommands with :func:`add_attribute_dataset_arguments` and
:func:`add_summarize_arguments` and calls :func:`run_attribute_dataset` / :func:`run_summarize`; this module
imports nothing heavy at import time, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def key_values(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """``["n_steps=20", "baseline=zeros"]`` -> ``{"n_steps": 20, "baseline": "zeros"}`` (values read as JSON
    when they parse, as text otherwise)."""
    from inseq_ext.dataset_runs.errors import DatasetRunError

    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, separator, text = pair.partition("=")
        if not separator or not key.strip():
            raise DatasetRunError(f"{option} takes KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        result[key.strip()] = value
    return result


def add_attribute_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="JSON Lines, CSV, TSV or Parquet file, or a local Hugging Face datasets folder")
    parser.add_argument("--out", "-o", required=True, help="output folder (created; rerun to resume)")
    parser.add_argument(
        "--model", "-m", default=None, help="hub name, local folder, or demo:gpt2 / demo:llama (default demo:gpt2)"
    )
    parser.add_argument("--method", "-a", default="custom_saliency", help="attribution method (inseq registry)")
    parser.add_argument("--prompt-column", default="prompt", help="column of the prompts (default: prompt)")
    parser.add_argument("--target-column", default=None, help="column of forced continuations (default: generate)")
    parser.add_argument("--id-column", default=None, help="column of example ids (default: the row number)")
    parser.add_argument("--limit", type=int, default=None, help="attribute only the first N rows")
    parser.add_argument("--split", default=None, help="split of a datasets folder that has several")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate per prompt (greedy)")
    parser.add_argument(
        "--generation-arg",
        action="append",
        metavar="KEY=VALUE",
        help="a generate() argument, e.g. do_sample=true (repeatable; values read as JSON)",
    )
    parser.add_argument(
        "--method-arg",
        action="append",
        metavar="KEY=VALUE",
        help="an argument of the attribution method, e.g. n_steps=20 (repeatable; values read as JSON)",
    )
    parser.add_argument(
        "--step-scores", nargs="*", default=None, help="step scores per token (default: probability; none: empty)"
    )
    parser.add_argument("--attributed-fn", default=None, help="step function to attribute (default: probability)")
    parser.add_argument("--attribute-target", action="store_true", help="encoder-decoders: attribute the target too")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts attributed together (similar lengths)")
    parser.add_argument(
        "--shard-size", type=int, default=32, help="examples per output file: the most an interruption loses"
    )
    parser.add_argument(
        "--raw-scores",
        choices=("auto", "always", "never"),
        default="auto",
        help="keep scores before aggregation (auto: for layer/head outputs)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and stochastic methods")
    parser.add_argument("--device", default=None, help="device, e.g. cpu or cuda (default: inseq's choice)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="DIR", help="output folders of attribute-dataset runs")
    parser.add_argument("--top", type=int, default=10, help="most attributed tokens to list (default 10)")
    parser.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="N",
        help="also evaluate the faithfulness of the first N examples of each run (reruns the model)",
    )
    parser.add_argument("--json", default=None, help="also write the statistics as JSON to this file")


def run_attribute_dataset(args: argparse.Namespace) -> int:
    """``inseq-ext attribute-dataset``: run (or resume) and print where the output is."""
    import logging

    from inseq_ext.dataset_runs.runner import attribute_dataset

    logging.getLogger("inseq").setLevel(logging.ERROR)  # its per-call notices would break the progress bar
    result = attribute_dataset(
        args.data,
        args.out,
        method=args.method,
        model=args.model,
        prompt_column=args.prompt_column,
        target_column=args.target_column,
        id_column=args.id_column,
        limit=args.limit,
        split=args.split,
        max_new_tokens=args.max_new_tokens,
        generation_args=key_values(args.generation_arg, "--generation-arg"),
        step_scores=args.step_scores,
        attributed_fn=args.attributed_fn,
        method_args=key_values(args.method_arg, "--method-arg"),
        attribute_target=args.attribute_target,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        raw_scores=args.raw_scores,
        seed=args.seed,
        device=args.device,
        show_progress=not args.quiet,
    )
    rank, world = result.process
    if world > 1:
        print(f"inseq-ext: process {rank} of {world} wrote {result.shards_written} shards", file=sys.stderr)
    if result.complete:
        resumed = f", {result.shards_resumed} of {result.shards} shards resumed" if result.shards_resumed else ""
        errors = f"; {result.bad_rows} bad rows in {Path(result.out) / 'errors.jsonl'}" if result.bad_rows else ""
        processes = f" by {world} processes" if world > 1 else ""
        print(
            f"Attributed {result.examples} examples ({result.rows} generated tokens) in {result.seconds:.1f} s"
            f"{processes}{resumed}{errors}; output in {result.out}"
        )
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    """``inseq-ext summarize``: print the statistics of one or more runs (and write them as JSON)."""
    from inseq_ext.dataset_runs.summary import summarize_dataset_attributions
    from inseq_ext.files import atomic_output

    summary = summarize_dataset_attributions(args.runs, top=args.top, evaluate=args.evaluate)
    print(summary, end="")
    if args.json is not None:
        with atomic_output(args.json) as temporary:
            temporary.write_text(json.dumps(summary.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 0

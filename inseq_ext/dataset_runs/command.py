"""Handlers of ``inseq-ext attribute-dataset`` and ``inseq-ext summarize`` (their options: ``inseq_ext_cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from inseq_ext.dataset_runs.errors import DatasetRunError
from inseq_ext.dataset_runs.runner import attribute_dataset
from inseq_ext.dataset_runs.summary import summarize_dataset_attributions
from inseq_ext.files import atomic_output
from inseq_ext_cli import CLIError


def run_attribute_dataset(args: argparse.Namespace) -> int:
    """``inseq-ext attribute-dataset``: run (or resume) and say where the output is."""
    logging.getLogger("inseq").setLevel(logging.ERROR)  # per-call notices would break the progress bar
    try:
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
            generation_args=dict(args.generation_args),
            step_scores=[] if args.no_step_scores else args.step_scores,
            attributed_fn=args.attributed_fn,
            method_args=dict(args.method_args),
            attribute_target=args.attribute_target,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            raw_scores=args.raw_scores,
            seed=args.seed,
            device=args.device,
            show_progress=not args.quiet,
        )
    except DatasetRunError as error:
        raise CLIError(str(error)) from None
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
    try:
        summary = summarize_dataset_attributions(args.runs, top=args.top, evaluate=args.evaluate or 0)
    except DatasetRunError as error:
        raise CLIError(str(error)) from None
    print(summary, end="")
    if args.json is not None:
        with atomic_output(args.json) as temporary:
            temporary.write_text(json.dumps(summary.to_dict(), indent=1) + "\n", encoding="utf-8")
        print(f"Statistics written to {args.json}")
    return 0

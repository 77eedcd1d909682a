"""Handlers of ``inseq-ext evaluate`` and ``inseq-ext evaluate-demos``: rank attribution methods by faithfulness.

* ``inseq-ext evaluate "PROMPT" --methods custom_saliency,saliency,attention --model demo:llama`` generates a greedy
  continuation of the prompt (or reads prompts, optional forced continuations and rationales from ``--prompts
  FILE.jsonl``), attributes it with every method and prints one table ranked by comprehensiveness AOPC, with the
  random baseline and bootstrap confidence intervals; ``--json``, ``--markdown`` and ``--plot`` write files.
* ``inseq-ext evaluate-demos`` writes the published table: every method on the demo models' probes, faithfulness
  next to ground-truth pointing accuracy.

The parsers are in :mod:`inseq_ext_cli` (argument types check methods, metrics, ks and output paths before anything
is loaded); the handlers raise :class:`inseq_ext_cli.CLIError` for anything else the user can fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inseq_ext_cli import CLIError


@dataclass
class PromptEntry:
    """One line of ``--prompts``: the prompt, an optional forced continuation and an optional rationale."""

    prompt: str
    continuation: str | None = None
    truth_positions: list[int] | None = None


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def read_prompts(path: Path) -> list[PromptEntry]:
    """Entries of a JSONL prompts file (a plain JSON string is a prompt); a bad line is reported with its number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CLIError(f"--prompts {path}: cannot be read ({exc.strerror or exc})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"--prompts {path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CLIError(f"{where}: not valid JSON ({exc.msg})") from None
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise CLIError(f'{where}: needs a non-empty "prompt" string')
        continuation = item.get("continuation")
        if continuation is not None and not isinstance(continuation, str):
            raise CLIError(f'{where}: "continuation" must be a string')
        truth = item.get("truth_positions")
        if truth is not None and (
            not isinstance(truth, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in truth)
        ):
            raise CLIError(f'{where}: "truth_positions" must be a list of token indices')
        entries.append(PromptEntry(item["prompt"], continuation, truth))
    if not entries:
        raise CLIError(f"--prompts {path}: no prompts in the file")
    return entries


def plot_paths(path: Path, methods: list[str]) -> dict[str, Path]:
    """One PNG per method: the path itself for one method, ``STEM_METHOD.png`` beside it for several."""
    if len(methods) == 1:
        return {methods[0]: path}
    return {method: path.with_name(f"{path.stem}_{method}{path.suffix or '.png'}") for method in methods}


def evaluation_kwargs(args: argparse.Namespace, have_rationales: bool) -> dict[str, Any]:
    """Keyword arguments of ``evaluate_faithfulness`` from the shared options (already type-checked by the parser)."""
    from .faithfulness.evaluate import resolve_metrics

    metrics: Any = None if args.metrics is None else ("all" if args.metrics == ["all"] else args.metrics)
    try:
        metrics = resolve_metrics(metrics, have_rationales)
    except ValueError as error:
        raise CLIError(str(error).rstrip(".")) from None
    if args.baseline_token is not None and args.removal != "replace":
        raise CLIError("--baseline-token is only used with --removal replace")
    baseline: str | int | None = args.baseline_token
    if baseline is not None and baseline.isdigit():
        baseline = int(baseline)
    return {
        "metrics": metrics,
        "ks": args.ks,
        "removal": args.removal,
        "baseline_token": baseline,
        "random_seeds": args.random_seeds,
        "soft_samples": args.soft_samples,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
    }


def _write_text_outputs(args: argparse.Namespace, markdown: str, payload: Any) -> None:
    from ..cli import write_output

    for option, path, text, kind in (
        ("--json", args.json, json.dumps(payload, indent=1) + "\n", "Faithfulness values (JSON)"),
        ("--markdown", args.markdown, markdown, "Faithfulness table (Markdown)"),
    ):
        if path is not None:
            write_output(path, option, lambda temporary, text=text: temporary.write_text(text, encoding="utf-8"), kind)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__


def write_faithfulness_explorer(comparison: Any, attributions: dict[str, list[Any]], path: Path) -> None:
    """One explorer page: each prompt's generation with a method menu, each method's faithfulness beside its map.

    The values are the method's per-generation means (``MethodComparison.explorer_metrics(per_generation=True)``);
    the page's title is the explorer's own (methods and model, ``demo:NAME`` or the model folder's name).
    """
    from ..views.explorer import write_explorer

    methods = list(comparison.results)
    generations = [
        {method: attributions[method][i] for method in methods} for i in range(len(attributions[methods[0]]))
    ]
    write_explorer(generations, path, metrics=comparison.explorer_metrics(per_generation=True))


# --------------------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> None:
    """``inseq-ext evaluate``: attribute with every method, evaluate, print the ranked table, write files."""
    from ..cli import greedy_continuation, load_attribution_model, quiet_libraries, resolve_model, write_output
    from ..generation_length import check_generation_length
    from .faithfulness.compare import compare_methods
    from .ground_truth import DECODER_ONLY_METHODS, EAGER_ATTENTION_METHODS

    if (args.prompt is None) == (args.prompts is None):
        raise CLIError("give a PROMPT or --prompts FILE.jsonl (one of them)")
    entries = read_prompts(args.prompts) if args.prompts else [PromptEntry(args.prompt)]
    have_rationales = any(entry.truth_positions is not None for entry in entries)
    kwargs = evaluation_kwargs(args, have_rationales)
    if args.plot is not None:
        kwargs["metrics"] = tuple(dict.fromkeys((*kwargs["metrics"], "deletion", "insertion")))
    quiet_libraries()

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    name_or_path, label = resolve_model(args.model)
    scoring = load_attribution_model(name_or_path, label, "saliency")
    methods = list(args.methods)
    if scoring.is_encoder_decoder:
        for method in methods:
            if method in DECODER_ONLY_METHODS:
                progress(f"{method}: skipped (a method for decoder-only models)")
        methods = [method for method in methods if method not in DECODER_ONLY_METHODS]
    eager = None
    if any(method in EAGER_ATTENTION_METHODS for method in methods):
        eager = load_attribution_model(name_or_path, label, "attention")  # reads output_attentions
    targets = []
    for entry in entries:
        try:  # before generating: a prompt over the model's length would fail deep inside the model
            check_generation_length(scoring, entry.prompt, args.max_new_tokens)
        except ValueError as error:
            raise CLIError(str(error)) from None
        if entry.continuation is None:
            targets.append(greedy_continuation(scoring, entry.prompt, args.max_new_tokens))
        else:
            targets.append(entry.continuation if scoring.is_encoder_decoder else entry.prompt + entry.continuation)
    more = " ..." if len(targets) > 1 else ""
    progress(f"Model: {label} | {len(entries)} prompt(s) | generated: {targets[0]!r}{more}")
    attributions: dict[str, list[Any]] = {}
    failures: dict[str, str] = {}
    for method in methods:
        model = eager if method in EAGER_ATTENTION_METHODS else scoring
        try:
            attributions[method] = [
                model.attribute(entry.prompt, target, method=method, show_progress=False)
                for entry, target in zip(entries, targets, strict=True)
            ]
        except Exception as error:  # noqa: BLE001  (a method may fail in its own way; the others still run)
            failures[method] = _first_line(error)
            progress(f"{method}: fails ({failures[method]})")
            continue
        progress(f"{method}: attributed")
    if not attributions:
        raise CLIError(
            "no method could attribute the generation (" + "; ".join(map(": ".join, failures.items())) + ")"
        )
    rationales = [entry.truth_positions for entry in entries] if have_rationales else None
    try:
        comparison = compare_methods(scoring, attributions, rationales=rationales, **kwargs)
    except ValueError as error:
        raise CLIError(str(error).rstrip(".")) from None
    comparison.failures = failures
    steps = next(iter(comparison.results.values())).steps
    comparison.title = f"Faithfulness on {label}: {len(entries)} prompt(s), {steps} generated token(s)"
    print(comparison.table(), end="")
    if len(comparison.results) > 1:
        print(comparison.differences_text())
    payload = {"model": label, "prompts": [entry.prompt for entry in entries], "targets": targets,
               **comparison.to_dict()}  # fmt: skip
    _write_text_outputs(args, comparison.table(markdown=True), payload)
    if args.html is not None:
        write_output(
            args.html, "--html", lambda temporary: write_faithfulness_explorer(comparison, attributions, temporary)
        )
    if args.plot is not None:
        for method, path in plot_paths(args.plot, list(comparison.results)).items():
            write_output(path, "--plot", lambda temporary, m=method: comparison.results[m].plot_curves(temporary),
                         f"Deletion/insertion curves of {method}")  # fmt: skip


def run_evaluate_demos(args: argparse.Namespace) -> None:
    """``inseq-ext evaluate-demos``: the Markdown table of every method on the demo models."""
    from ..cli import quiet_libraries
    from .faithfulness.demo_table import DEMO_METRICS, demo_comparison, demo_markdown, stderr_progress

    kwargs = evaluation_kwargs(args, have_rationales=True)
    if args.metrics is None:
        kwargs["metrics"] = DEMO_METRICS
    quiet_libraries()
    comparisons = {}
    for name in args.models:
        try:
            comparisons[name] = demo_comparison(
                name, args.methods, args.per_task, progress=None if args.quiet else stderr_progress, **kwargs
            )
        except ValueError as error:
            raise CLIError(str(error).rstrip(".")) from None
    table = demo_markdown(comparisons)
    print(table, end="")
    _write_text_outputs(args, table, {name: c.to_dict(per_step=False) for name, c in comparisons.items()})

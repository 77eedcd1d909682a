"""``inseq-ext evaluate`` and ``inseq-ext evaluate-demos``: rank attribution methods by faithfulness.

* ``inseq-ext evaluate "PROMPT" --methods custom_saliency,saliency,attention --model demo:llama`` generates a greedy
  continuation of the prompt (or reads prompts, optional forced continuations and rationales from ``--prompts
  FILE.jsonl``), attributes it with every method and prints one table ranked by comprehensiveness AOPC, with the
  random baseline and bootstrap confidence intervals; ``--json``, ``--markdown`` and ``--plot`` write files.
* ``inseq-ext evaluate-demos`` writes the published table: every method on the demo models' probes, faithfulness
  next to ground-truth pointing accuracy.

The parsers are built here with argparse only; heavy imports (torch, inseq, transformers) happen inside the
handlers, so ``inseq-ext --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CLI_METHODS = "custom_saliency,saliency,integrated_gradients,attention,rotary_attention"
DEFAULT_CLI_METRICS = "comprehensiveness,sufficiency,soft_comprehensiveness,soft_sufficiency"


@dataclass
class PromptEntry:
    """One line of ``--prompts``: the prompt, an optional forced continuation and an optional rationale."""

    prompt: str
    continuation: str | None = None
    truth_positions: list[int] | None = None


# --------------------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------------------


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated metrics (default: {DEFAULT_CLI_METRICS}, plus pointing_accuracy,token_f1,auprc when "
        "the prompts carry truth_positions); 'all' for every metric",
    )
    parser.add_argument(
        "--ks", default="0.01,0.05,0.1,0.2,0.5", help="top-k sizes: token counts (3) and/or fractions (0.05)"
    )
    parser.add_argument("--removal", default="delete", help="delete (default) or replace removed tokens")
    parser.add_argument("--baseline-token", default=None, help="replacement token for --removal replace")
    parser.add_argument("--random-seeds", type=int, default=3, help="random rankings in the baseline")
    parser.add_argument("--soft-samples", type=int, default=1, help="Bernoulli masks per step for Soft-NC/NS")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    parser.add_argument("--json", default=None, help="write every value (per method, per token) as JSON")
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown")


def add_evaluate_parser(commands: Any, handler: Any) -> argparse.ArgumentParser:
    """The ``evaluate`` sub-command (``commands`` is the CLI's sub-parser collection)."""
    parser = commands.add_parser(
        "evaluate",
        help="attribute a generation with several methods and rank them by faithfulness (comprehensiveness, "
        "sufficiency, soft variants) against a random baseline",
    )
    parser.add_argument("prompt", nargs="?", default=None, help="text to continue (or use --prompts)")
    parser.add_argument(
        "--prompts",
        default=None,
        help='JSONL file, one object per line: {"prompt": ..., optional "continuation": text to force after '
        'the prompt (the target text for encoder-decoders), optional "truth_positions": [prompt token indices]}',
    )
    parser.add_argument(
        "--model", "-m", default=None, help="Hub name, local folder or demo:gpt2/demo:llama/demo:translation"
    )
    parser.add_argument("--methods", default=DEFAULT_CLI_METHODS, help="comma-separated attribution methods")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate (greedy)")
    parser.add_argument("--plot", default=None, help="write deletion/insertion curves as PNG (one file per method)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    _add_evaluation_options(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_evaluate_demos_parser(commands: Any, handler: Any, demo_names: tuple[str, ...]) -> argparse.ArgumentParser:
    """The ``evaluate-demos`` sub-command: the published table on the demo models."""
    parser = commands.add_parser(
        "evaluate-demos",
        help="faithfulness and ground-truth pointing of every method on the demo models (the README table)",
    )
    parser.add_argument("--models", nargs="+", default=list(demo_names), choices=demo_names)
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: every registered method)")
    parser.add_argument(
        "--per-task", type=int, default=None, help="probes per task; translation: sentences (default: all)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    _add_evaluation_options(parser)
    parser.set_defaults(handler=handler)
    return parser


# --------------------------------------------------------------------------------------------------------------
# Argument checks (each failure is one line: CLIError)
# --------------------------------------------------------------------------------------------------------------


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_ks(text: str, error: type[Exception]) -> list[int | float]:
    ks: list[int | float] = []
    for item in parse_list(text):
        try:
            ks.append(int(item) if item.lstrip("+").isdigit() else float(item))
        except ValueError:
            raise error(f"--ks: {item!r} is not a number; give counts (3) and/or fractions (0.05)") from None
    if not ks:
        raise error("--ks is empty; give counts (3) and/or fractions (0.05), e.g. --ks 0.01,0.05,0.1,0.2,0.5")
    return ks


def read_prompts(path: Path, error: type[Exception]) -> list[PromptEntry]:
    """Entries of a JSONL prompts file; a bad line is reported with its number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise error(f"--prompts {path}: cannot be read ({exc.strerror or exc})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"--prompts {path}, line {number}: not valid JSON ({exc.msg})") from None
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise error(f'--prompts {path}, line {number}: needs a non-empty "prompt" string')
        continuation = item.get("continuation")
        if continuation is not None and not isinstance(continuation, str):
            raise error(f'--prompts {path}, line {number}: "continuation" must be a string')
        truth = item.get("truth_positions")
        if truth is not None and (
            not isinstance(truth, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in truth)
        ):
            raise error(f'--prompts {path}, line {number}: "truth_positions" must be a list of token indices')
        entries.append(PromptEntry(item["prompt"], continuation, truth))
    if not entries:
        raise error(f"--prompts {path}: no prompts in the file")
    return entries


def plot_paths(path: Path, methods: list[str]) -> dict[str, Path]:
    """One PNG per method: the path itself for one method, ``STEM_METHOD.png`` beside it for several."""
    if len(methods) == 1:
        return {methods[0]: path}
    return {method: path.with_name(f"{path.stem}_{method}{path.suffix or '.png'}") for method in methods}


def evaluation_kwargs(args: argparse.Namespace, error: type[Exception], have_rationales: bool) -> dict[str, Any]:
    """Checked keyword arguments for ``evaluate_faithfulness`` from the shared options."""
    from .faithfulness.evaluate import DEFAULT_METRICS, resolve_metrics
    from .faithfulness.metrics import PLAUSIBILITY_METRICS
    from .faithfulness.ranking import check_ks

    if args.metrics is None:
        metrics: Any = DEFAULT_METRICS + (PLAUSIBILITY_METRICS if have_rationales else ())
    else:
        metrics = "all" if args.metrics.strip() == "all" else parse_list(args.metrics)
    try:
        metrics = resolve_metrics(metrics, have_rationales)
        ks = check_ks(parse_ks(args.ks, error))
    except ValueError as exc:
        raise error(str(exc).rstrip(".")) from None
    if args.removal not in ("delete", "replace"):
        raise error(f"--removal {args.removal!r}: choose delete or replace")
    if args.baseline_token is not None and args.removal != "replace":
        raise error("--baseline-token is only used with --removal replace")
    for option, value, least in (
        ("--random-seeds", args.random_seeds, 0),
        ("--soft-samples", args.soft_samples, 1),
        ("--bootstrap", args.bootstrap, 0),
    ):
        if value < least:
            raise error(f"{option} must be at least {least}, got {value}")
    baseline: str | int | None = args.baseline_token
    if baseline is not None and baseline.isdigit():
        baseline = int(baseline)
    return {
        "metrics": metrics,
        "ks": ks,
        "removal": args.removal,
        "baseline_token": baseline,
        "random_seeds": args.random_seeds,
        "soft_samples": args.soft_samples,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
    }


# --------------------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> None:
    """``inseq-ext evaluate``: attribute with every method, evaluate, print the ranked table, write files."""
    from ..cli import (
        CLIError,
        check_method,
        check_prompt,
        check_writable,
        greedy_continuation,
        load_attribution_model,
        resolve_model,
        write_output,
    )
    from .ground_truth import DECODER_ONLY_METHODS, EAGER_ATTENTION_METHODS

    if (args.prompt is None) == (args.prompts is None):
        raise CLIError("give a PROMPT or --prompts FILE.jsonl (one of them)")
    entries = read_prompts(Path(args.prompts), CLIError) if args.prompts else [PromptEntry(args.prompt)]
    for entry in entries:
        check_prompt(entry.prompt)
    methods = parse_list(args.methods)
    if not methods:
        raise CLIError("--methods is empty; e.g. --methods custom_saliency,saliency,attention")
    for method in methods:
        check_method(method)
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    have_rationales = any(entry.truth_positions is not None for entry in entries)
    kwargs = evaluation_kwargs(args, CLIError, have_rationales)
    if args.plot is not None:
        kwargs["metrics"] = tuple(dict.fromkeys((*kwargs["metrics"], "deletion", "insertion")))
    outputs = [(option, Path(path)) for option, path in (("--json", args.json), ("--markdown", args.markdown))
               if path is not None]  # fmt: skip
    for option, path in outputs:
        check_writable(path, option)
    if args.plot is not None:
        for path in plot_paths(Path(args.plot), methods).values():
            check_writable(path, "--plot")

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    name_or_path, label = resolve_model(args.model)
    scoring = load_attribution_model(name_or_path, label, "saliency")
    if scoring.is_encoder_decoder:
        skipped = [method for method in methods if method in DECODER_ONLY_METHODS]
        for method in skipped:
            progress(f"{method}: skipped (a method for decoder-only models)")
        methods = [method for method in methods if method not in DECODER_ONLY_METHODS]
    eager = (
        load_attribution_model(name_or_path, label, "attention")
        if any(method in EAGER_ATTENTION_METHODS for method in methods)
        else None
    )
    targets = []
    for entry in entries:
        if entry.continuation is not None:
            joined = entry.continuation if scoring.is_encoder_decoder else entry.prompt + entry.continuation
            targets.append(joined)
        else:
            targets.append(greedy_continuation(scoring, entry.prompt, args.max_new_tokens))
    progress(
        f"Model: {label} | {len(entries)} prompt(s) | generated: {targets[0]!r}" + (" ..." if len(targets) > 1 else "")
    )
    attributions: dict[str, list[Any]] = {}
    failures: dict[str, str] = {}
    for method in methods:
        model = eager if method in EAGER_ATTENTION_METHODS else scoring
        try:
            attributions[method] = [
                model.attribute(entry.prompt, target, method=method, show_progress=False)
                for entry, target in zip(entries, targets, strict=True)
            ]
            progress(f"{method}: attributed")
        except Exception as error:  # noqa: BLE001  (a method may fail in its own way; the others still run)
            failures[method] = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160] if str(error) else ''}"
            )
            progress(f"{method}: fails ({failures[method]})")
    if not attributions:
        raise CLIError(
            "no method could attribute the generation: " + "; ".join(f"{m}: {e}" for m, e in failures.items())
        )

    from .faithfulness.compare import compare_methods

    rationales = [entry.truth_positions for entry in entries] if have_rationales else None
    title = f"Faithfulness on {label}: {len(entries)} prompt(s)"
    try:
        comparison = compare_methods(scoring, attributions, rationales=rationales, title=title, **kwargs)
    except ValueError as error:
        raise CLIError(str(error).rstrip(".")) from None
    comparison.failures = failures
    comparison.title += f", {next(iter(comparison.results.values())).steps} generated token(s)"
    print(comparison.table(), end="")
    differences = comparison.differences_text()
    if differences:
        print(differences)
    for option, path in outputs:
        if option == "--json":
            text = json.dumps({"model": label, "prompts": [e.prompt for e in entries], "targets": targets,
                               **comparison.to_dict()}, indent=1) + "\n"  # fmt: skip
        else:
            text = comparison.table(markdown=True)
        kind = "Faithfulness values (JSON)" if option == "--json" else "Faithfulness table (Markdown)"
        write_output(path, option, lambda temporary, text=text: temporary.write_text(text, encoding="utf-8"), kind)
    if args.plot is not None:
        for method, path in plot_paths(Path(args.plot), list(comparison.results)).items():
            write_output(path, "--plot", lambda temporary, m=method: comparison.results[m].plot_curves(temporary),
                         f"Deletion/insertion curves of {method}")  # fmt: skip


def run_evaluate_demos(args: argparse.Namespace) -> None:
    """``inseq-ext evaluate-demos``: the Markdown table of every method on the demo models."""
    from ..cli import CLIError, check_method, check_writable, write_output
    from .faithfulness.demo_table import demo_comparison, demo_markdown, stderr_progress

    methods = parse_list(args.methods) if args.methods else None
    for method in methods or []:
        check_method(method)
    if args.per_task is not None and args.per_task < 1:
        raise CLIError(f"--per-task must be at least 1, got {args.per_task}")
    kwargs = evaluation_kwargs(args, CLIError, have_rationales=True)
    if args.metrics is None:
        from .faithfulness.demo_table import DEMO_METRICS

        kwargs["metrics"] = DEMO_METRICS
    outputs = [(option, Path(path)) for option, path in (("--json", args.json), ("--markdown", args.markdown))
               if path is not None]  # fmt: skip
    for option, path in outputs:
        check_writable(path, option)
    progress = None if args.quiet else stderr_progress
    comparisons = {}
    for name in args.models:
        try:
            comparisons[name] = demo_comparison(name, methods, args.per_task, progress=progress, **kwargs)
        except ValueError as error:
            raise CLIError(str(error).rstrip(".")) from None
    table = demo_markdown(comparisons)
    print(table, end="")
    for option, path in outputs:
        if option == "--json":
            text = json.dumps({name: c.to_dict(per_step=False) for name, c in comparisons.items()}, indent=1) + "\n"
        else:
            text = table
        kind = "Faithfulness values (JSON)" if option == "--json" else "Faithfulness table (Markdown)"
        write_output(path, option, lambda temporary, text=text: temporary.write_text(text, encoding="utf-8"), kind)

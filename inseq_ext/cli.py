"""Handlers of the ``inseq-ext`` commands (the parser is :mod:`inseq_ext_cli`, outside the package, so that
``--help`` and argument errors answer without importing inseq; see its docstring for how to add a command).

* ``inseq-ext attribute PROMPT``: :func:`run_attribute`: generate a continuation of PROMPT, attribute it, print
  inseq's heatmap in the terminal and write the requested files. Without ``--model`` the embedded demo GPT-2 is used.
* ``inseq-ext ground-truth``: :func:`run_ground_truth`: top-1 hit rates against the demo models' ground truth.
* ``inseq-ext demo-model [NAME]``: :func:`run_demo_model`: the local folder of an embedded demo model.
* ``inseq-ext inseq COMMAND ...``: :func:`run_inseq`: inseq's own CLI (``attribute``, ``attribute-dataset``,
  ``attribute-context``) with this package's methods available to ``--attribution_method``.

Bad input (an unknown method, a model that cannot be loaded, an output path that cannot be written, an empty
prompt) ends with one ``inseq-ext: error: ...`` line on stderr and exit status 2 (:class:`CLIError`), before
anything is computed where possible. Output files are written whole or not at all (:func:`write_output`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import inseq
import torch

import inseq_ext  # noqa: F401  (registers this package's methods and step functions in inseq)
import inseq_ext_cli
from inseq_ext_cli import DEMO_PREFIX, PROG, CLIError, main

from .demo_models import DEMO_MODEL_NAMES, ENCODER_DECODER_DEMO_MODEL_NAMES, demo_model
from .evaluation.ground_truth import EAGER_ATTENTION_METHODS
from .files import atomic_output
from .views.explorer import write_explorer

__all__ = ["CLIError", "main", "run_attribute", "run_demo_model", "run_ground_truth", "run_inseq", "write_output"]


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def quiet_libraries() -> None:
    """Keep inseq's informational log lines out of the command's output."""
    logging.getLogger("inseq").setLevel(logging.WARNING)


def check_writable(path: Path, option: str) -> None:
    """Fail with a :class:`CLIError` unless a file can be created at ``path`` (missing folders will be created)."""
    try:
        inseq_ext_cli.check_writable(path)
    except argparse.ArgumentTypeError as error:
        raise CLIError(f"{option} {error}") from None


def resolve_model(name_or_path: str | None) -> tuple[str, str]:
    """The model to load and a label for it: the demo GPT-2 by default, ``demo:NAME`` for a demo model."""
    if name_or_path is None:
        name_or_path = DEMO_PREFIX + "gpt2"
    if name_or_path.startswith(DEMO_PREFIX):
        name = name_or_path[len(DEMO_PREFIX) :]
        try:
            return demo_model(name), f"embedded demo model {name_or_path}"
        except ValueError as error:
            raise CLIError(str(error)) from None
    return name_or_path, name_or_path


def load_attribution_model(name_or_path: str, label: str, method: str) -> inseq.models.AttributionModel:
    """``inseq.load_model``, with loading failures turned into one message that says how to proceed."""
    model_kwargs = {"attn_implementation": "eager"} if method in EAGER_ATTENTION_METHODS else {}
    try:
        return inseq.load_model(name_or_path, method, model_kwargs=model_kwargs)
    except (OSError, ValueError) as error:
        raise CLIError(model_load_message(name_or_path, label, error)) from None


def model_load_message(name_or_path: str, label: str, error: BaseException) -> str:
    """Why a model could not be loaded, and what to do instead."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    demo_hint = (
        f"leave out --model to use the embedded demo model ({', '.join(DEMO_PREFIX + n for n in DEMO_MODEL_NAMES)})"
    )
    if Path(name_or_path).exists():
        return f"could not load a model from the local folder {name_or_path} ({detail}); {demo_hint}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    reason = (
        "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local cache"
        if offline
        else "it is not in the local cache and the Hugging Face Hub could not provide it (no network, or no such "
        "model: check the spelling)"
    )
    return (
        f"could not load model {label!r}: {reason}. Pass a local model folder with --model PATH, or {demo_hint}. "
        f"[{detail}]"
    )


def greedy_continuation(attribution_model: inseq.models.AttributionModel, prompt: str, max_new_tokens: int) -> str:
    """The greedy generation for ``prompt`` as text without special tokens (decoder-only: prompt included).

    inseq decodes a single generation with its special tokens, so a model that ends its text with ``</s>`` would
    get an extra ``</s>`` step; generating here and passing the text as the forced target avoids that.
    """
    tokenizer, model = attribution_model.tokenizer, attribution_model.model
    encoding = tokenizer(prompt, return_tensors="pt").to(attribution_model.device)
    with torch.no_grad():
        sequences = model.generate(**encoding, max_new_tokens=max_new_tokens, do_sample=False)
    text = tokenizer.decode(sequences[0], skip_special_tokens=True)
    new_text = text[len(prompt) :] if not attribution_model.is_encoder_decoder else text
    if not new_text.strip():
        raise CLIError(f"the model generated no text after {prompt!r} (it ended the text at once); try another prompt")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def _plain(values: Any) -> Any:
    """Nested lists of floats with NaN (no score: e.g. a token after the attributed step) as ``None``."""
    if isinstance(values, list):
        return [_plain(value) for value in values]
    return None if isinstance(values, float) and math.isnan(values) else values


def heatmap_json(out: inseq.FeatureAttributionOutput, model_label: str, method: str) -> dict[str, Any]:
    """The aggregated heatmaps as plain JSON: tokens, score matrices (rows: attributed tokens, columns: steps)."""
    aggregated = out.aggregate()
    sequences = []
    for index, sequence in enumerate(aggregated.sequence_attributions):
        entry: dict[str, Any] = {
            "prompt": out.info.get("input_texts", [None])[index],
            "generated_text": out.info.get("generated_texts", [None])[index],
            "source_tokens": [token.token for token in sequence.source],
            "target_tokens": [token.token for token in sequence.target],
            "attr_pos_start": sequence.attr_pos_start,
            "attr_pos_end": sequence.attr_pos_end,
            "source_attributions": None,
            "target_attributions": None,
            "step_scores": {name: _plain(scores.tolist()) for name, scores in (sequence.step_scores or {}).items()},
        }
        for field in ("source_attributions", "target_attributions"):
            scores = getattr(sequence, field)
            if scores is not None:
                entry[field] = _plain(scores.tolist())
        sequences.append(entry)
    return {"model": model_label, "method": method, "sequences": sequences}


def write_output(path: Path, option: str, write: Callable[[Path], None], kind: str | None = None) -> None:
    """Run ``write`` on a temporary path renamed to ``path`` on success; an I/O failure becomes a :class:`CLIError`.

    ``kind`` names the file in the confirmation line (default: from the option).
    """
    try:
        with atomic_output(path) as temporary:
            write(temporary)
    except OSError as error:
        raise CLIError(f"{option} {path}: cannot be written ({error.strerror or error})") from None
    kinds = {
        "--html": "Explorer",
        "--heatmap-html": "HTML heatmap",
        "--json": "JSON heatmap",
        "--save": "inseq output",
        "--markdown": "Table",
    }
    print(f"{kind or kinds.get(option, option)} written to {path}")


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def run_attribute(args: argparse.Namespace) -> None:
    """``inseq-ext attribute``: generate, attribute, show the heatmap, write the requested files."""
    quiet_libraries()
    requested = (("--html", args.html), ("--heatmap-html", args.heatmap_html), ("--json", args.json),
                 ("--save", args.save))  # fmt: skip
    outputs = [(option, path) for option, path in requested if path is not None]
    name_or_path, label = resolve_model(args.model)
    attribution_model = load_attribution_model(name_or_path, label, args.method)
    from .generation_length import check_generation_length

    try:  # before generating: a prompt over the model's length would fail deep inside the model
        check_generation_length(attribution_model, args.prompt, args.max_new_tokens)
    except ValueError as error:
        raise CLIError(str(error)) from None
    generated_text = greedy_continuation(attribution_model, args.prompt, args.max_new_tokens)
    print(f"Model: {label} | method: {args.method} | generated: {generated_text!r}", flush=True)
    attribute_kwargs: dict[str, Any] = {"step_scores": args.step_scores, "show_progress": not args.quiet}
    if args.attributed_fn is not None:
        attribute_kwargs["attributed_fn"] = args.attributed_fn
    try:
        out = attribution_model.attribute(args.prompt, generated_text, **attribute_kwargs)
    except ValueError as error:
        raise CLIError(f"attribution failed: {error}") from None
    heatmap_html = out.show(display=not args.no_show, return_html=args.heatmap_html is not None)
    for option, path in outputs:
        if option == "--html":
            title = f"inseq_ext explorer: {args.method} on {label}"
            write_output(
                path,
                option,
                lambda temporary, title=title: write_explorer(
                    out, temporary, attribution_model.tokenizer, title=title
                ),
            )
        elif option == "--heatmap-html":
            write_output(path, option, lambda temporary: temporary.write_text(heatmap_html, encoding="utf-8"))
        elif option == "--json":
            payload = json.dumps(heatmap_json(out, label, args.method), indent=1) + "\n"
            write_output(path, option, lambda temporary, text=payload: temporary.write_text(text, encoding="utf-8"))
        else:
            # inseq refuses to overwrite without overwrite=True; the temporary file already exists (empty).
            write_output(path, option, lambda temporary: out.save(temporary, overwrite=True))


def run_ground_truth(args: argparse.Namespace) -> None:
    """``inseq-ext ground-truth``: hit rates of methods on the demo models' probe sets, as a Markdown table."""
    from .evaluation.ground_truth import applies_to, evaluate_model, markdown_table
    from .evaluation.translation_truth import evaluate_translation

    quiet_libraries()
    results, alignment_results = [], []
    for name in args.models:
        for method in args.methods:
            if not applies_to(method, name):
                print(f"{name} {method}: skipped (a method for decoder-only models)", file=sys.stderr, flush=True)
                continue
            try:
                if name in ENCODER_DECODER_DEMO_MODEL_NAMES:  # alignment accuracy per target word; one task
                    result = evaluate_translation([method], args.per_task, name)[0]
                else:
                    result = evaluate_model(name, [method], args.per_task)[0]
            except ValueError as error:
                raise CLIError(str(error)) from None
            # Progress on stderr (a full run takes minutes); the table goes to stdout.
            print(f"{name} {method}: {result.overall:.0%} of {result.probes} probes, {result.seconds:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            (alignment_results if name in ENCODER_DECODER_DEMO_MODEL_NAMES else results).append(result)
    # Tasks and word classes are different columns: one table each.
    table = "\n".join(markdown_table(group) for group in (results, alignment_results) if group)
    print(table, end="")
    if args.markdown is not None:
        write_output(args.markdown, "--markdown", lambda temporary: temporary.write_text(table, encoding="utf-8"))


def run_demo_model(args: argparse.Namespace) -> None:
    try:
        print(demo_model(args.name))
    except ValueError as error:
        raise CLIError(str(error)) from None


def run_inseq(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to inseq's own CLI (built here, after this package registered its methods)."""
    from inseq.commands.cli import COMMANDS

    quiet_libraries()
    from inseq.utils import InseqArgumentParser

    parser = InseqArgumentParser(prog=f"{PROG} inseq", usage=f"{PROG} inseq <COMMAND> [<ARGS>]")
    subparsers = parser.add_subparsers(title="inseq commands")
    for command in COMMANDS:
        command.register_subcommand(subparsers)
    inseq_args = parser.parse_args(args.inseq_args)
    if not hasattr(inseq_args, "factory_method"):
        parser.print_help()
        return 2
    model_name = getattr(inseq_args, "model_name_or_path", None)
    if model_name is not None and model_name.startswith(DEMO_PREFIX):
        inseq_args.model_name_or_path = resolve_model(model_name)[0]
    try:
        command, command_args = inseq_args.factory_method(inseq_args)
    except (RuntimeError, ValueError, TypeError) as error:  # inseq's argument checks
        raise CLIError(f"inseq {args.inseq_args[0]}: {error}") from None
    argument_groups = command_args if isinstance(command_args, tuple | list) else (command_args,)
    with atomic_inseq_outputs(argument_groups):
        try:
            command.run(command_args)
        except OSError as error:
            name = getattr(inseq_args, "model_name_or_path", None) or "?"
            raise CLIError(model_load_message(name, name, error)) from None
        except ValueError as error:  # bad input found by inseq or inseq_ext (e.g. a prompt over the length limit)
            raise CLIError(f"inseq {args.inseq_args[0]}: {error}") from None
    return 0


INSEQ_OUTPUT_FIELDS = ("save_path", "viz_path")


@contextmanager
def atomic_inseq_outputs(argument_groups: Sequence[Any]) -> Iterator[None]:
    """Make inseq's own commands write their output files whole or not at all.

    Each ``save_path`` / ``viz_path`` is checked, then replaced by a temporary name in the same folder; after a
    successful run the temporary files are renamed to the requested names, after a failure they are removed.
    """
    renames: list[tuple[Path, Path]] = []
    for group in argument_groups:
        for field_name in INSEQ_OUTPUT_FIELDS:
            requested = getattr(group, field_name, None)
            if not requested:
                continue
            target = Path(requested)
            check_writable(target, f"--{field_name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.partial{target.suffix}")
            setattr(group, field_name, str(temporary))
            renames.append((temporary, target))
    try:
        yield
        for temporary, target in renames:
            if temporary.exists():
                os.replace(temporary, target)
    finally:
        for temporary, _ in renames:
            temporary.unlink(missing_ok=True)

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
import copy
import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import inseq
import torch
from transformers.utils import logging as transformers_logging

import inseq_ext  # noqa: F401  (registers this package's methods and step functions in inseq)
import inseq_ext_cli
from inseq_ext_cli import DEMO_PREFIX, PROG, CLIError, main

from .attr.method_args import check_attribution_kwargs
from .demo_models import DEMO_MODEL_NAMES, ENCODER_DECODER_DEMO_MODEL_NAMES, demo_model
from .evaluation.ground_truth import EAGER_ATTENTION_METHODS
from .files import atomic_output
from .generation_length import check_generation_length, context_limit
from .views.explorer import write_explorer
from .views.heatmap import show_heatmap
from .vocabulary import lowercase_vocabulary, unknown_words

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


@contextmanager
def loading_quietly() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off while a model loads (restored afterwards)."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def load_attribution_model(
    name_or_path: str, label: str, methods: str | Sequence[str]
) -> inseq.models.AttributionModel:
    """``inseq.load_model`` in two steps, so that a failure is blamed on what caused it.

    The model is loaded with inseq's no-op ``dummy`` method first (a failure there is the model's: missing
    folder, not cached, not a model), then each requested method is set (a failure there is the method's: e.g. a
    decoder-only method on an encoder-decoder model), whatever the method; the first one stays the default.
    Attention is eager when one of the methods reads attention weights (:data:`EAGER_ATTENTION_METHODS`).
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    eager = any(method in EAGER_ATTENTION_METHODS for method in methods)
    model_kwargs = {"attn_implementation": "eager"} if eager else {}
    try:
        with loading_quietly():
            attribution_model = inseq.load_model(name_or_path, "dummy", model_kwargs=model_kwargs)
    except (OSError, ValueError) as error:
        raise CLIError(model_load_message(name_or_path, label, error)) from None
    for method in reversed(methods):  # the first method is set last: the default
        try:
            attribution_model.get_attribution_method(method, override_default_attribution=True)
        except (ValueError, TypeError, NotImplementedError) as error:
            raise CLIError(
                f"the method {method!r} cannot attribute {label}: {first_line(error)} Choose another --method."
            ) from None
    return attribution_model


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def model_load_message(name_or_path: str, label: str, error: BaseException) -> str:
    """Why a model could not be loaded, and what to do instead."""
    detail = first_line(error)
    demo_hint = (
        f"leave out --model to use the embedded demo model ({', '.join(DEMO_PREFIX + n for n in DEMO_MODEL_NAMES)})"
    )
    if Path(name_or_path).exists():
        return f"could not load a model from the local folder {name_or_path} ({detail}); {demo_hint}"
    try:
        inseq_ext_cli.model_reference(name_or_path)
    except argparse.ArgumentTypeError as path_error:  # a path that does not exist, not a hub name
        return f"{path_error}; {demo_hint}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    reason = (
        "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local cache"
        if offline
        else "it is not in the local cache and the Hugging Face Hub could not provide it (no network, or no such "
        "model: check the spelling)"
    )
    return (
        f"could not load model {label!r}: {reason}; there is no local folder of that name either. Pass a local "
        f"model folder with --model PATH, or {demo_hint}. [{detail}]"
    )


# ----------------------------------------------------------------------------------------------------------------
# Prompt and generation
# ----------------------------------------------------------------------------------------------------------------


def prepare_prompt(attribution_model: inseq.models.AttributionModel, prompt: str) -> str:
    """The prompt as the model should read it: lowercased for a lowercase vocabulary; unknown words warned about.

    A word the tokenizer cannot represent becomes ``<unk>`` and the output degenerates without any error, so the
    words are named on stderr (the run continues: the attribution of what the model made of it is still valid).
    """
    tokenizer = attribution_model.tokenizer
    if prompt != prompt.lower() and lowercase_vocabulary(tokenizer):
        prompt = prompt.lower()
        warn(f"the model's vocabulary is lowercase; the prompt is lowercased to {prompt!r}")
    unknown = unknown_words(tokenizer, prompt)
    if unknown:
        words = "words of the prompt are" if len(unknown) > 1 else "word of the prompt is"
        warn(
            f"{len(unknown)} {words} not in the model's vocabulary and read as {tokenizer.unk_token}: "
            f"{', '.join(map(repr, unknown))}; the generation is unreliable"
        )
    return prompt


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def decoder_input_length(attribution_model: inseq.models.AttributionModel, prompt: str) -> int:
    """Tokens the decoder starts from: the prompt (decoder-only) or the decoder start token (encoder-decoder)."""
    if attribution_model.is_encoder_decoder:
        return 1
    return len(attribution_model.tokenizer(prompt)["input_ids"])


def new_token_room(attribution_model: inseq.models.AttributionModel, prompt: str) -> int | None:
    """How many new tokens fit after ``prompt`` within the model's limit
    (:func:`~inseq_ext.generation_length.context_limit`); ``None`` when the model states no limit."""
    limit = context_limit(attribution_model).tokens
    return None if limit is None else limit - decoder_input_length(attribution_model, prompt)


def resolve_max_new_tokens(
    attribution_model: inseq.models.AttributionModel, prompt: str, requested: int | None
) -> int:
    """How many tokens to generate at most.

    ``requested`` (``--max-new-tokens``) when given (checked afterwards by
    :func:`~inseq_ext.generation_length.check_generation_length`); otherwise the model's generation config
    (``max_new_tokens``, else ``max_length`` less the decoder's starting length), else
    :data:`inseq_ext_cli.DEFAULT_MAX_NEW_TOKENS`, shortened to what fits in the model's limit.
    """
    if requested is not None:
        return requested
    config = attribution_model.model.generation_config
    if config.max_new_tokens is not None:
        default = config.max_new_tokens
    elif config.max_length is not None:
        default = max(1, config.max_length - decoder_input_length(attribution_model, prompt))
    else:
        default = inseq_ext_cli.DEFAULT_MAX_NEW_TOKENS
    room = new_token_room(attribution_model, prompt)
    return default if room is None or room < 1 else min(default, room)  # room < 1: the length check refuses it


def check_length(attribution_model: inseq.models.AttributionModel, prompt: str, max_new_tokens: int) -> None:
    """The prompt and its generation fit the model (one-line error otherwise, naming the largest count that fits)."""
    try:
        check_generation_length(attribution_model, prompt, max_new_tokens)
    except ValueError as error:
        room = new_token_room(attribution_model, prompt)
        fits = room is not None and room > 0  # otherwise the prompt alone is too long
        hint = f" At most {room} new tokens fit after this prompt: use --max-new-tokens {room} or less."
        raise CLIError(f"{error}{hint if fits else ''}") from None


def greedy_continuation(attribution_model: inseq.models.AttributionModel, prompt: str, max_new_tokens: int) -> str:
    """The greedy generation for ``prompt`` as text without special tokens (decoder-only: prompt included).

    inseq decodes a single generation with its special tokens, so a model that ends its text with ``</s>`` would
    get an extra ``</s>`` step; generating here and passing the text as the forced target avoids that. The length
    is passed as ``max_length`` (decoder start + new tokens) with the config's ``max_new_tokens`` cleared: passing
    ``max_new_tokens`` to a model whose generation config sets ``max_length`` makes transformers warn that both
    are set.
    """
    tokenizer, model = attribution_model.tokenizer, attribution_model.model
    encoding = tokenizer(prompt, return_tensors="pt").to(attribution_model.device)
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.max_new_tokens = None
    generation_config.max_length = decoder_input_length(attribution_model, prompt) + max_new_tokens
    generation_config.do_sample = False
    with torch.no_grad():
        sequences = model.generate(**encoding, generation_config=generation_config)
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


def missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost first."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


OUTPUT_KINDS = {
    "--html": "Explorer",
    "--heatmap-html": "HTML heatmap",
    "--json": "JSON heatmap",
    "--save": "inseq output",
    "--markdown": "Table",
}


def write_output(path: Path, option: str, write: Callable[[Path], None], kind: str | None = None) -> None:
    """Run ``write`` on a temporary path renamed to ``path`` on success; an I/O failure becomes a :class:`CLIError`.

    Missing parent folders are created (and said so); after a failure, the folders created for it are removed.
    ``kind`` names the file in the confirmation line (default: from the option).
    """
    created = missing_folders(path)
    try:
        with atomic_output(path) as temporary:
            write(temporary)
    except OSError as error:
        remove_empty_folders(created)
        raise CLIError(f"{option} {path}: cannot be written ({error.strerror or error})") from None
    note = f" (created the folder {created[0]})" if created else ""
    print(f"{kind or OUTPUT_KINDS.get(option, option)} written to {path}{note}")


def remove_empty_folders(folders: Sequence[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): keep it
            continue


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def run_attribute(args: argparse.Namespace) -> None:
    """``inseq-ext attribute``: generate, attribute, show the heatmap, write the requested files.

    With several methods (``--method custom_saliency,attention``) the same generation is attributed by each, and
    ``--html`` writes one explorer with a method switch; the other outputs hold one method's output and are refused.
    """
    quiet_libraries()
    methods = getattr(args, "methods", None) or [args.method]
    requested = (("--html", args.html), ("--heatmap-html", args.heatmap_html), ("--json", args.json),
                 ("--save", args.save))  # fmt: skip
    outputs = [(option, path) for option, path in requested if path is not None]
    single_method_outputs = [option for option, _ in outputs if option != "--html"]
    if len(methods) > 1 and single_method_outputs:
        raise CLIError(
            f"{', '.join(single_method_outputs)} hold(s) one method's output, but --method lists {len(methods)} "
            f"({', '.join(methods)}): compare them with --html, or run once per method"
        )
    name_or_path, label = resolve_model(args.model)
    # One model for all methods, with eager attention when one of them reads attention weights.
    attribution_model = load_attribution_model(name_or_path, label, methods)
    for method in methods:
        attribution_model.get_attribution_method(method, override_default_attribution=True)
        try:
            check_attribution_kwargs(
                attribution_model,
                args.method_args,
                args.attributed_fn,
                step_scores_for(attribution_model, method, methods, args),
            )
        except ValueError as error:
            raise CLIError(f"--method-arg: {first_line(error)}") from None
    attribution_model.get_attribution_method(methods[0], override_default_attribution=True)
    if args.step_scores and all(
        attribution_model.get_attribution_method(method).is_final_step_method for method in methods
    ):
        raise CLIError(
            f"--step-scores: {', '.join(methods)} compute(s) its scores once for the whole generation, so it gives "
            "no step scores; leave out --step-scores or add a per-step method such as custom_saliency"
        )
    prompt = prepare_prompt(attribution_model, args.prompt)
    max_new_tokens = resolve_max_new_tokens(attribution_model, prompt, args.max_new_tokens)
    check_length(attribution_model, prompt, max_new_tokens)  # before generating: past the limit fails deep inside
    generated_text = greedy_continuation(attribution_model, prompt, max_new_tokens)
    print(f"Model: {label} | method: {', '.join(methods)} | generated: {generated_text!r}", flush=True)
    attribute_kwargs: dict[str, Any] = {"show_progress": not args.quiet, **args.method_args}
    if args.attributed_fn is not None:
        attribute_kwargs["attributed_fn"] = args.attributed_fn
    results = {}
    for method in methods:
        step_scores = step_scores_for(attribution_model, method, methods, args)
        try:
            results[method] = attribution_model.attribute(
                prompt, generated_text, method=method, step_scores=step_scores, **attribute_kwargs
            )
        except (ValueError, TypeError) as error:
            which = f" ({method})" if len(methods) > 1 else ""
            raise CLIError(f"attribution failed{which}: {first_line(error)}") from None
    out = results[methods[0]]
    for method, result in results.items():
        if len(methods) > 1 and not args.no_show:
            print(f"\n{method}:", flush=True)
        # With --heatmap-html there is one method (checked above).
        heatmap_html = show_heatmap(
            result, attribution_model.tokenizer, display=not args.no_show, return_html=args.heatmap_html is not None
        )
    for option, path in outputs:
        if option == "--html":
            shown = results if len(methods) > 1 else out  # several methods: one explorer with a method switch
            write_output(
                path, option, lambda temporary, shown=shown: write_explorer(shown, temporary, attribution_model)
            )
        elif option == "--heatmap-html":
            write_output(path, option, lambda temporary: temporary.write_text(heatmap_html, encoding="utf-8"))
        elif option == "--json":
            payload = json.dumps(heatmap_json(out, label, args.method), indent=1) + "\n"
            write_output(path, option, lambda temporary, text=payload: temporary.write_text(text, encoding="utf-8"))
        else:
            # inseq refuses to overwrite without overwrite=True; the temporary file already exists (empty).
            write_output(path, option, lambda temporary: out.save(temporary, overwrite=True))


def step_scores_for(
    attribution_model: inseq.models.AttributionModel, method: str, methods: Sequence[str], args: argparse.Namespace
) -> list[str]:
    """The step scores to compute with ``method``: all requested ones, except that when several methods run,
    final-step methods (``attention``, ``rotary_attention``: inseq refuses step scores there) leave them to a
    step-by-step method of the list; the explorer shows a generation's step scores whichever method computed them."""
    if not args.step_scores or len(methods) == 1:
        return args.step_scores

    def final_step(name: str) -> bool:
        return attribution_model.get_attribution_method(name).is_final_step_method

    if final_step(method) and not all(final_step(other) for other in methods):
        return []
    return args.step_scores


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
                with loading_quietly():
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
    from inseq.utils import InseqArgumentParser

    quiet_libraries()
    parser = InseqArgumentParser(prog=f"{PROG} inseq", usage=f"{PROG} inseq <COMMAND> [<ARGS>]")
    subparsers = parser.add_subparsers(title="inseq commands")
    for command in COMMANDS:
        command.register_subcommand(subparsers)
    inseq_args = parser.parse_args(args.inseq_args)
    if not hasattr(inseq_args, "factory_method"):
        parser.print_help()
        return 2
    model_name = getattr(inseq_args, "model_name_or_path", None)
    if model_name is not None:
        try:
            inseq_ext_cli.model_reference(model_name)
        except argparse.ArgumentTypeError as error:
            raise CLIError(f"--model_name_or_path: {error}") from None
        if model_name.startswith(DEMO_PREFIX):
            inseq_args.model_name_or_path = resolve_model(model_name)[0]
    try:
        command, command_args = inseq_args.factory_method(inseq_args)
    except (RuntimeError, ValueError, TypeError) as error:  # inseq's argument checks
        raise CLIError(f"inseq {args.inseq_args[0]}: {error}") from None
    argument_groups = command_args if isinstance(command_args, tuple | list) else (command_args,)
    with atomic_inseq_outputs(argument_groups), loading_quietly():
        try:
            command.run(command_args)
        except OSError as error:
            name = getattr(inseq_args, "model_name_or_path", None) or "?"
            raise CLIError(model_load_message(name, name, error)) from None
        except ValueError as error:  # bad input found by inseq or inseq_ext (e.g. a prompt over the length limit)
            raise CLIError(f"inseq {args.inseq_args[0]}: {error}") from None
    return 0


INSEQ_OUTPUT_FIELDS = ("save_path", "viz_path")


class RenamingStream(io.TextIOBase):
    """A text stream that forwards to ``stream`` with each temporary file name replaced by the requested one."""

    def __init__(self, stream: Any, renames: Sequence[tuple[Path, Path]]) -> None:
        self.stream = stream
        self.renames = [(str(temporary), str(target)) for temporary, target in renames]

    def write(self, text: str) -> int:
        for temporary, target in self.renames:
            text = text.replace(temporary, target)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:  # keeps colors when the real stream is a terminal
        return self.stream.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def atomic_inseq_outputs(argument_groups: Sequence[Any]) -> Iterator[None]:
    """Make inseq's own commands write their output files whole or not at all.

    Each ``save_path`` / ``viz_path`` is checked, then replaced by a temporary name in the same folder (missing
    folders are created, as for ``inseq-ext attribute``); after a successful run the temporary files are renamed
    to the requested names, after a failure they are removed (with the folders created for them). inseq's own
    messages ("Saving attributions to ...") name the requested files, not the temporary ones.
    """
    renames: list[tuple[Path, Path]] = []
    created: list[Path] = []
    for group in argument_groups:
        for field_name in INSEQ_OUTPUT_FIELDS:
            requested = getattr(group, field_name, None)
            if not requested:
                continue
            target = Path(requested)
            check_writable(target, f"--{field_name}")
            created += missing_folders(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.partial{target.suffix}")
            setattr(group, field_name, str(temporary))
            renames.append((temporary, target))
    succeeded = False
    try:
        with redirect_stdout(RenamingStream(sys.stdout, renames)):
            yield
        for temporary, target in renames:
            if temporary.exists():
                os.replace(temporary, target)
        succeeded = True
    finally:
        for temporary, _ in renames:
            temporary.unlink(missing_ok=True)
        if not succeeded:
            remove_empty_folders(created)
    for folder in dict.fromkeys(created):
        if folder.parent not in created:
            print(f"(created the folder {folder})")

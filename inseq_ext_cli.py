"""``inseq-ext`` launcher: the command-line parser, answering ``--help`` and argument errors before any heavy import.

Why this module lives outside the package: ``import inseq_ext`` has to register the package's methods in inseq's
registry, so it imports inseq, torch and transformers (about 6 s). A parser inside ``inseq_ext`` would pay that
before printing ``--help`` or a usage error. This module imports only the standard library; after parsing,
:func:`main` imports the chosen command's handler (``"inseq_ext.cli:run_attribute"``, ...), and only then the
package. ``tests/test_cli_launcher.py`` checks that ``inseq-ext --help`` and an argument error leave torch, inseq,
transformers and ``inseq_ext`` unimported. Entry points: the ``inseq-ext`` console script and
``python -m inseq_ext_cli`` (fast), ``python -m inseq_ext`` (same commands, after importing the package).

Names that the registries hold (methods, step functions, demo models) are listed here statically, because reading
them needs the heavy imports; ``tests/test_cli_launcher.py`` checks that each list equals its registry, so a new
method or step function fails the tests until it is added here.

Adding a subcommand (pattern of every command below):

1. Write the handler in the package, ``run_NAME(args: argparse.Namespace) -> int | None``, in
   ``inseq_ext/cli.py`` or in a ``cli.py`` of your own subpackage. It raises :class:`CLIError` for anything the
   user can fix (reported as one ``inseq-ext: error: ...`` line, exit status 2, no traceback) and returns the exit
   status (``None`` = 0). Write output files through ``inseq_ext.cli.write_output`` (whole or not at all).
2. Here, write ``add_NAME_command(commands)``: ``commands.add_parser(...)``, its arguments, and
   ``set_defaults(handler="inseq_ext.cli:run_NAME")`` (a string: the module is imported only when the command
   runs). Declare output files with ``type=output_file`` (checked before anything runs; missing parent folders are
   created, the same for every output option) and cheap checks as argparse types (:func:`positive_int`,
   :func:`attribution_method`, ...). Import nothing heavy here.
3. Append ``add_NAME_command`` to :data:`COMMANDS` (the order of ``inseq-ext --help``).
4. Test the command and each of its error paths in ``tests/`` through ``inseq_ext_cli.main([...])``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "inseq-ext"
DEMO_PREFIX = "demo:"
#: New tokens generated when neither ``--max-new-tokens`` nor the model's generation config says how many.
DEFAULT_MAX_NEW_TOKENS = 20

#: Embedded demo models (``inseq_ext.demo_models.DEMO_MODEL_NAMES``).
DEMO_MODEL_NAMES = ("gpt2", "llama", "translation")
#: This package's attribution methods, then inseq 0.7.1's built-ins: together, inseq's registry after
#: ``import inseq_ext`` (``inseq.list_feature_attribution_methods()``).
PACKAGE_METHODS = (
    "custom_saliency",
    "block_gradient_x_input",
    "rotary_attention",
    "attention_rollout",
    "attnlrp",
)
INSEQ_METHODS = (
    "attention",
    "deeplift",
    "discretized_integrated_gradients",
    "dummy",
    "gradient_shap",
    "input_x_gradient",
    "integrated_gradients",
    "layer_deeplift",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "lime",
    "occlusion",
    "reagent",
    "saliency",
    "sequential_integrated_gradients",
    "value_zeroing",
)
ATTRIBUTION_METHODS = PACKAGE_METHODS + INSEQ_METHODS
DEFAULT_METHOD = "custom_saliency"
#: inseq's step functions (``inseq.list_step_functions()``), ``logprob`` registered by this package.
STEP_FUNCTIONS = (
    "logit",
    "probability",
    "entropy",
    "crossentropy",
    "perplexity",
    "contrast_logits",
    "contrast_prob",
    "contrast_logits_diff",
    "contrast_prob_diff",
    "pcxmi",
    "kl_divergence",
    "in_context_pvi",
    "mc_dropout_prob_avg",
    "top_p_size",
    "logprob",
)
#: The ground-truth baseline besides the registry's methods, and the methods compared by default
#: (``inseq_ext.evaluation.ground_truth.RANDOM_BASELINE`` / ``DEFAULT_METHODS``).
RANDOM_BASELINE = "random"
GROUND_TRUTH_METHODS = (
    "custom_saliency",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "attention",
    "rotary_attention",
    "attention_rollout",
    "block_gradient_x_input",
    "attnlrp",
    RANDOM_BASELINE,
)

#: Faithfulness metrics (``inseq_ext.evaluation.faithfulness.METRICS``) and the ones ``evaluate`` computes by default.
FAITHFULNESS_METRICS = (
    "comprehensiveness",
    "sufficiency",
    "soft_comprehensiveness",
    "soft_sufficiency",
    "deletion",
    "insertion",
    "pointing_accuracy",
    "token_f1",
    "auprc",
)
EVALUATE_METHODS = ("custom_saliency", "saliency", "integrated_gradients", "attention", "rotary_attention", "attnlrp")


class CLIError(Exception):
    """A problem the user can fix: reported as one ``inseq-ext: error: ...`` line, exit status 2, no traceback."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (what is wrong and where the help is), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------------------------------------------
# Argument types: cheap checks run while parsing (an ArgumentTypeError becomes one usage-error line)
# ----------------------------------------------------------------------------------------------------------------


def whole_number_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number_at_least(text, 0)


def prompt_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the prompt is empty; give some text to continue, e.g. 'The first president of America is'"
        )
    return text


def attribution_method(name: str) -> str:
    if name not in ATTRIBUTION_METHODS:
        raise argparse.ArgumentTypeError(
            f"unknown attribution method {name!r}; choose one of: {', '.join(sorted(ATTRIBUTION_METHODS))}"
        )
    return name


def attribution_method_list(text: str) -> list[str]:
    """One method or several, comma-separated (``custom_saliency,attention``): compared on the same generation."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no method named; choose from: {', '.join(sorted(ATTRIBUTION_METHODS))}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} listed twice")
    return [attribution_method(name) for name in names]


class MethodsAction(argparse.Action):
    """Stores ``--method a,b``: ``args.method`` is the first method, ``args.methods`` all of them.

    (Parsed here rather than by ``type=``: argparse would also run ``type`` on the string default.)
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        try:
            names = attribution_method_list(values)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None
        setattr(namespace, self.dest, names[0])
        namespace.methods = names


def ground_truth_method(name: str) -> str:
    return name if name == RANDOM_BASELINE else attribution_method(name)


def step_function(name: str) -> str:
    if name not in STEP_FUNCTIONS:
        raise argparse.ArgumentTypeError(f"unknown step function {name!r}; choose one of: {', '.join(STEP_FUNCTIONS)}")
    return name


def step_function_list(text: str) -> list[str]:
    """Comma-separated step functions: ``probability`` or ``probability,entropy``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no step function named; choose from: {', '.join(STEP_FUNCTIONS)}")
    return [step_function(name) for name in names]


def metric_list(text: str) -> list[str]:
    """Comma-separated faithfulness metrics, or ``all``."""
    if text.strip() == "all":
        return ["all"]
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAITHFULNESS_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from: "
            f"{', '.join(FAITHFULNESS_METRICS)}, or all"
        )
    return names


def k_list(text: str) -> list[int | float]:
    """Comma-separated top-k sizes: token counts (``3``) and/or fractions in (0, 1] (``0.05``)."""
    ks: list[int | float] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            k: int | float = int(item) if item.isdigit() else float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a number; give token counts (3) and/or fractions (0.05)"
            ) from None
        if (isinstance(k, int) and k < 1) or (isinstance(k, float) and not 0 < k <= 1):
            raise argparse.ArgumentTypeError(f"{item}: a count must be at least 1, a fraction in (0, 1]")
        ks.append(k)
    if not ks:
        raise argparse.ArgumentTypeError("no k given; e.g. 0.01,0.05,0.1,0.2,0.5")
    return ks


def model_reference(text: str) -> str:
    """``demo:NAME``, a local model folder or a hub name; a missing folder or unknown demo model fails here.

    A value that can only be a path (absolute, starting with ``.`` or ``~``, ending with ``/``, or with more than
    one ``/``: hub names are ``name`` or ``owner/name``) must be an existing folder.
    """
    if text.startswith(DEMO_PREFIX):
        if text[len(DEMO_PREFIX) :] not in DEMO_MODEL_NAMES:
            choices = ", ".join(DEMO_PREFIX + name for name in DEMO_MODEL_NAMES)
            raise argparse.ArgumentTypeError(f"unknown demo model {text!r}; choose one of: {choices}")
        return text
    path = Path(text).expanduser()
    looks_like_path = text.startswith(("/", ".", "~")) or text.endswith(("/", "\\")) or text.count("/") > 1
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a model folder, a hub name or demo:NAME")
    if looks_like_path and not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


def parse_value(text: str) -> Any:
    """A command-line value as Python: JSON (``50``, ``0.5``, ``[1, 2]``, ``"text"``), ``true``/``false``/``none``
    in any case, otherwise the text itself (``l1``)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class MethodArgAction(argparse.Action):
    """``--method-arg NAME=VALUE`` (repeatable) collected into a dict; a name given twice is an error."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        name, separator, raw = str(values).partition("=")
        name = name.strip()
        if not separator or not name.isidentifier():
            parser.error(f"argument {option_string}: expected NAME=VALUE (e.g. norm=l1), got {values!r}")
        collected = dict(getattr(namespace, self.dest) or {})
        if name in collected:
            parser.error(f"argument {option_string}: {name} given twice")
        collected[name] = parse_value(raw)
        setattr(namespace, self.dest, collected)


def output_file(text: str) -> Path:
    """An output file: fails at once unless a file can be created there (missing parent folders will be created)."""
    path = Path(text).expanduser()
    check_writable(path)
    return path


def check_writable(path: Path) -> None:
    """Raise ``argparse.ArgumentTypeError`` unless a file can be created at ``path`` (probed with a temporary file).

    Missing parent folders are allowed (the writer creates them), as long as the nearest existing one is a
    writable folder.
    """
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{path} cannot be written: {ancestor} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{path} cannot be written ({error.strerror or error})") from None


# ----------------------------------------------------------------------------------------------------------------
# Commands: one add_*_command per subcommand; COMMANDS at the end lists them
# ----------------------------------------------------------------------------------------------------------------


def add_attribute_command(commands: argparse._SubParsersAction) -> None:
    attribute = commands.add_parser(
        "attribute",
        help="attribute a generated continuation of a prompt and show the heatmap",
        description="Generate a greedy continuation of PROMPT, attribute it, print the heatmap and write the "
        "requested files (missing folders are created).",
    )
    attribute.add_argument("prompt", type=prompt_text, help="text to continue (the source of the attribution)")
    demo_models = ", ".join(DEMO_PREFIX + name for name in DEMO_MODEL_NAMES)
    attribute.add_argument(
        "--model",
        "-m",
        default=None,
        type=model_reference,
        metavar="MODEL",
        help=f"Hugging Face Hub name or local model folder, or an embedded demo model: {demo_models} "
        f"(default: {DEMO_PREFIX}gpt2)",
    )
    attribute.add_argument(
        "--method",
        "-a",
        default=DEFAULT_METHOD,
        action=MethodsAction,
        metavar="NAME[,NAME...]",
        help=f"attribution method (default: {DEFAULT_METHOD}); this package: {', '.join(PACKAGE_METHODS)}; "
        f"inseq: {', '.join(INSEQ_METHODS)}. Several, comma-separated (e.g. custom_saliency,attention), are "
        "compared on the same generation in one --html explorer",
    )
    attribute.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help="tokens to generate at most, greedily; generation also stops at the end-of-text token (default: the "
        f"model's generation config, max_new_tokens or max_length, else {DEFAULT_MAX_NEW_TOKENS}; never past the "
        "model's positions)",
    )
    attribute.add_argument(
        "--method-arg",
        dest="method_args",
        action=MethodArgAction,
        default={},
        metavar="NAME=VALUE",
        help="an option of the method, repeatable: e.g. --method-arg norm=l1 --method-arg normalize=none "
        "(custom_saliency), --method-arg n_steps=50 (integrated_gradients); values are read as JSON (numbers, "
        "true/false, none, lists), else as text; unknown names are an error that lists the valid ones",
    )
    attribute.add_argument(
        "--attributed-fn",
        default=None,
        type=step_function,
        metavar="NAME",
        help=f"step function to attribute (default: probability); one of: {', '.join(STEP_FUNCTIONS)}",
    )
    attribute.add_argument(
        "--step-scores",
        action="extend",
        default=[],
        type=step_function_list,
        metavar="NAME[,NAME...]",
        help="step scores to add, comma-separated or repeated (e.g. --step-scores probability,entropy); "
        "same names as --attributed-fn",
    )
    attribute.add_argument(
        "--html", type=output_file, metavar="FILE", help="write the interactive explorer (one offline HTML file)"
    )
    attribute.add_argument(
        "--heatmap-html", type=output_file, metavar="FILE", help="write inseq's static HTML heatmap"
    )
    attribute.add_argument("--json", type=output_file, metavar="FILE", help="write the aggregated heatmap as JSON")
    attribute.add_argument(
        "--save", type=output_file, metavar="FILE", help="write inseq's own format (FeatureAttributionOutput.save)"
    )
    attribute.add_argument("--no-show", action="store_true", help="do not print the heatmap in the terminal")
    attribute.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    attribute.set_defaults(handler="inseq_ext.cli:run_attribute")


def add_ground_truth_command(commands: argparse._SubParsersAction) -> None:
    ground_truth = commands.add_parser(
        "ground-truth",
        help="how often each method's top-scored prompt token is the true source (demo models; for translation: "
        "the aligned source word of each target word)",
    )
    ground_truth.add_argument(
        "--models",
        nargs="+",
        default=list(DEMO_MODEL_NAMES),
        choices=DEMO_MODEL_NAMES,
        help="demo models to evaluate (default: all)",
    )
    ground_truth.add_argument(
        "--methods",
        nargs="+",
        type=ground_truth_method,
        default=list(GROUND_TRUTH_METHODS),
        metavar="NAME",
        help=f"methods to compare; '{RANDOM_BASELINE}' is the baseline (default: {' '.join(GROUND_TRUTH_METHODS)})",
    )
    ground_truth.add_argument(
        "--per-task",
        type=positive_int,
        default=None,
        metavar="N",
        help="probes per task; translation: sentences (default: all)",
    )
    ground_truth.add_argument("--markdown", type=output_file, metavar="FILE", help="also write the table to this file")
    ground_truth.set_defaults(handler="inseq_ext.cli:run_ground_truth")


def _add_faithfulness_options(parser: argparse.ArgumentParser, default_metrics: str) -> None:
    """Options shared by ``evaluate`` and ``evaluate-demos`` (see ``inseq_ext.evaluation.evaluate_faithfulness``)."""
    parser.add_argument(
        "--metrics",
        type=metric_list,
        default=None,
        metavar="NAME[,NAME...]",
        help=f"faithfulness metrics, comma-separated, or all (default: {default_metrics}); one of: "
        f"{', '.join(FAITHFULNESS_METRICS)}",
    )
    parser.add_argument(
        "--ks",
        type=k_list,
        default=[0.01, 0.05, 0.1, 0.2, 0.5],
        metavar="K[,K...]",
        help="top-k sizes for comprehensiveness/sufficiency: token counts (3) and/or fractions (0.05) "
        "(default: 0.01,0.05,0.1,0.2,0.5)",
    )
    parser.add_argument(
        "--removal",
        choices=("delete", "replace"),
        default="delete",
        help="delete removed tokens (default) or replace them by --baseline-token",
    )
    parser.add_argument(
        "--baseline-token", default=None, metavar="TOKEN", help="replacement for --removal replace (default: unk)"
    )
    parser.add_argument(
        "--random-seeds", type=non_negative_int, default=3, metavar="N", help="random rankings in the baseline (3)"
    )
    parser.add_argument(
        "--soft-samples", type=positive_int, default=1, metavar="N", help="Bernoulli masks per token for Soft-NC/NS"
    )
    parser.add_argument(
        "--bootstrap", type=non_negative_int, default=1000, metavar="N", help="bootstrap resamples for the CIs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random (default: 0)")
    parser.add_argument("--json", type=output_file, metavar="FILE", help="write every value as JSON")
    parser.add_argument("--markdown", type=output_file, metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="attribute a generation with several methods and rank them by faithfulness against a random baseline",
        description="Generate a greedy continuation of PROMPT (or read --prompts), attribute it with every method "
        "and print one table ranked by comprehensiveness AOPC, with the random baseline and bootstrap confidence "
        "intervals.",
    )
    evaluate.add_argument("prompt", nargs="?", type=prompt_text, default=None, help="text to continue")
    evaluate.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help='one JSON object per line: {"prompt": ..., optional "continuation": text forced after the prompt '
        '(the target text for encoder-decoders), optional "truth_positions": [prompt token indices]}',
    )
    demo_models = ", ".join(DEMO_PREFIX + name for name in DEMO_MODEL_NAMES)
    evaluate.add_argument(
        "--model", "-m", default=None, help=f"Hub name, local folder or {demo_models} (default: {DEMO_PREFIX}gpt2)"
    )
    evaluate.add_argument(
        "--methods",
        type=attribution_method_list,
        default=list(EVALUATE_METHODS),
        metavar="NAME[,NAME...]",
        help=f"attribution methods to compare (default: {','.join(EVALUATE_METHODS)})",
    )
    evaluate.add_argument(
        "--max-new-tokens", type=positive_int, default=8, metavar="N", help="tokens to generate, greedily (8)"
    )
    evaluate.add_argument(
        "--plot",
        type=output_file,
        metavar="FILE.png",
        help="deletion/insertion curves as PNG: FILE for one method, FILE_METHOD.png for several",
    )
    evaluate.add_argument(
        "--html",
        type=output_file,
        metavar="FILE",
        help="write one explorer with every method's map and its faithfulness scores in the method menu",
    )
    _add_faithfulness_options(evaluate, "comprehensiveness,sufficiency,soft_comprehensiveness,soft_sufficiency")
    evaluate.set_defaults(handler="inseq_ext.evaluation.cli_evaluate:run_evaluate")


def add_evaluate_demos_command(commands: argparse._SubParsersAction) -> None:
    demos = commands.add_parser(
        "evaluate-demos",
        help="faithfulness and ground-truth pointing of every method on the demo models (the README table)",
    )
    demos.add_argument(
        "--models", nargs="+", default=list(DEMO_MODEL_NAMES), choices=DEMO_MODEL_NAMES, help="(default: all)"
    )
    demos.add_argument(
        "--methods",
        type=attribution_method_list,
        default=None,
        metavar="NAME[,NAME...]",
        help="methods to compare (default: every registered method)",
    )
    demos.add_argument(
        "--per-task", type=positive_int, default=None, metavar="N", help="probes per task; translation: sentences"
    )
    _add_faithfulness_options(demos, "comprehensiveness,sufficiency,soft_comprehensiveness,soft_sufficiency,"
                              "pointing_accuracy")  # fmt: skip
    demos.set_defaults(handler="inseq_ext.evaluation.cli_evaluate:run_evaluate_demos")


def add_attribute_dataset_command(commands: argparse._SubParsersAction) -> None:
    """``attribute-dataset``: handler and options in :mod:`inseq_ext.dataset_runs` (``attribute_dataset``)."""
    run = commands.add_parser(
        "attribute-dataset",
        help="attribute every prompt of a data set into resumable Parquet shards (several processes with "
        "accelerate launch)",
        description="Attribute every prompt of DATA (JSON Lines, CSV, TSV, Parquet, or a local Hugging Face "
        "datasets folder) into OUT: one row per generated token, in Parquet shards written whole or not at all. "
        "Rerun the same command after an interruption to resume; a different command on an existing OUT is "
        "refused. Under `accelerate launch --num_processes N` (on CPUs add --multi_gpu) or torchrun, each process "
        "attributes its share of the shards.",
    )
    run.add_argument("data", metavar="DATA", help="JSONL/CSV/TSV/Parquet file or a datasets folder (save_to_disk)")
    run.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created; rerun to resume)")
    demo_models = ", ".join(DEMO_PREFIX + name for name in DEMO_MODEL_NAMES)
    run.add_argument(
        "--model",
        "-m",
        default=None,
        type=model_reference,
        help=f"Hugging Face Hub name, local model folder, or {demo_models} (default: {DEMO_PREFIX}gpt2)",
    )
    run.add_argument(
        "--method",
        "-a",
        default=DEFAULT_METHOD,
        type=attribution_method,
        metavar="NAME",
        help=f"attribution method (default: {DEFAULT_METHOD}); same names as for attribute",
    )
    run.add_argument("--prompt-column", default="prompt", metavar="NAME", help="prompts (default: %(default)s)")
    run.add_argument(
        "--target-column",
        default=None,
        metavar="NAME",
        help="forced continuations, the text after the prompt (default: generate)",
    )
    run.add_argument("--id-column", default=None, metavar="NAME", help="example ids (default: the row number)")
    run.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N rows")
    run.add_argument("--split", default=None, help="split of a datasets folder that has several")
    run.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=8,
        metavar="N",
        help="tokens to generate at most per prompt, greedily (default: %(default)s)",
    )
    run.add_argument(
        "--generation-arg",
        dest="generation_args",
        action=MethodArgAction,
        default={},
        metavar="NAME=VALUE",
        help="a generate() argument, repeatable, e.g. --generation-arg do_sample=true (sampling is seeded per batch)",
    )
    run.add_argument(
        "--method-arg",
        dest="method_args",
        action=MethodArgAction,
        default={},
        metavar="NAME=VALUE",
        help="an option of the method, repeatable, e.g. --method-arg n_steps=20 (integrated_gradients); values as "
        "for attribute; unknown names are an error that lists the valid ones",
    )
    run.add_argument(
        "--step-scores",
        action="extend",
        default=None,
        type=step_function_list,
        metavar="NAME[,NAME...]",
        help="step scores stored per generated token (default: probability, none for attention methods)",
    )
    run.add_argument("--no-step-scores", action="store_true", help="store no step scores")
    run.add_argument(
        "--attributed-fn", default=None, type=step_function, metavar="NAME", help="step function to attribute"
    )
    run.add_argument("--attribute-target", action="store_true", help="encoder-decoders: attribute the target too")
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        metavar="N",
        help="prompts generated and attributed together, of similar lengths (default: %(default)s)",
    )
    run.add_argument(
        "--shard-size",
        type=positive_int,
        default=32,
        metavar="N",
        help="examples per output file, the most an interruption loses (default: %(default)s)",
    )
    run.add_argument(
        "--raw-scores",
        choices=("auto", "always", "never"),
        default="auto",
        help="keep the scores before aggregation (auto: for layer/head outputs; default: %(default)s)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of sampling and stochastic methods (default: 0)")
    run.add_argument("--device", default=None, help="e.g. cpu or cuda (default: inseq's; one GPU per process)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    run.set_defaults(handler="inseq_ext.dataset_runs.command:run_attribute_dataset")


def add_summarize_command(commands: argparse._SubParsersAction) -> None:
    summarize = commands.add_parser(
        "summarize",
        help="statistics of attribute-dataset runs: examples, tokens, attribution mass on the prompt, most "
        "attributed tokens, faithfulness",
    )
    summarize.add_argument("runs", nargs="+", metavar="DIR", help="output folders of attribute-dataset runs")
    summarize.add_argument(
        "--top", type=positive_int, default=10, metavar="N", help="most attributed tokens to list (default: 10)"
    )
    summarize.add_argument(
        "--evaluate",
        type=positive_int,
        default=None,
        metavar="N",
        help="also evaluate the faithfulness of the first N examples of each run (reruns the model)",
    )
    summarize.add_argument("--json", type=output_file, metavar="FILE", help="also write the statistics as JSON")
    summarize.set_defaults(handler="inseq_ext.dataset_runs.command:run_summarize")


def add_demo_model_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo-model", help="print the local folder of an embedded demo model")
    demo.add_argument("name", nargs="?", default="gpt2", help=f"one of: {', '.join(DEMO_MODEL_NAMES)}")
    demo.set_defaults(handler="inseq_ext.cli:run_demo_model")


def add_inseq_command(commands: argparse._SubParsersAction) -> None:
    passthrough = commands.add_parser(
        "inseq",
        help="inseq's own CLI (attribute, attribute-dataset, attribute-context) with this package's methods",
        add_help=False,
    )
    passthrough.add_argument("inseq_args", nargs=argparse.REMAINDER)
    passthrough.set_defaults(handler="inseq_ext.cli:run_inseq")


#: The subcommands, in the order ``inseq-ext --help`` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_attribute_command,
    add_ground_truth_command,
    add_evaluate_command,
    add_evaluate_demos_command,
    add_attribute_dataset_command,
    add_summarize_command,
    add_demo_model_command,
    add_inseq_command,
]


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Attribute generations of language models with inseq and this package's methods. Without "
        "--model, the embedded demo GPT-2 is used: running needs no network (installing does).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def load_handler(reference: str) -> Callable[[argparse.Namespace], Any]:
    """The handler named ``"package.module:function"``, imported now (this is where the package is loaded)."""
    module_name, _, function_name = reference.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inseq-ext``, ``python -m inseq_ext_cli`` and ``python -m inseq_ext``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error (already printed)
        return exit_request.code if isinstance(exit_request.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        handler = load_handler(args.handler)
        status = handler(args)
    except CLIError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_request:  # inseq's own parser inside ``inseq-ext inseq``
        return exit_request.code if isinstance(exit_request.code, int) else (0 if exit_request.code is None else 2)
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())

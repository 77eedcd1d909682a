"""``attribute_dataset``: attribute every prompt of a data set, resumably, in one process or several.

For each shard of the plan (see :mod:`~inseq_ext.dataset_runs.plan`): the continuations of each batch are generated
together (greedy by default, with the model's own ``generate`` on left-padded prompts; or taken from the target
column); the shard's examples are then attributed by inseq's ``model.attribute`` with forced targets, in groups of
equal prompt and continuation lengths of at most ``batch_size`` (no padding, see
:mod:`~inseq_ext.dataset_runs.batching`), and each generated token becomes a row (see
:mod:`~inseq_ext.dataset_runs.rows`). A shard's rows are written when all of it is done (see
:mod:`~inseq_ext.dataset_runs.store`). A group that fails is retried one example at a time, so a row that cannot be
attributed becomes a bad row with the error's message and the others go on.

Every random draw is seeded from ``seed``: sampling per generation batch, stochastic methods per attribution
group (from its first example's row number), so each gives the same result whenever and in whichever process it
runs: a resumed or several-process run equals an uninterrupted one-process run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import inseq
import torch
import transformers

import inseq_ext
from inseq_ext.dataset_runs.batching import equal_length_groups, token_lengths, unpadded_forced_batches
from inseq_ext.dataset_runs.distributed import Processes, current_processes
from inseq_ext.dataset_runs.errors import DatasetRunError
from inseq_ext.dataset_runs.plan import Batch, Plan, Shard, make_plan, prompt_token_counts
from inseq_ext.dataset_runs.progress import RunProgress
from inseq_ext.dataset_runs.rows import (
    BASE_COLUMNS,
    RAW_COLUMN,
    RAW_SCORE_MODES,
    class_path,
    keeps_raw,
    raw_dims,
    sequence_rows,
)
from inseq_ext.dataset_runs.sources import BadRow, DataSet, DataSpec, Example, read_data
from inseq_ext.dataset_runs.store import RunFolder
from inseq_ext.demo_models import DEMO_MODEL_NAMES, demo_model
from inseq_ext.generation_length import check_generation_length

DEMO_PREFIX = "demo:"
DEFAULT_MODEL = DEMO_PREFIX + "gpt2"
#: Consecutive failed examples, with none attributed yet, after which a run stops: the method or its options are
#: wrong for every row, and a data set of error records would hide that.
FAILURES_BEFORE_ABORT = 3
#: Seconds between two looks at the shards folder while process 0 waits for the other processes.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class DatasetRunResult:
    """What :func:`attribute_dataset` did.

    Attributes:
        out: The output folder.
        examples: Examples attributed in the whole run (all processes, earlier sessions included); filled in
            process 0, which writes the manifest (0 in the other processes).
        rows: Rows (generated tokens) in the whole run (process 0).
        bad_rows: Rows not attributed, listed with their reasons in ``out/errors.jsonl`` (process 0).
        shards: Shards of the plan.
        shards_resumed: Shards found already written when this session started.
        shards_written: Shards this process wrote in this session.
        seconds: Wall time of this session.
        complete: Whether the manifest is written (always true for process 0 when the call returns).
        process: This process's rank, and the number of processes.
    """

    out: Path
    examples: int
    rows: int
    bad_rows: int
    shards: int
    shards_resumed: int
    shards_written: int
    seconds: float
    complete: bool
    process: tuple[int, int] = (0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Options and the command description
# ----------------------------------------------------------------------------------------------------------------


def _json_value(name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    value = dict(value or {})
    try:
        json.dumps(value, sort_keys=True)
    except TypeError as error:
        raise DatasetRunError(f"{name} must hold JSON values (numbers, strings, lists, ...): {error}") from None
    return value


def _check_options(
    method: str,
    step_scores: Sequence[str] | None,
    attributed_fn: str | None,
    batch_size: int,
    shard_size: int,
    max_new_tokens: int,
    raw_scores: str,
    generation_args: dict[str, Any],
) -> None:
    methods = inseq.list_feature_attribution_methods()
    if method not in methods:
        raise DatasetRunError(f"unknown attribution method {method!r}; choose one of: {', '.join(sorted(methods))}")
    step_functions = inseq.list_step_functions()
    for name in list(step_scores or []) + ([attributed_fn] if attributed_fn else []):
        if name not in step_functions:
            raise DatasetRunError(f"unknown step function {name!r}; choose from: {', '.join(sorted(step_functions))}")
    clashes = sorted(set(step_scores or []) & {*BASE_COLUMNS, RAW_COLUMN})
    if clashes:
        raise DatasetRunError(f"step score name {clashes[0]!r} is also a column name; rename the step function")
    for option, value in (("batch_size", batch_size), ("shard_size", shard_size), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or value < 1:
            raise DatasetRunError(f"{option} must be a whole number of at least 1, got {value!r}")
    if raw_scores not in RAW_SCORE_MODES:
        raise DatasetRunError(f"raw_scores must be one of: {', '.join(RAW_SCORE_MODES)}; got {raw_scores!r}")
    if "max_new_tokens" in generation_args or "max_length" in generation_args:
        raise DatasetRunError("give the generation length with max_new_tokens, not in generation_args")


def check_method_args(
    attribution_model: inseq.models.AttributionModel,
    method: str,
    attributed_fn: str | None,
    step_scores: Sequence[str],
    method_args: dict[str, Any],
) -> None:
    """Refuse, before anything runs, options that no receiver takes or values the method refuses.

    inseq only logs (or drops) keyword arguments that neither the method, the attributed function nor a step score
    takes, so a misspelt option would silently be ignored for a whole data set. The check is
    :func:`inseq_ext.attr.method_args.check_attribution_kwargs` with ``method`` as the model's method for its
    duration (the model's own default method is put back).
    """
    from inseq_ext.attr.method_args import check_attribution_kwargs

    if not method_args:
        return
    default_method = attribution_model.attribution_method
    try:
        attribution_model.attribution_method = attribution_model.get_attribution_method(method)
        check_attribution_kwargs(attribution_model, method_args, attributed_fn, step_scores)
    except ValueError as error:
        raise DatasetRunError(f"method options: {(str(error).strip().splitlines() or [''])[0]}") from None
    finally:
        attribution_model.attribution_method = default_method


def load_run_model(
    model: str | None, method: str, device: str | None, model_kwargs: dict[str, Any] | None
) -> tuple[inseq.models.AttributionModel, str]:
    """Load ``model`` (hub name, local folder, ``demo:NAME``; default ``demo:gpt2``) for ``method``; and its label."""
    from inseq_ext.evaluation.ground_truth import EAGER_ATTENTION_METHODS

    label = model or DEFAULT_MODEL
    if label.startswith(DEMO_PREFIX):
        try:
            name_or_path = demo_model(label[len(DEMO_PREFIX) :])
        except ValueError as error:
            raise DatasetRunError(str(error)) from None
    else:
        name_or_path = label
        if Path(label).exists():
            label = str(Path(label).resolve())
    kwargs = dict(model_kwargs or {})
    if method in EAGER_ATTENTION_METHODS:
        kwargs.setdefault("attn_implementation", "eager")
    try:
        attribution_model = inseq.load_model(name_or_path, method, device=device, model_kwargs=kwargs)
    except (OSError, ValueError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DatasetRunError(
            f"could not load model {label!r} ({detail}); give a local model folder, a model in the local Hugging "
            f"Face cache, or leave out the model to use the embedded demo model {DEFAULT_MODEL}"
        ) from None
    return attribution_model, label


def model_label(attribution_model: inseq.models.AttributionModel) -> str:
    """The name of a loaded model as a run records it: ``demo:NAME`` for a demo model, a resolved local folder,
    or the hub name (so passing a loaded model and naming it give the same command)."""
    name = str(getattr(attribution_model.model.config, "_name_or_path", "") or "")
    if not name:
        return type(attribution_model.model).__name__
    if Path(name).exists():
        folder = Path(name).resolve()
        for demo_name in DEMO_MODEL_NAMES:
            if folder == Path(demo_model(demo_name)).resolve():
                return DEMO_PREFIX + demo_name
        return str(folder)
    return name


def model_description(attribution_model: inseq.models.AttributionModel, label: str) -> dict[str, Any]:
    """What identifies the model in the command: its name, class, configuration digest, dtype and device type."""
    hf_model = attribution_model.model
    config = hf_model.config.to_dict()
    for volatile in ("_name_or_path", "name_or_path", "transformers_version"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "name": label,
        "class": type(hf_model).__name__,
        "config_sha256": digest,
        "dtype": str(next(hf_model.parameters()).dtype).replace("torch.", ""),
        "device_type": torch.device(attribution_model.device).type,
    }


# ----------------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------------


def forced_text(attribution_model: inseq.models.AttributionModel, example: Example) -> str:
    """The forced target inseq takes: decoder-only, prompt + continuation (unless it already starts with the
    prompt); encoder-decoder, the target as it is."""
    assert example.target is not None
    if attribution_model.is_encoder_decoder or example.target.startswith(example.prompt):
        return example.target
    return example.prompt + example.target


def plan_run(
    attribution_model: inseq.models.AttributionModel,
    data_set: DataSet,
    max_new_tokens: int,
    batch_size: int,
    shard_size: int,
) -> Plan:
    """The plan of the run; rows too long for the model become bad rows here, before anything runs."""
    tokenizer = attribution_model.tokenizer
    examples = data_set.examples
    is_encoder_decoder = attribution_model.is_encoder_decoder
    prompt_lengths = prompt_token_counts(tokenizer, [example.prompt for example in examples])
    forced = bool(examples) and examples[0].target is not None
    if forced:
        texts = [forced_text(attribution_model, example) for example in examples]
        counts = prompt_token_counts(tokenizer, texts, as_targets=is_encoder_decoder)
        new_tokens = counts if is_encoder_decoder else [n - p for n, p in zip(counts, prompt_lengths, strict=True)]
    else:
        new_tokens = [max_new_tokens] * len(examples)
    kept, kept_lengths, bad_rows = [], [], list(data_set.bad_rows)
    for example, length, new in zip(examples, prompt_lengths, new_tokens, strict=True):
        try:  # token counts, not texts: the texts were tokenized above, all at once
            if forced:
                check_generation_length(attribution_model, [length], generated_texts=[new if is_encoder_decoder
                                                                                      else length + new])  # fmt: skip
            else:
                check_generation_length(attribution_model, [length], max_new_tokens=new)
        except ValueError as problem:
            bad_rows.append(BadRow(example.index, example.id, f"too long for the model: {problem}"))
        else:
            kept.append(example)
            kept_lengths.append(length)
    return make_plan(kept, kept_lengths, batch_size, shard_size, bad_rows)


def plan_payload(plan: Plan, data_rows: int) -> dict[str, Any]:
    return {
        "data_rows": data_rows,
        "examples": plan.examples,
        "bad_rows": [row.as_record() for row in plan.bad_rows],
        "shards": [
            {"number": shard.number, "examples": [example.index for example in shard.examples]}
            for shard in plan.shards
        ],
    }


# ----------------------------------------------------------------------------------------------------------------
# Attributing
# ----------------------------------------------------------------------------------------------------------------


def batch_seed(seed: int, number: int, purpose: int) -> int:
    """A seed for one generation batch (``purpose`` 0, ``number``: the batch's) or one attribution group (1, the row
    number of its first example): the same in every process and session."""
    payload = f"{seed}:{number}:{purpose}".encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") & (2**63 - 1)


class _PaddingNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


@contextmanager
def _without_padding_notice() -> Iterator[None]:
    """Hide transformers' "We strongly recommend passing in an `attention_mask`" during our generation: the prompts
    come with their mask; the notice is raised when ``generate`` itself pads rows that have finished."""
    logger = logging.getLogger("transformers.modeling_utils")
    notice_filter = _PaddingNoticeFilter()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


def generate_continuations(
    attribution_model: inseq.models.AttributionModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    generation_args: dict[str, Any],
) -> list[str | None]:
    """Generate for ``prompts`` in one ``generate`` call; the texts inseq takes as forced targets.

    Decoder-only models get left-padded prompts and return prompt + continuation; encoder-decoders return the target
    text. Special tokens are left out (inseq would attribute a trailing ``</s>`` as one more step). ``None`` for a
    prompt whose generation has no text (the model ended the text at once).
    """
    tokenizer, model = attribution_model.tokenizer, attribution_model.model
    is_encoder_decoder = attribution_model.is_encoder_decoder
    padding_side = tokenizer.padding_side
    try:
        if not is_encoder_decoder:
            tokenizer.padding_side = "left"
        encoding = tokenizer(list(prompts), return_tensors="pt", padding=True).to(attribution_model.device)
    finally:
        tokenizer.padding_side = padding_side
    # max_length=None: the length is max_new_tokens (a generation config's max_length would only add a warning).
    arguments = {"do_sample": False, **generation_args, "max_new_tokens": max_new_tokens, "max_length": None}
    if tokenizer.pad_token_id is not None:
        arguments.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad(), _without_padding_notice():
        sequences = model.generate(**encoding, **arguments)
    texts: list[str | None] = []
    for row, prompt in enumerate(prompts):
        if is_encoder_decoder:
            text = tokenizer.decode(sequences[row], skip_special_tokens=True)
            texts.append(text if text.strip() else None)
            continue
        new_ids = sequences[row, encoding["input_ids"].shape[1] :]
        text = tokenizer.decode(sequences[row], skip_special_tokens=True)
        if not text.startswith(prompt):  # a tokenizer that does not give the prompt back as it was written
            text = prompt + tokenizer.decode(new_ids, skip_special_tokens=True)
        texts.append(text if text[len(prompt) :].strip() else None)
    return texts


def _error_reason(error: BaseException) -> str:
    message = (str(error).strip().splitlines() or [""])[0]
    return f"attribution failed: {type(error).__name__}: {message}" if message else type(error).__name__


@dataclass
class _ShardOutput:
    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    info: dict[str, Any]


class _Attributor:
    """Attributes the batches of one process (holds the model and the options of the run)."""

    def __init__(
        self,
        attribution_model: inseq.models.AttributionModel,
        method: str,
        step_scores: list[str],
        attributed_fn: str | None,
        method_args: dict[str, Any],
        attribute_target: bool,
        max_new_tokens: int,
        generation_args: dict[str, Any],
        raw_scores: str,
        seed: int,
        batch_size: int,
    ) -> None:
        self.model = attribution_model
        self.batch_size = batch_size
        self.method = method
        self.step_scores = step_scores
        self.attributed_fn = attributed_fn
        self.method_args = method_args
        self.attribute_target = attribute_target
        self.max_new_tokens = max_new_tokens
        self.generation_args = generation_args
        self.raw_scores = raw_scores
        self.seed = seed
        self.successes = 0
        self.failures: list[str] = []

    def shard(self, shard: Shard) -> _ShardOutput:
        """Generate batch by batch, then attribute the shard's examples in groups of equal token lengths."""
        output = _ShardOutput([], [], [], {})
        ready: list[tuple[Example, str]] = []
        for batch in shard.batches:
            ready += self._continuations(batch, output)
        keys = [token_lengths(self.model, example.prompt, text) for example, text in ready]
        for group in equal_length_groups(keys, ready, self.batch_size):
            self._attribute(group, output)
        return output

    def _continuations(self, batch: Batch, output: _ShardOutput) -> list[tuple[Example, str]]:
        """The texts to attribute (forced or generated for the batch); examples with no text become bad rows."""
        examples = list(batch.examples)
        if examples[0].target is not None:
            texts: list[str | None] = [forced_text(self.model, example) for example in examples]
        else:
            torch.manual_seed(batch_seed(self.seed, batch.number, 0))
            texts = generate_continuations(
                self.model, [example.prompt for example in examples], self.max_new_tokens, self.generation_args
            )
        ready = []
        for example, text in zip(examples, texts, strict=True):
            if text is None:
                reason = "the model generated no text (it ended the text at once)"
                output.errors.append(BadRow(example.index, example.id, reason).as_record())
            else:
                ready.append((example, text))
        return ready

    def _attribute(self, items: list[tuple[Example, str]], output: _ShardOutput) -> None:
        """Attribute ``items`` together (one group of equal lengths); on failure, one at a time."""
        # Seeded by the group's first example: the same draws whenever and wherever the group is attributed.
        torch.manual_seed(batch_seed(self.seed, items[0][0].index, 1))
        try:
            with unpadded_forced_batches(self.model, len(items) > 1):
                out = self.model.attribute(
                    [example.prompt for example, _ in items],
                    [text for _, text in items],
                    method=self.method,
                    step_scores=self.step_scores,
                    attributed_fn=self.attributed_fn,
                    attribute_target=self.attribute_target,
                    show_progress=False,
                    batch_size=len(items),
                    **self.method_args,
                )
            if len(out.sequence_attributions) != len(items):
                raise RuntimeError(f"inseq returned {len(out.sequence_attributions)} sequences for {len(items)}")
            aggregated = out.aggregate()
        except Exception as error:  # any failure of one row must not end the run: isolate it
            if len(items) > 1:
                for item in items:
                    self._attribute([item], output)
                return
            example = items[0][0]
            reason = _error_reason(error)
            self.failures.append(reason)
            if self.successes == 0 and len(self.failures) >= FAILURES_BEFORE_ABORT:
                raise DatasetRunError(
                    f"the first {len(self.failures)} examples all failed, so the run stops: {self.failures[0]} "
                    "(check the method and its options)"
                ) from error
            output.errors.append(BadRow(example.index, example.id, reason).as_record())
            return
        pairs = zip(out.sequence_attributions, aggregated.sequence_attributions, strict=True)
        for (example, text), (raw, agg) in zip(items, pairs, strict=True):
            keep_raw = keeps_raw(raw, self.raw_scores)
            rows, record = sequence_rows(
                raw, agg, example.index, example.id, example.prompt, text, keep_raw, self.model.is_encoder_decoder
            )
            self.successes += 1
            output.rows += rows
            output.records.append(record)
            if not output.info:
                output.info = {
                    "output_class": class_path(type(raw)),
                    "num_dimensions": int(raw._num_dimensions or 0),
                    "raw_dims": raw_dims(raw) if keep_raw else [],
                    "raw_scores_kept": keep_raw,
                    "has_source": agg.source_attributions is not None,
                    "has_target": agg.target_attributions is not None,
                    "step_scores": list(self.step_scores),
                    "is_encoder_decoder": bool(self.model.is_encoder_decoder),
                }


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def attribute_dataset(
    data: str | Path,
    out: str | Path,
    *,
    method: str = "custom_saliency",
    model: str | inseq.models.AttributionModel | None = None,
    prompt_column: str = "prompt",
    target_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    split: str | None = None,
    max_new_tokens: int = 8,
    generation_args: dict[str, Any] | None = None,
    step_scores: Sequence[str] | None = None,
    attributed_fn: str | None = None,
    method_args: dict[str, Any] | None = None,
    attribute_target: bool = False,
    batch_size: int = 8,
    shard_size: int = 32,
    raw_scores: str = "auto",
    seed: int = 0,
    device: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    show_progress: bool = True,
    checkpoint: bool = True,
) -> DatasetRunResult:
    """Attribute every prompt of a data set to ``out``, resuming the work already there.

    Rerun with the same arguments after an interruption (even SIGKILL) and it continues where it stopped; the
    finished folder equals an uninterrupted run's. A folder holding another command's run is refused. Started by
    ``accelerate launch`` or ``torchrun`` with several processes, each process attributes its share of the shards.
    Read the result with :func:`~inseq_ext.dataset_runs.load_dataset_attributions`.

    Args:
        data: JSON Lines, CSV, TSV or Parquet file, or a local Hugging Face ``datasets`` folder (``save_to_disk``).
        out: Output folder (created; see :mod:`~inseq_ext.dataset_runs.store` for its layout).
        method: Attribution method (inseq's registry, this package's methods included).
        model: Hub name, local folder, ``demo:NAME`` (default ``demo:gpt2``), or a loaded inseq model.
        prompt_column: Column of the prompts.
        target_column: Column of forced continuations (decoder-only: the text after the prompt); none: generate.
        id_column: Column of example ids (default: the row number).
        limit: Attribute only the first ``limit`` rows.
        split: Split of a ``datasets`` folder with several.
        max_new_tokens: Tokens to generate per prompt (greedy unless ``generation_args`` says otherwise).
        generation_args: More ``generate`` arguments, e.g. ``{"do_sample": True, "top_p": 0.9}`` (seeded per batch).
        step_scores: Step functions stored per generated token (default: ``probability``; none for final-step
            methods such as ``attention``, which do not support them).
        attributed_fn: Step function to attribute (default: the model's, i.e. the probability of the token).
        method_args: Keyword arguments of the method's ``attribute`` (e.g. ``{"n_steps": 20}``; a memory budget of
            the gradient engine goes here too).
        attribute_target: Encoder-decoders: also attribute the target prefix.
        batch_size: Examples generated and attributed together; prompts of similar length are batched together.
        shard_size: Examples per output file, rounded up to whole batches: the most work an interruption loses.
        raw_scores: Keep the scores before aggregation (``auto``: for layer/head outputs; ``always``; ``never``).
        seed: Seed of every random draw (drawn anew per batch from it).
        device: Device of the model (default: inseq's choice; one GPU per process when launched on GPUs).
        model_kwargs: Keyword arguments of ``from_pretrained`` (e.g. ``{"torch_dtype": "bfloat16"}``).
        show_progress: Show the progress bar on stderr (process 0 only).
        checkpoint: Write each shard as soon as it is done (the default). ``False`` keeps every shard in memory
            and writes them all at the end, the same files, but nothing survives an interruption: it exists to
            measure what checkpointing costs (``benchmarks/bench_dataset.py``).

    Returns:
        A :class:`DatasetRunResult`.

    Raises:
        DatasetRunError: a missing or unreadable data set, an unknown column, method, step function or format, bad
            sizes, a model that cannot be loaded, an output folder holding another command's run, or a method that
            fails on the first examples (each with a one-line message naming the valid choices).
    """
    started = time.perf_counter()
    generation_args = _json_value("generation_args", generation_args)
    method_args = _json_value("method_args", method_args)
    _check_options(method, step_scores, attributed_fn, batch_size, shard_size, max_new_tokens, raw_scores,
                   generation_args)  # fmt: skip
    processes = current_processes(device)
    try:
        data_set = read_data(DataSpec(str(data), prompt_column, target_column, id_column, limit, split))
        if isinstance(model, inseq.models.AttributionModel):
            attribution_model, label = model, model_label(model)
        else:
            attribution_model, label = load_run_model(model, method, processes.device or device, model_kwargs)
        if step_scores is None:
            final_step = attribution_model.get_attribution_method(method).is_final_step_method
            step_scores = [] if final_step else ["probability"]
        check_method_args(attribution_model, method, attributed_fn, step_scores, method_args)
        plan = plan_run(attribution_model, data_set, max_new_tokens, batch_size, shard_size)
        payload = plan_payload(plan, data_set.rows)
        forced = target_column is not None
        command = {
            "data": {
                "sha256": data_set.sha256,
                "rows": data_set.rows,
                "prompt_column": prompt_column,
                "target_column": target_column,
                "id_column": id_column,
                "limit": limit,
                "split": split,
            },
            "model": model_description(attribution_model, label),
            "method": method,
            "method_args": method_args,
            "attributed_fn": attributed_fn,
            "step_scores": list(step_scores),
            "attribute_target": attribute_target,
            "generation": None if forced else {"max_new_tokens": max_new_tokens, "args": generation_args},
            "seed": seed,
            "batch_size": batch_size,
            "shard_size": shard_size,
            "raw_scores": raw_scores,
            "plan_sha256": plan.digest(),
            "versions": {
                "inseq_ext": inseq_ext.__version__,
                "inseq": importlib.metadata.version("inseq"),
                "transformers": transformers.__version__,
                "torch": torch.__version__.split("+")[0],
            },
        }
        folder = RunFolder(out)
        if processes.is_main:
            folder.prepare(command, plan, payload)
        processes.barrier()
        if folder.command() != json.loads(json.dumps(command)):
            raise DatasetRunError(f"{out}: the processes of this run disagree on the command (different data?)")
        attributor = _Attributor(
            attribution_model,
            method,
            list(step_scores),
            attributed_fn,
            method_args,
            attribute_target,
            max_new_tokens,
            generation_args,
            raw_scores,
            seed,
            batch_size,
        )
        return _run_shards(folder, plan, payload, attributor, processes, show_progress, started, checkpoint)
    finally:
        processes.close()


def _run_shards(
    folder: RunFolder,
    plan: Plan,
    payload: dict[str, Any],
    attributor: _Attributor,
    processes: Processes,
    show_progress: bool,
    started: float,
    checkpoint: bool = True,
) -> DatasetRunResult:
    shard_examples = {shard.number: len(shard.examples) for shard in plan.shards}
    completed = folder.completed_shards()
    resumed = len(completed & set(shard_examples))
    pending = [shard for shard in plan.shards if shard.number not in completed]
    mine = pending[processes.rank :: processes.world]
    progress = RunProgress(
        total=plan.examples,
        done=sum(shard_examples[number] for number in completed if number in shard_examples),
        enabled=show_progress and processes.is_main,
    )
    errors = len(plan.bad_rows)
    # Shards not written yet: all of them without checkpoints; with checkpoints, those done before the first
    # example succeeds (a run that stops because every example fails leaves no shard, and can be corrected).
    held: list[tuple[int, _ShardOutput]] = []

    def write(number: int, output: _ShardOutput) -> None:
        columns = list(BASE_COLUMNS) + ([RAW_COLUMN] if output.info.get("raw_scores_kept") else [])
        folder.write_shard(
            number, output.rows, columns, attributor.step_scores, output.records, output.errors, output.info
        )

    try:
        for shard in mine:
            output = attributor.shard(shard)
            errors += len(output.errors)
            held.append((shard.number, output))
            if checkpoint and attributor.successes:
                while held:
                    write(*held.pop(0))
                written = folder.completed_shards()
                progress.advance_to(sum(shard_examples[n] for n in written if n in shard_examples), errors)
            else:
                progress.advance_to(progress.start_done + sum(shard_examples[n] for n, _ in held), errors)
        while held:
            write(*held.pop(0))
        complete = False
        manifest: dict[str, Any] = {}
        if processes.is_main:
            while True:  # the other processes' shards
                written = folder.completed_shards()
                progress.advance_to(sum(shard_examples[n] for n in written if n in shard_examples))
                if set(shard_examples) <= written:
                    break
                time.sleep(POLL_SECONDS)
            manifest = folder.finish(payload)
            complete = True
    finally:
        progress.close()
    return DatasetRunResult(
        out=folder.path,
        examples=manifest.get("examples", 0),
        rows=manifest.get("rows", 0),
        bad_rows=manifest.get("bad_rows", 0),
        shards=len(plan.shards),
        shards_resumed=resumed,
        shards_written=len(mine),
        seconds=time.perf_counter() - started,
        complete=complete,
        process=(processes.rank, processes.world),
    )

"""``summarize_dataset_attributions`` (``inseq-ext summarize``): the first numbers a researcher asks of a run.

For each run: examples, bad rows and generated tokens; where the attribution mass goes (prompt or generated
prefix); the most attributed tokens overall; mean step scores; and, on request, mean faithfulness.

**Mass shares.** For the row of generated token ``t`` with scores ``a_1..a_n`` over its attributed tokens, of which
the first ``m`` are the prompt, the prompt share is ``sum_{i<=m} |a_i| / sum_i |a_i|`` (absolute values, since
signed methods such as gradient x input have negative scores); the generated-prefix share is one minus it. Means
are over rows; the first generated token of a decoder-only model has no generated prefix (share 1), so the mean
over the later tokens is given too.

**Most attributed tokens.** Each row's scores are normalized to shares ``|a_i| / sum_j |a_j|``; a token (as text)
gets the sum of its shares over all rows, divided by the number of rows: the fraction of all attribution mass it
received. Also shown: how often it was attributed (occurrences), its mean share when present, and how many rows
had it as the top-scored token. Frequent tokens (``the``, ``.``) collect mass by being everywhere, so a second list
ranks tokens by how many rows had them as the top-scored token.

**Faithfulness** (``evaluate=N``): the first ``N`` examples are rebuilt as inseq outputs and passed to
``inseq_ext.evaluation.evaluate_faithfulness`` with the run's model; its metric means (e.g. comprehensiveness and
sufficiency, DeYoung et al., 2020, "ERASER", ACL) are reported per run, so runs of different methods on the same
data compare side by side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inseq_ext.dataset_runs.errors import DatasetRunError
from inseq_ext.dataset_runs.load import DatasetAttributions, load_dataset_attributions

#: Step positions reported one by one in the per-step prompt share.
STEPS_SHOWN = 8


@dataclass
class RunSummary:
    """Statistics of one run (see the module docstring for the definitions)."""

    path: str
    method: str
    model: str
    examples: int
    bad_rows: int
    generated_tokens: int
    mean_generated_tokens: float
    mean_prompt_tokens: float
    prompt_share: float
    prompt_share_after_first: float | None
    prompt_share_by_step: list[float]
    top_tokens: list[dict[str, Any]]
    top1_tokens: list[dict[str, Any]]
    step_score_means: dict[str, float]
    faithfulness: dict[str, float] | None = None
    faithfulness_examples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class DatasetSummary:
    """The summaries of one or more runs; ``str()`` gives the text ``inseq-ext summarize`` prints."""

    runs: list[RunSummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [run.to_dict() for run in self.runs]}

    def __str__(self) -> str:
        return format_summary(self)


def _display_token(token: str) -> str:
    """A token as text: byte-level BPE's ``Ġ`` and SentencePiece's ``▁`` (a leading space) shown as a space."""
    return token.replace("\u0120", " ").replace("\u2581", " ").replace("\u010a", "\\n")


def run_statistics(attributions: DatasetAttributions, top: int = 10) -> RunSummary:
    """The statistics of one loaded run."""
    import pandas as pd
    import pyarrow.compute as pc

    table = attributions.table
    rows = table.num_rows
    command = attributions.command
    base = {
        "path": str(attributions.path),
        "method": command["method"],
        "model": command["model"]["name"],
        "examples": len(attributions.examples),
        "bad_rows": len(attributions.errors),
        "generated_tokens": rows,
    }
    if rows == 0:
        return RunSummary(**base, mean_generated_tokens=0.0, mean_prompt_tokens=0.0, prompt_share=math.nan,
                          prompt_share_after_first=None, prompt_share_by_step=[], top_tokens=[], top1_tokens=[],
                          step_score_means={})  # fmt: skip
    scores_column = table.column("attribution").combine_chunks()
    scores = np.abs(np.nan_to_num(pc.list_flatten(scores_column).to_numpy(zero_copy_only=False)))
    parents = pc.list_parent_indices(scores_column).to_numpy()
    offsets = scores_column.offsets.to_numpy()
    within_row = np.arange(len(scores)) - offsets[:-1][parents]
    n_prompt = table.column("n_prompt_tokens").to_numpy()
    steps = table.column("step").to_numpy()
    totals = np.bincount(parents, weights=scores, minlength=rows)
    prompt_mass = np.bincount(parents, weights=scores * (within_row < n_prompt[parents]), minlength=rows)
    valid = totals > 0
    share = np.divide(prompt_mass, totals, out=np.zeros(rows), where=valid)
    later = valid & (steps > 0)
    by_step = [float(share[valid & (steps == step)].mean()) for step in range(STEPS_SHOWN)
               if (valid & (steps == step)).any()]  # fmt: skip

    shares = np.divide(scores, totals[parents], out=np.zeros_like(scores), where=totals[parents] > 0)
    tokens = pc.list_flatten(table.column("attributed_tokens").combine_chunks()).to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({"token": tokens, "share": shares, "row": parents})
    grouped = frame.groupby("token", sort=False)["share"].agg(["sum", "count", "mean"])
    top_rows = frame.loc[frame.groupby("row")["share"].idxmax(), "token"].value_counts()
    grouped["top1"] = top_rows.reindex(grouped.index).fillna(0).astype(int)
    top1_tokens = [
        {"token": token, "text": _display_token(token), "top1": int(count), "row_share": float(count / valid.sum())}
        for token, count in top_rows.sort_values(ascending=False, kind="stable").head(top).items()
    ]
    grouped = grouped.sort_values(["sum", "count"], ascending=False).head(top)
    top_tokens = [
        {
            "token": token,
            "text": _display_token(token),
            "share": float(values["sum"] / valid.sum()),
            "occurrences": int(values["count"]),
            "mean_share": float(values["mean"]),
            "top1": int(values["top1"]),
        }
        for token, values in grouped.iterrows()
    ]
    step_score_means = {
        name: float(np.nanmean(table.column(name).to_numpy(zero_copy_only=False)))
        for name in command.get("step_scores", [])
        if name in table.column_names
    }
    return RunSummary(
        **base,
        mean_generated_tokens=rows / max(1, len(attributions.examples)),
        mean_prompt_tokens=float(attributions.table.column("n_prompt_tokens").to_numpy()[steps == 0].mean()),
        prompt_share=float(share[valid].mean()) if valid.any() else math.nan,
        prompt_share_after_first=float(share[later].mean()) if later.any() else None,
        prompt_share_by_step=by_step,
        top_tokens=top_tokens,
        top1_tokens=top1_tokens,
        step_score_means=step_score_means,
    )


def faithfulness_means(
    attributions: DatasetAttributions, examples: int, attribution_model: Any | None = None, **options: Any
) -> tuple[dict[str, float], int]:
    """Mean faithfulness metrics of the run's first ``examples`` examples (``evaluate_faithfulness``).

    Args:
        attributions: A loaded run.
        examples: How many examples (the first by row number) to evaluate.
        attribution_model: The inseq model of the run; loaded from the run's description when omitted.
        **options: Passed to ``evaluate_faithfulness`` (e.g. ``metrics``, ``random_seeds``, ``bootstrap``).

    Returns:
        ``metric -> mean`` (plus ``metric (random)`` for the random baseline when computed), and the number of
        examples evaluated.
    """
    try:
        from inseq_ext.evaluation import evaluate_faithfulness
    except ImportError:
        raise DatasetRunError(
            "faithfulness evaluation is not available in this installation (inseq_ext.evaluation has no "
            "evaluate_faithfulness); summarize without --evaluate"
        ) from None
    indices = attributions.examples["example_index"].tolist()[:examples]
    if not indices:
        return {}, 0
    if attribution_model is None:
        from inseq_ext.dataset_runs.runner import load_run_model

        command = attributions.command
        attribution_model, _ = load_run_model(command["model"]["name"], command["method"], None, None)
    output = attributions.inseq_output(*indices)
    result = evaluate_faithfulness(attribution_model, output, **options)
    means: dict[str, float] = {}
    for name, metric in result.metrics.items():
        means[name] = float(metric.mean)
        random = getattr(metric, "random", None)
        if random is not None and getattr(random, "mean", None) is not None:
            means[f"{name} (random)"] = float(random.mean)
    return means, len(indices)


def summarize_dataset_attributions(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    top: int = 10,
    evaluate: int = 0,
    attribution_model: Any | None = None,
    evaluation_options: dict[str, Any] | None = None,
) -> DatasetSummary:
    """Summaries of one or more completed runs (e.g. one per method on the same data).

    Args:
        paths: Run folders.
        top: Most attributed tokens to list per run.
        evaluate: Evaluate the faithfulness of the first ``evaluate`` examples of each run (0: no evaluation).
        attribution_model: The model to evaluate with (default: each run's model, loaded from its description).
        evaluation_options: Options of ``evaluate_faithfulness``.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if top < 0 or evaluate < 0:
        raise DatasetRunError("top and evaluate must be at least 0")
    summary = DatasetSummary()
    for path in paths:
        attributions = load_dataset_attributions(path)
        run = run_statistics(attributions, top)
        if evaluate:
            run.faithfulness, run.faithfulness_examples = faithfulness_means(
                attributions, evaluate, attribution_model, **(evaluation_options or {})
            )
        summary.runs.append(run)
    return summary


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def format_summary(summary: DatasetSummary) -> str:
    """The plain-text report of :func:`summarize_dataset_attributions`."""
    lines: list[str] = []
    for run in summary.runs:
        lines.append(f"{run.path}: {run.method} on {run.model}")
        lines.append(
            f"  examples: {run.examples} attributed, {run.bad_rows} bad rows; generated tokens: "
            f"{run.generated_tokens} ({run.mean_generated_tokens:.1f} per example); prompt: "
            f"{run.mean_prompt_tokens:.1f} tokens per example"
        )
        lines.append(
            f"  attribution mass on the prompt: {_percent(run.prompt_share)} (from the 2nd generated token on: "
            f"{_percent(run.prompt_share_after_first)}); on the generated prefix: "
            f"{_percent(None if math.isnan(run.prompt_share) else 1 - run.prompt_share)}"
        )
        if run.prompt_share_by_step:
            steps = "  ".join(f"{i + 1}: {_percent(v)}" for i, v in enumerate(run.prompt_share_by_step))
            lines.append(f"  on the prompt by generated token: {steps}")
        for name, mean in run.step_score_means.items():
            lines.append(f"  mean {name} of the generated tokens: {mean:.4g}")
        if run.faithfulness is not None:
            metrics = ", ".join(f"{name} {value:.4g}" for name, value in run.faithfulness.items())
            lines.append(f"  faithfulness ({run.faithfulness_examples} examples): {metrics}")
        if run.top_tokens:
            lines.append("  most attributed tokens (share of all attribution mass, occurrences, mean share, top-1):")
            width = max(len(repr(entry["text"])) for entry in run.top_tokens)
            for entry in run.top_tokens:
                lines.append(
                    f"    {repr(entry['text']).ljust(width)}  {_percent(entry['share']):>6}  "
                    f"{entry['occurrences']:>6}  {_percent(entry['mean_share']):>6}  {entry['top1']:>6}"
                )
        if run.top1_tokens:
            ranked = ", ".join(f"{entry['text']!r} {entry['top1']}" for entry in run.top1_tokens)
            lines.append(f"  most often the top-scored token (rows): {ranked}")
    if len(summary.runs) > 1:
        lines.append("")
        names = sorted({name for run in summary.runs for name in (run.faithfulness or {})})
        header = ["run", "method", "examples", "tokens", "prompt share", *names]
        table = [header] + [
            [run.path, run.method, str(run.examples), str(run.generated_tokens), _percent(run.prompt_share)]
            + [
                f"{run.faithfulness[name]:.4g}" if run.faithfulness and name in run.faithfulness else "-"
                for name in names
            ]  # fmt: skip
            for run in summary.runs
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"

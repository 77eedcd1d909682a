"""Top-1 hit rates shared by the ground-truth evaluations (language-model probes and translation alignment).

Both evaluations score a method by how often its top-scored candidate token is the known source; this module holds
what they share: the result record, the per-group summary, method-name checks, the Markdown table and a quiet
logging context for evaluation loops.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import inseq
from transformers.utils import logging as transformers_logging

RANDOM_BASELINE = "random"
# Methods that read attention weights from ``output_attentions``, which PyTorch's fused (SDPA) attention does not
# return: evaluated on an eager copy. Every other method (``rotary_attention`` and ``attention_rollout`` included,
# which rebuild the weights from queries and keys) runs on the SDPA model a user gets by default.
EAGER_ATTENTION_METHODS = frozenset({"attention"})


def attention_implementation(method: str) -> str:
    """``"eager"`` for the methods that need ``output_attentions``, ``"sdpa"`` for the others."""
    return "eager" if method in EAGER_ATTENTION_METHODS else "sdpa"


@dataclass
class GroundTruthResult:
    """Top-1 hit rates of one method on one demo model, per task and overall (probes weighted equally)."""

    model: str
    method: str
    per_task: dict[str, float]
    overall: float
    probes: int
    seconds: float
    hits: list[float] = field(default_factory=list, repr=False)


@contextmanager
def quiet_inseq_logging() -> Iterator[None]:
    """Silence inseq's per-call log lines, transformers' "Loading weights" bars and captum's notice about hooks on
    activations (printed by every DeepLift call) during an evaluation loop; the previous settings come back after."""
    inseq_logger = logging.getLogger("inseq")
    previous_level = inseq_logger.level
    progress_bars = transformers_logging.is_progress_bar_enabled()
    inseq_logger.setLevel(logging.ERROR)
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
            yield
    finally:
        inseq_logger.setLevel(previous_level)
        if progress_bars:
            transformers_logging.enable_progress_bar()


def summarize_hits(
    model: str,
    method: str,
    hits: list[float],
    groups: list[str],
    group_order: Sequence[str],
    probes: int,
    started: float,
) -> GroundTruthResult:
    """Hit rate overall and per group (task or word class; ``groups[i]`` is the group of ``hits[i]``)."""
    per_group = {
        group: sum(hit for hit, of in zip(hits, groups, strict=True) if of == group) / groups.count(group)
        for group in group_order
        if group in groups
    }
    return GroundTruthResult(
        model=model,
        method=method,
        per_task=per_group,
        overall=sum(hits) / len(hits),
        probes=probes,
        seconds=time.perf_counter() - started,
        hits=hits,
    )


def check_methods(methods: Sequence[str]) -> None:
    """A ``ValueError`` listing the valid choices when a name is neither an inseq method nor the random baseline."""
    valid = set(inseq.list_feature_attribution_methods()) | {RANDOM_BASELINE}
    unknown = [method for method in methods if method not in valid]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; choose from: {', '.join(sorted(valid))}.")


def markdown_table(results: Sequence[GroundTruthResult]) -> str:
    """A Markdown table: one row per (model, method), top-1 hit rate per task and overall, in percent.

    The columns are the keys of the results' ``per_task`` in order of appearance (the tasks of the causal demo
    models, or the word classes of the translation model's alignment accuracy).
    """
    tasks = list(dict.fromkeys(task for result in results for task in result.per_task))
    header = ["model", "method", *tasks, "overall", "probes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for result in results:
        cells = [result.model, f"`{result.method}`" if result.method != RANDOM_BASELINE else "random baseline"]
        cells += [f"{100 * result.per_task[task]:.0f}%" if task in result.per_task else "" for task in tasks]
        cells += [f"**{100 * result.overall:.0f}%**", str(result.probes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""The work plan of a data-set run: length-bucketed batches grouped into shards, the same in every process.

Examples are sorted by prompt length in tokens (ties by row number) and cut into batches of ``batch_size``, so that
a batch pads its prompts little; consecutive batches are grouped into shards of about ``shard_size`` examples. A
shard is the unit of work that is written (atomically) and resumed: a killed run loses at most the shards in
progress, one per process. The plan depends only on the data, the tokenizer and the two sizes, never on the
number of processes, so every process of a distributed run computes the same plan, and each shard is computed the
same way whichever process gets it (hence a several-process run equals a one-process run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inseq_ext.dataset_runs.sources import BadRow, Example


@dataclass(frozen=True)
class Batch:
    """Examples attributed together (one ``generate`` and one ``model.attribute`` call)."""

    number: int
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Shard:
    """Consecutive batches written to one file, ``shards/shard-NNNNN.parquet``."""

    number: int
    batches: tuple[Batch, ...]

    @property
    def examples(self) -> list[Example]:
        return [example for batch in self.batches for example in batch.examples]

    @property
    def file_name(self) -> str:
        return shard_file_name(self.number)


def shard_file_name(number: int) -> str:
    return f"shard-{number:05d}.parquet"


@dataclass(frozen=True)
class Plan:
    shards: tuple[Shard, ...]
    bad_rows: tuple[BadRow, ...]
    examples: int

    def digest(self) -> str:
        """A digest of the plan (which example is in which batch and shard): equal plans, equal digests."""
        layout = [[[example.index for example in batch.examples] for batch in shard.batches] for shard in self.shards]
        return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def prompt_token_counts(tokenizer: Any, texts: Sequence[str], as_targets: bool = False) -> list[int]:
    """Token counts of ``texts`` as the model sees them (the tokenizer's special tokens included, no truncation)."""
    if not texts:
        return []
    key = "text_target" if as_targets else "text"
    encoded = tokenizer(**{key: list(texts)}, add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def make_plan(
    examples: Sequence[Example],
    prompt_lengths: Sequence[int],
    batch_size: int,
    shard_size: int,
    bad_rows: Sequence[BadRow] = (),
) -> Plan:
    """Sort ``examples`` by prompt length, cut them into batches, group the batches into shards.

    Args:
        examples: The examples to attribute (rows found too long or otherwise bad are not among them).
        prompt_lengths: Prompt length in tokens of each example (same order).
        batch_size: Examples per batch.
        shard_size: Examples per shard (rounded up to whole batches; at least one batch).
        bad_rows: Rows that will not be attributed (kept with the plan for the errors file).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    order = sorted(range(len(examples)), key=lambda i: (prompt_lengths[i], examples[i].index))
    batches = [
        Batch(number, tuple(examples[i] for i in order[start : start + batch_size]))
        for number, start in enumerate(range(0, len(order), batch_size))
    ]
    batches_per_shard = max(1, -(-shard_size // batch_size))
    shards = tuple(
        Shard(number, tuple(batches[start : start + batches_per_shard]))
        for number, start in enumerate(range(0, len(batches), batches_per_shard))
    )
    return Plan(shards, tuple(sorted(bad_rows, key=lambda row: row.index)), len(examples))

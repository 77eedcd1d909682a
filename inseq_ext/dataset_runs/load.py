"""``load_dataset_attributions``: a run's output folder as tables, and any example back as an inseq output."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from inseq.data import FeatureAttributionOutput

from inseq_ext.dataset_runs.errors import DatasetRunError
from inseq_ext.dataset_runs.rows import rebuild_sequence
from inseq_ext.dataset_runs.store import ERRORS_FILE, MANIFEST_FILE, RunFolder, read_json

#: Columns of :attr:`DatasetAttributions.examples`.
EXAMPLE_COLUMNS = (
    "example_index",
    "example_id",
    "prompt",
    "generated_text",
    "steps",
    "attr_pos_start",
    "attr_pos_end",
)


class DatasetAttributions:
    """The rows, examples and bad rows of a data-set run (see :func:`load_dataset_attributions`).

    Attributes:
        path: The run's folder.
        command: The run's description (``run.json``): data digest, model, method and options.
        manifest: The completed run's manifest (``None`` for a partial load of an unfinished run).
        table: One row per (example, generated token), sorted by example and step, as a ``pyarrow.Table``:
            ``example_index``, ``example_id``, ``step``, ``position``, ``token``, ``token_id``,
            ``n_source_tokens``, ``n_prompt_tokens``, ``attributed_tokens``, ``attributed_token_ids``,
            ``attribution`` (inseq's default aggregation, one score per attributed token), one column per step
            score (e.g. ``probability``) and, when kept, ``attribution_raw``.
    """

    def __init__(self, path: Path, command: dict[str, Any], manifest: dict[str, Any] | None, shards: list[int]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self.command = command
        self.manifest = manifest
        folder = RunFolder(path)
        tables, self._records, self._errors, self.info = [], {}, [], {}
        for number in sorted(shards):
            shard_file = folder.shard_path(number)
            table = pq.read_table(shard_file)
            metadata = folder.shard_metadata(number)
            tables.append(table.replace_schema_metadata(None))
            for record in metadata["records"]:
                self._records[record["example_index"]] = record
            self._errors += metadata["errors"]
            if metadata["info"] and not self.info:
                self.info = metadata["info"]
        if tables:
            table = pa.concat_tables(tables, promote_options="default")
            self.table = table.sort_by([("example_index", "ascending"), ("step", "ascending")])
        else:
            self.table = pa.table({})
        self._ids = {record["example_id"]: index for index, record in self._records.items()}
        self._row_ranges: dict[int, tuple[int, int]] | None = None

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (list columns hold numpy arrays)."""
        return self.table.to_pandas()

    @cached_property
    def examples(self):
        """One row per attributed example: ``example_index``, ``example_id``, ``prompt``, ``generated_text``,
        ``steps`` (generated tokens), ``attr_pos_start``, ``attr_pos_end``; a ``pandas.DataFrame``."""
        import pandas as pd

        columns = list(EXAMPLE_COLUMNS)
        records = [self._records[index] for index in sorted(self._records)]
        return pd.DataFrame([{name: record[name] for name in columns} for record in records], columns=columns)

    @cached_property
    def errors(self):
        """The bad rows (``example_index``, ``example_id``, ``reason``) as a ``pandas.DataFrame``."""
        import pandas as pd

        if self.complete:
            errors_file = self.path / ERRORS_FILE
            text = errors_file.read_text(encoding="utf-8") if errors_file.exists() else ""
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            plan = RunFolder(self.path).plan()
            records = sorted(plan["bad_rows"] + self._errors, key=lambda record: record["example_index"])
        return pd.DataFrame(records, columns=["example_index", "example_id", "reason"])

    def example_index(self, example: str | int) -> int:
        """The row number of ``example``: an id (``str``) or a row number (``int``)."""
        if isinstance(example, str):
            if example not in self._ids:
                shown = ", ".join(repr(key) for key in list(self._ids)[:5])
                raise DatasetRunError(f"no attributed example with id {example!r}; ids are e.g. {shown}")
            return self._ids[example]
        if example not in self._records:
            bad = next((error["reason"] for error in self.errors.to_dict("records")
                        if error["example_index"] == example), None)  # fmt: skip
            why = f" (a bad row: {bad})" if bad else ""
            raise DatasetRunError(f"row {example} is not among the attributed examples{why}")
        return example

    def _rows_of(self, index: int) -> list[dict[str, Any]]:
        if self._row_ranges is None:  # rows are sorted by example: one pass finds each example's slice
            indices = self.table.column("example_index").to_numpy()
            self._row_ranges = {}
            start = 0
            for position in range(1, len(indices) + 1):
                if position == len(indices) or indices[position] != indices[start]:
                    self._row_ranges[int(indices[start])] = (start, position)
                    start = position
        start, stop = self._row_ranges.get(index, (0, 0))
        return self.table.slice(start, stop - start).to_pylist()

    def inseq_output(self, *examples: str | int) -> FeatureAttributionOutput:
        """The inseq output of one or more examples (ids or row numbers), as the method produced it.

        ``show()``, ``aggregate()``, the explorer (:func:`inseq_ext.write_explorer`) and the evaluation take it
        as they take the output of ``model.attribute``. With ``attribution_raw`` kept the scores before
        aggregation are rebuilt in the method's own output class; otherwise inseq's aggregated map is rebuilt.
        """
        if not examples:
            raise DatasetRunError("name at least one example (an id or a row number)")
        sequences, prompts, texts = [], [], []
        for example in examples:
            index = self.example_index(example)
            record = self._records[index]
            sequences.append(
                rebuild_sequence(
                    record,
                    self._rows_of(index),
                    self.info.get("output_class", ""),
                    self.info.get("num_dimensions", 0),
                    self.info.get("raw_dims", []),
                    self.info.get("step_scores", []),
                    self.info.get("has_source", False),
                    self.info.get("has_target", True),
                )
            )
            prompts.append(record["prompt"])
            texts.append(record["generated_text"])
        command = self.command
        info = {
            "attribution_method": command["method"],
            "model_name": command["model"]["name"],
            "model_class": command["model"]["class"],
            "step_scores": list(command["step_scores"]),
            "attributed_fn": command.get("attributed_fn"),
            "attribution_args": dict(command.get("method_args", {})),
            "attribute_target": command.get("attribute_target", False),
            "input_texts": prompts,
            "generated_texts": texts,
            "constrained_decoding": True,
            "attr_pos_start": sequences[0].attr_pos_start,
            "attr_pos_end": sequences[0].attr_pos_end,
            "dataset_run": str(self.path),
            "example_ids": [self._records[self.example_index(example)]["example_id"] for example in examples],
        }
        return FeatureAttributionOutput(sequence_attributions=sequences, step_attributions=None, info=info)

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        return (
            f"DatasetAttributions({str(self.path)!r}, {state}: {len(self._records)} examples, {len(self)} rows, "
            f"method {self.command.get('method')!r})"
        )


def load_dataset_attributions(path: str | os.PathLike, partial: bool = False) -> DatasetAttributions:
    """Read the output folder of :func:`~inseq_ext.dataset_runs.attribute_dataset`.

    Args:
        path: The run's output folder.
        partial: Read an unfinished run's completed shards instead of refusing it (e.g. to look at the first results
            while the run goes on).

    Returns:
        A :class:`DatasetAttributions`: ``.table`` (pyarrow) / ``.to_pandas()`` rows, ``.examples``, ``.errors``,
        and ``.inseq_output(example)`` for ``show()``, the explorer and the evaluation.

    Raises:
        DatasetRunError: not a run folder, or an unfinished run without ``partial=True``.
    """
    folder = RunFolder(path)
    command = folder.command()
    manifest_file = folder.path / MANIFEST_FILE
    if manifest_file.exists():
        manifest = read_json(manifest_file)
        shards = [int(Path(entry["file"]).stem.split("-")[1]) for entry in manifest["shards"]]
        return DatasetAttributions(folder.path, command, manifest, shards)
    planned = [shard["number"] for shard in folder.plan()["shards"]]
    done = sorted(folder.completed_shards() & set(planned))
    if not partial:
        raise DatasetRunError(
            f"{folder.path} is an unfinished run ({len(done)} of {len(planned)} shards written): rerun the same "
            "command to finish it, or pass partial=True to read what is there"
        )
    return DatasetAttributions(folder.path, command, None, done)

"""Reading a data set of prompts: JSON Lines, CSV/TSV, Parquet, or a local Hugging Face ``datasets`` folder.

A data set is read whole into :class:`Example` records (one per good row) and :class:`BadRow` records (one per row
that cannot be attributed, with the reason), in the data set's own row order. A problem with the data set as a
whole (no such file, an unknown format, a column that no row has) raises :class:`DatasetSourceError` at once; a
problem with one row (not valid JSON or UTF-8, a missing or empty prompt, a value that is not text, a duplicate id)
makes that row a :class:`BadRow` and the rest of the data set goes on.

Row numbers (``index``) count data rows from 0: the lines of a JSON Lines file that are not blank, the records of
a CSV file after its header, the rows of a Parquet file or ``datasets`` folder. ``limit`` keeps the first rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inseq_ext.dataset_runs.errors import DatasetRunError

#: File suffixes read as each format (a folder is read with ``datasets.load_from_disk``).
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class DatasetSourceError(DatasetRunError):
    """The data set as a whole cannot be read as asked (file, format, split or column): nothing is attributed."""


@dataclass(frozen=True)
class Example:
    """One row to attribute.

    Attributes:
        index: Row number in the data set (from 0).
        id: The row's id: the ``id_column`` value as text, or the row number as text.
        prompt: The text to continue (the source of the attribution).
        target: The forced continuation (``target_column``), or ``None`` to generate one.
    """

    index: int
    id: str
    prompt: str
    target: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A row that is not attributed, and why (written to the run's errors file)."""

    index: int
    id: str | None
    reason: str

    def as_record(self) -> dict[str, Any]:
        return {"example_index": self.index, "example_id": self.id, "reason": self.reason}


@dataclass(frozen=True)
class DataSpec:
    """Where the prompts are and which columns hold what.

    Attributes:
        path: JSON Lines (``.jsonl``/``.ndjson``/``.json``), CSV (``.csv``), TSV (``.tsv``), Parquet
            (``.parquet``) file, or a folder written by ``datasets.Dataset.save_to_disk``.
        prompt_column: Column of the prompts.
        target_column: Column of forced continuations (optional); for decoder-only models the text that follows
            the prompt (appended to it as is; a value that already starts with the prompt is taken as the full text).
        id_column: Column of example ids (optional; default: the row number).
        limit: Read only the first ``limit`` rows.
        split: Split of a ``datasets`` folder holding several (``DatasetDict``); not needed when there is one.
    """

    path: str
    prompt_column: str = "prompt"
    target_column: str | None = None
    id_column: str | None = None
    limit: int | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise DatasetSourceError(f"limit must be at least 1, got {self.limit}")


@dataclass(frozen=True)
class DataSet:
    """What :func:`read_data` found: the good rows, the bad ones, and a digest of the content."""

    examples: list[Example]
    bad_rows: list[BadRow]
    format: str
    rows: int
    sha256: str


# ----------------------------------------------------------------------------------------------------------------
# Raw rows of each format: (row number, mapping of column -> value, or the reason the row is unreadable)
# ----------------------------------------------------------------------------------------------------------------

RawRow = tuple[int, dict[str, Any] | None, str | None]


def _data_format(path: Path) -> str:
    if not path.exists():
        raise DatasetSourceError(f"data set {path} not found")
    if path.is_dir():
        if not any((path / name).exists() for name in ("state.json", "dataset_dict.json", "dataset_info.json")):
            raise DatasetSourceError(
                f"data set {path} is a folder but not a Hugging Face datasets folder (one written by "
                "Dataset.save_to_disk); give a .jsonl, .csv, .tsv or .parquet file, or such a folder"
            )
        return "datasets"
    data_format = FORMATS.get(path.suffix.lower())
    if data_format is None:
        raise DatasetSourceError(
            f"data set {path}: unknown format {path.suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(sorted(FORMATS))} or a Hugging Face datasets folder"
        )
    return data_format


def _jsonl_rows(path: Path) -> tuple[Iterator[RawRow], None]:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):  # a .json file holding one array of objects
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetSourceError(f"data set {path}: not valid JSON ({error})") from None

        def array_rows() -> Iterator[RawRow]:
            for index, record in enumerate(records):
                if isinstance(record, dict):
                    yield index, record, None
                else:
                    yield index, None, f"item {index + 1} is not a JSON object"

        return array_rows(), None

    def line_rows() -> Iterator[RawRow]:
        index = 0
        with path.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield index, None, f"line {line_number}: not valid UTF-8"
                except json.JSONDecodeError as error:
                    yield index, None, f"line {line_number}: not valid JSON ({error.msg})"
                else:
                    if isinstance(record, dict):
                        yield index, record, None
                    else:
                        yield index, None, f"line {line_number}: not a JSON object"
                index += 1

    return line_rows(), None


def _csv_rows(path: Path, delimiter: str) -> tuple[Iterator[RawRow], list[str]]:
    # surrogateescape: undecodable bytes survive reading and make only their own row bad.
    handle = path.open("r", encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise DatasetSourceError(f"data set {path} is empty (no header line)") from None
    except csv.Error as error:
        handle.close()
        raise DatasetSourceError(f"data set {path}: unreadable header ({error})") from None

    def rows() -> Iterator[RawRow]:
        index = 0
        with handle:
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield index, None, f"line {reader.line_num}: unreadable CSV ({error})"
                    index += 1
                    continue
                if not fields:
                    continue
                if len(fields) != len(header):
                    yield index, None, f"line {reader.line_num}: {len(fields)} fields, the header has {len(header)}"
                elif any(_has_surrogates(field) for field in fields):
                    yield index, None, f"line {reader.line_num}: not valid UTF-8"
                else:
                    yield index, dict(zip(header, fields, strict=True)), None
                index += 1

    return rows(), header


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= character <= "\udcff" for character in text)


def _table_rows(path: Path, data_format: str, spec: DataSpec) -> tuple[Iterator[RawRow], list[str]]:
    """Rows of a Parquet file or a ``datasets`` folder (column checks before any row is read)."""
    wanted = [name for name in (spec.prompt_column, spec.target_column, spec.id_column) if name is not None]
    if data_format == "parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # pyarrow raises its own ArrowInvalid/OSError types
            raise DatasetSourceError(f"data set {path}: not a readable Parquet file ({error})") from None
        columns = list(parquet.schema_arrow.names)
        _check_columns(path, columns, spec)
        table = parquet.read(columns=list(dict.fromkeys(wanted)))
    else:
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as error:  # datasets raises FileNotFoundError/ValueError/... for broken folders
            raise DatasetSourceError(f"data set {path}: not a readable datasets folder ({error})") from None
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            if spec.split is None and len(splits) == 1:
                loaded = loaded[splits[0]]
            elif spec.split not in loaded:
                given = "no split given" if spec.split is None else f"no split {spec.split!r}"
                raise DatasetSourceError(
                    f"data set {path} has the splits {', '.join(splits)} ({given}); choose one with --split"
                )
            else:
                loaded = loaded[spec.split]
        columns = list(loaded.column_names)
        _check_columns(path, columns, spec)
        table = loaded.select_columns(list(dict.fromkeys(wanted))).data.table
    if spec.limit is not None:
        table = table.slice(0, spec.limit)

    def rows() -> Iterator[RawRow]:
        for index, record in enumerate(table.to_pylist()):
            yield index, record, None

    return rows(), columns


def _check_columns(path: Path, columns: list[str], spec: DataSpec) -> None:
    for option, name in (("prompt", spec.prompt_column), ("target", spec.target_column), ("id", spec.id_column)):
        if name is not None and name not in columns:
            raise DatasetSourceError(
                f"data set {path} has no {option} column {name!r}; its columns: {', '.join(map(str, columns))}"
            )


# ----------------------------------------------------------------------------------------------------------------
# From raw rows to examples
# ----------------------------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A cell as text: strings as they are; ``None``/NaN (a missing value) as ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else None


def _id_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)


def _row_to_example(index: int, record: dict[str, Any], spec: DataSpec) -> Example | BadRow:
    example_id = str(index)
    if spec.id_column is not None:
        raw_id = record.get(spec.id_column)
        example_id = _id_text(raw_id)
        if example_id is None or not example_id.strip():
            return BadRow(index, None, f"missing or unusable id in column {spec.id_column!r}: {raw_id!r}")
    if spec.prompt_column not in record:
        return BadRow(index, example_id, f"no {spec.prompt_column!r} field")
    prompt = _text(record[spec.prompt_column])
    if prompt is None:
        value = record[spec.prompt_column]
        kind = "missing" if value is None else f"not text ({type(value).__name__})"
        return BadRow(index, example_id, f"prompt is {kind}")
    if not prompt.strip():
        return BadRow(index, example_id, "empty prompt")
    target = None
    if spec.target_column is not None:
        target = _text(record.get(spec.target_column))
        if target is None or not target.strip():
            return BadRow(index, example_id, f"missing or empty target in column {spec.target_column!r}")
    return Example(index, example_id, prompt, target)


def read_data(spec: DataSpec) -> DataSet:
    """Read the data set of ``spec``: good rows as examples, bad rows with their reasons.

    Raises:
        DatasetSourceError: no such file or folder, an unknown format, an unreadable file, a column that the data
            set does not have (the message lists the columns it has), or an ambiguous ``datasets`` split.
    """
    path = Path(spec.path)
    data_format = _data_format(path)
    if data_format == "jsonl":
        raw_rows, columns = _jsonl_rows(path)
    elif data_format in ("csv", "tsv"):
        raw_rows, columns = _csv_rows(path, "," if data_format == "csv" else "\t")
        _check_columns(path, columns, spec)
    else:
        raw_rows, columns = _table_rows(path, data_format, spec)

    examples: list[Example] = []
    bad_rows: list[BadRow] = []
    seen_ids: dict[str, int] = {}
    seen_columns: set[str] = set()
    rows = 0
    digest = hashlib.sha256()
    for index, record, problem in raw_rows:
        if spec.limit is not None and index >= spec.limit:
            break
        rows += 1
        if record is not None:
            seen_columns.update(map(str, record))
            outcome = _row_to_example(index, record, spec)
        else:
            outcome = BadRow(index, None, problem or "unreadable row")
        if isinstance(outcome, Example) and outcome.id in seen_ids:
            first = seen_ids[outcome.id]
            outcome = BadRow(index, outcome.id, f"duplicate id {outcome.id!r} (first seen in row {first})")
        if isinstance(outcome, Example):
            seen_ids[outcome.id] = index
            examples.append(outcome)
            digest.update(json.dumps(["ok", index, outcome.id, outcome.prompt, outcome.target]).encode())
        else:
            bad_rows.append(outcome)
            digest.update(json.dumps(["bad", index, outcome.id, outcome.reason]).encode())
    if data_format == "jsonl":
        # JSON Lines has no header: a column name is wrong when no readable row has it.
        named = (("prompt", spec.prompt_column), ("target", spec.target_column), ("id", spec.id_column))
        missing = [(option, name) for option, name in named if name is not None and name not in seen_columns]
        if missing and seen_columns:
            option, name = missing[0]
            raise DatasetSourceError(
                f"data set {path} has no {option} column {name!r}; its columns: {', '.join(sorted(seen_columns))}"
            )
    if rows == 0:
        raise DatasetSourceError(f"data set {path} has no rows")
    return DataSet(examples, bad_rows, data_format, rows, digest.hexdigest())

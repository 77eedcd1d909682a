"""Reading data sets for data-set runs: every format gives the same examples; bad rows and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inseq_ext.dataset_runs.plan import make_plan
from inseq_ext.dataset_runs.sources import DatasetSourceError, DataSpec, Example, read_data

ROWS = [
    {"id": "a", "prompt": "The capital of France is", "answer": " Paris."},
    {"id": "b", "prompt": "Hello ladies and", "answer": " gentlemen."},
    {"id": "c", "prompt": "", "answer": " nothing"},
    {"id": "d", "prompt": "The movie was", "answer": " good."},
]
EXPECTED = [
    Example(0, "a", "The capital of France is", " Paris."),
    Example(1, "b", "Hello ladies and", " gentlemen."),
    Example(3, "d", "The movie was", " good."),
]


def spec(path: Path, **kwargs) -> DataSpec:
    return DataSpec(str(path), target_column="answer", id_column="id", **kwargs)


def write_format(folder: Path, kind: str) -> Path:
    if kind == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS) + "\n", encoding="utf-8")
    elif kind == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif kind in ("csv", "tsv"):
        import csv

        path = folder / f"data.{kind}"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["id", "prompt", "answer"], delimiter="," if kind == "csv" else "\t")
            writer.writeheader()
            writer.writerows(ROWS)
    elif kind == "parquet":
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        import datasets

        path = folder / "hf"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "parquet", "datasets"])
def test_every_format_gives_the_same_examples(kind, tmp_path):
    data = read_data(spec(write_format(tmp_path, kind)))
    assert data.examples == EXPECTED
    assert [(row.index, row.id, row.reason) for row in data.bad_rows] == [(2, "c", "empty prompt")]
    assert data.rows == 4
    assert data.sha256 == read_data(spec(write_format(tmp_path, "jsonl"))).sha256  # content, not format
    assert [example.index for example in read_data(spec(write_format(tmp_path, kind), limit=2)).examples] == [0, 1]


def test_datasets_folder_with_splits(tmp_path):
    import datasets

    path = tmp_path / "hf"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])}
    ).save_to_disk(str(path))
    with pytest.raises(DatasetSourceError, match=r"has the splits train, test \(no split given\); choose one"):
        read_data(spec(path))
    assert len(read_data(spec(path, split="test")).examples) == 2


def test_the_package_does_not_shadow_hugging_face_datasets():
    import datasets

    import inseq_ext.dataset_runs.sources  # noqa: F401

    assert hasattr(datasets, "load_from_disk") and "site-packages" in datasets.__file__


def test_bad_rows_of_each_kind(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"id": 1, "prompt": "Fine"}),
        "[1, 2]",
        "{broken",
        json.dumps({"id": 2, "prompt": None}),
        json.dumps({"id": 3, "prompt": ["a list"]}),
        json.dumps({"id": 1, "prompt": "Same id"}),
        json.dumps({"prompt": "No id"}),
        json.dumps({"id": 4, "text": "No prompt field"}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": 5, "prompt": "\xff"}\n')
    data = read_data(DataSpec(str(path), id_column="id"))
    assert [example.id for example in data.examples] == ["1"]
    assert [(row.index, row.reason) for row in data.bad_rows] == [
        (1, "line 2: not a JSON object"),
        (2, "line 3: not valid JSON (Expecting property name enclosed in double quotes)"),
        (3, "prompt is missing"),
        (4, "prompt is not text (list)"),
        (5, "duplicate id '1' (first seen in row 0)"),
        (6, "missing or unusable id in column 'id': None"),
        (7, "no 'prompt' field"),
        (8, "line 9: not valid UTF-8"),
    ]


def test_csv_rows_with_the_wrong_number_of_fields(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b'prompt,id\nHello,1\n"one, two",2,extra\nonly\nBye,4\n\xff\xfe,5\n')
    data = read_data(DataSpec(str(path)))
    assert [example.prompt for example in data.examples] == ["Hello", "Bye"]
    assert [row.reason for row in data.bad_rows] == [
        "line 3: 3 fields, the header has 2",
        "line 4: 1 fields, the header has 2",
        "line 6: not valid UTF-8",
    ]


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("missing.jsonl", None, {}, "missing.jsonl not found"),
        ("data.txt", "hello", {}, "unknown format '.txt'"),
        ("data.csv", "text,id\nhi,1\n", {}, "has no prompt column 'prompt'; its columns: text, id"),
        ("data.jsonl", '{"text": "hi"}\n', {}, "has no prompt column 'prompt'; its columns: text"),
        ("data.jsonl", '{"prompt": "hi"}\n', {"id_column": "key"}, "has no id column 'key'; its columns: prompt"),
        ("data.jsonl", "\n\n", {}, "has no rows"),
        ("data.csv", "", {}, "is empty (no header line)"),
        ("data.parquet", "not parquet", {}, "not a readable Parquet file"),
        ("folder", "", {}, "is a folder but not a Hugging Face datasets folder"),
    ],
)
def test_bad_files_and_columns_fail_at_once(name, content, options, message, tmp_path):
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_data(DataSpec(str(path), **options))


def test_plan_sorts_by_length_and_groups_batches_into_shards():
    examples = [Example(i, str(i), "x" * length) for i, length in enumerate([5, 1, 3, 3, 9, 2, 7])]
    plan = make_plan(examples, [len(example.prompt) for example in examples], batch_size=2, shard_size=3)
    batches = [[example.index for example in batch.examples] for shard in plan.shards for batch in shard.batches]
    assert batches == [[1, 5], [2, 3], [0, 6], [4]]
    assert [[batch.number for batch in shard.batches] for shard in plan.shards] == [[0, 1], [2, 3]]
    assert plan.digest() == make_plan(examples, [len(e.prompt) for e in examples], 2, 3).digest()
    assert plan.digest() != make_plan(examples, [len(e.prompt) for e in examples], 3, 3).digest()

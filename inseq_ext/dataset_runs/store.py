"""The output folder of a data-set run, and how it is written so that nothing is lost or mixed.

Layout of ``DIR``::

    run.json            the command that defines the run (data digest, model, method and options, sizes)
    plan.json           which examples each shard holds, and the rows found bad before attributing
    shards/shard-NNNNN.parquet
                        one per shard: the rows of its examples; its Parquet metadata holds the shard's example
                        records (tokens, positions, texts) and the rows that failed while attributing
    manifest.json       written last, when every shard is there: the completed shards and the totals
    errors.jsonl        every bad row with its reason, by row number (written with the manifest)

Every file is written to a temporary name in its folder, flushed to disk and renamed (``os.replace``, atomic on
POSIX), so a shard file exists whole or not at all: a run killed at any moment, SIGKILL included, leaves complete
shards and at most some temporary files, which the next run removes. A shard's existence is its completion record,
hence resuming needs no separate journal, and processes never write the same file (each shard belongs to one).
The manifest lists the completed shards once the run is complete.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inseq_ext.dataset_runs.errors import DatasetRunError
from inseq_ext.dataset_runs.plan import Plan, shard_file_name
from inseq_ext.files import atomic_output

FORMAT = "inseq_ext.dataset_attributions"
FORMAT_VERSION = 1
RUN_FILE, PLAN_FILE, MANIFEST_FILE, ERRORS_FILE, SHARDS_DIR = (
    "run.json",
    "plan.json",
    "manifest.json",
    "errors.jsonl",
    "shards",
)
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.parquet$")
#: Parquet key-value metadata keys of a shard.
EXAMPLES_KEY, ERRORS_KEY, INFO_KEY = b"inseq_ext.examples", b"inseq_ext.errors", b"inseq_ext.info"


class RunFolderError(DatasetRunError):
    """The output folder cannot be used for this command (another run's folder, not a run folder, incomplete)."""


@contextmanager
def durable_output(path: Path):
    """:func:`~inseq_ext.files.atomic_output` with the data flushed to disk before the rename."""
    with atomic_output(path) as temporary:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())


def write_json(path: Path, payload: Any) -> None:
    with durable_output(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _differences(now: Any, before: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like command descriptions."""
    if isinstance(now, dict) and isinstance(before, dict):
        found = []
        for key in sorted(set(now) | set(before)):
            found += _differences(now.get(key), before.get(key), f"{prefix}{key}.")
        return found
    if now != before:
        return [f"{prefix.rstrip('.')}: {json.dumps(now)} now, {json.dumps(before)} in the folder"]
    return []


class RunFolder:
    """A data-set run's output folder (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.shards_dir = self.path / SHARDS_DIR

    # -- the command --------------------------------------------------------------------------------------------

    def prepare(self, command: dict[str, Any], plan: Plan, plan_payload: dict[str, Any]) -> bool:
        """Create the folder for ``command``, or check that it holds a run of the same command.

        Returns whether earlier work is resumed. A folder holding a run of another command is refused (so results of
        two commands never mix) unless that run completed no shard yet, in which case its settings are replaced.
        Leftover temporary files of a killed run are removed. Call from one process only.

        Raises:
            RunFolderError: naming each difference, or when the folder is not a run folder.
        """
        run_file = self.path / RUN_FILE
        resumed = False
        if run_file.exists():
            before = read_json(run_file).get("command", {})
            differences = _differences(command, before)
            if differences and self.completed_shards():
                raise RunFolderError(
                    f"{self.path} holds a run of a different command ({'; '.join(differences)}). Rerun with the "
                    "same data and options to resume it, or choose another output folder (or delete this one to "
                    "start over)"
                )
            resumed = not differences
        elif not self._only_own_leftovers():
            raise RunFolderError(
                f"{self.path} exists and is not a data-set run folder (no {RUN_FILE}); choose a new or empty folder"
            )
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.remove_temporary_files()
        if not resumed:
            for stale in (MANIFEST_FILE, ERRORS_FILE):
                (self.path / stale).unlink(missing_ok=True)
        if not resumed or not (self.path / PLAN_FILE).exists():
            write_json(self.path / PLAN_FILE, plan_payload)
        if not resumed:  # last: a folder with run.json has its plan
            write_json(run_file, {"format": FORMAT, "format_version": FORMAT_VERSION, "command": command})
        return resumed

    def _only_own_leftovers(self) -> bool:
        """Whether the folder (without ``run.json``) is missing, empty, or holds only what a run killed while
        preparing it leaves: ``plan.json``, an empty ``shards`` folder, temporary files."""
        if not self.path.exists():
            return True
        for entry in self.path.iterdir():
            if entry.name.startswith(".") or entry.name == PLAN_FILE:
                continue
            if entry.name == SHARDS_DIR and entry.is_dir() and not self.completed_shards():
                continue
            return False
        return True

    def command(self) -> dict[str, Any]:
        run_file = self.path / RUN_FILE
        if not run_file.exists():
            raise RunFolderError(f"{self.path} is not a data-set run folder (no {RUN_FILE})")
        payload = read_json(run_file)
        if payload.get("format") != FORMAT:
            raise RunFolderError(f"{run_file} is not a run description of inseq_ext")
        return payload["command"]

    def plan(self) -> dict[str, Any]:
        return read_json(self.path / PLAN_FILE)

    # -- shards -------------------------------------------------------------------------------------------------

    def remove_temporary_files(self) -> None:
        """Remove what killed writers left: temporary files start with a dot (see ``atomic_output``)."""
        for folder in (self.path, self.shards_dir):
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.name.startswith(".") and path.is_file():
                        path.unlink(missing_ok=True)

    def completed_shards(self) -> set[int]:
        if not self.shards_dir.is_dir():
            return set()
        return {
            int(match.group(1)) for match in map(SHARD_PATTERN.match, os.listdir(self.shards_dir)) if match is not None
        }

    def shard_path(self, number: int) -> Path:
        return self.shards_dir / shard_file_name(number)

    def write_shard(
        self,
        number: int,
        rows: list[dict[str, Any]],
        columns: Sequence[str],
        step_score_names: Sequence[str],
        records: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        info: dict[str, Any],
    ) -> None:
        """Write one shard atomically: its rows as a Parquet table, records/errors/info as metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=row_schema(columns, step_score_names))
        metadata = {
            EXAMPLES_KEY: json.dumps(records).encode(),
            ERRORS_KEY: json.dumps(errors).encode(),
            INFO_KEY: json.dumps(info, sort_keys=True).encode(),
        }
        table = table.replace_schema_metadata(metadata)
        with durable_output(self.shard_path(number)) as temporary:
            pq.write_table(table, temporary, compression="zstd")

    def shard_metadata(self, number: int) -> dict[str, Any]:
        """The records, errors and info of a completed shard (its Parquet footer only, not its rows)."""
        import pyarrow.parquet as pq

        metadata = pq.read_schema(self.shard_path(number)).metadata or {}
        return {
            "records": json.loads(metadata.get(EXAMPLES_KEY, b"[]")),
            "errors": json.loads(metadata.get(ERRORS_KEY, b"[]")),
            "info": json.loads(metadata.get(INFO_KEY, b"{}")),
        }

    # -- completion ---------------------------------------------------------------------------------------------

    def is_complete(self) -> bool:
        return (self.path / MANIFEST_FILE).exists()

    def finish(self, plan_payload: dict[str, Any]) -> dict[str, Any]:
        """Write ``errors.jsonl`` and then ``manifest.json`` once every shard of the plan exists; return the manifest.

        Raises:
            RunFolderError: when a shard of the plan is missing.
        """
        shards = plan_payload["shards"]
        done = self.completed_shards()
        missing = [shard["number"] for shard in shards if shard["number"] not in done]
        if missing:
            raise RunFolderError(f"{self.path}: {len(missing)} of {len(shards)} shards are not written yet")
        errors = list(plan_payload["bad_rows"])
        entries, info = [], None
        for shard in shards:
            metadata = self.shard_metadata(shard["number"])
            errors += metadata["errors"]
            if metadata["info"] and info is None:
                info = metadata["info"]
            entries.append(
                {
                    "file": f"{SHARDS_DIR}/{shard_file_name(shard['number'])}",
                    "examples": len(metadata["records"]),
                    "rows": sum(record["steps"] for record in metadata["records"]),
                    "errors": len(metadata["errors"]),
                }
            )
        errors.sort(key=lambda error: error["example_index"])
        write_jsonl(self.path / ERRORS_FILE, errors)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": True,
            "examples": sum(entry["examples"] for entry in entries),
            "rows": sum(entry["rows"] for entry in entries),
            "bad_rows": len(errors),
            "data_rows": plan_payload["data_rows"],
            "output": info or {},
            "shards": entries,
        }
        write_json(self.path / MANIFEST_FILE, manifest)
        return manifest


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with durable_output(path) as temporary:
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def row_schema(columns: Sequence[str], step_score_names: Sequence[str]):
    """The Arrow schema of the rows: fixed columns, one float column per step score, then ``attribution_raw``."""
    import pyarrow as pa

    types = {
        "example_index": pa.int64(),
        "example_id": pa.string(),
        "step": pa.int32(),
        "position": pa.int32(),
        "token": pa.string(),
        "token_id": pa.int64(),
        "n_source_tokens": pa.int32(),
        "n_prompt_tokens": pa.int32(),
        "attributed_tokens": pa.list_(pa.string()),
        "attributed_token_ids": pa.list_(pa.int64()),
        "attribution": pa.list_(pa.float32()),
        "attribution_raw": pa.list_(pa.float32()),
    }
    fields = [pa.field(name, types[name]) for name in columns]
    fields += [pa.field(name, pa.float32()) for name in step_score_names]
    return pa.schema(fields)

"""Bulk input and output files: JSON Lines, and Parquet through pyarrow (``rerankq[bulk]``).

Readers stream: a JSON Lines file is read line by line from a byte offset, a Parquet file row
group by row group from a row number, so a resumed run starts where the last one stopped
without reading what came before, and memory never depends on the file's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rerankq.producer.rank_many import RecordResult

Format = Literal["jsonl", "parquet"]
COLUMNS = ("id", "query", "documents")
PARQUET_BATCH_ROWS = 1024
CONVERT_CHUNK_LINES = 10_000


class BulkFileError(Exception):
    """A file rerankq cannot read or write as asked; the message says which and why."""


@dataclass(frozen=True)
class SourceRecord:
    line: int  # JSON Lines: the line number; Parquet: the row number (both from 1)
    resume_at: int  # where the record after this one starts: a byte offset, or a row count
    value: Any  # the decoded record, or the exception that decoding it raised


def format_of(path: Path) -> Format:
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "jsonl"


def count_records(path: Path, fmt: Format) -> int:
    if fmt == "parquet":
        return int(_parquet_file(path).metadata.num_rows)
    with path.open("rb") as file:
        return sum(1 for line in file if line.strip())


def read_records(path: Path, fmt: Format, resume_at: int = 0, line: int = 0) -> Iterator[SourceRecord]:
    """Records from ``resume_at`` on; ``line`` is the number of the line (row) before it."""
    if fmt == "parquet":
        return _read_parquet(path, resume_at)
    return _read_jsonl(path, resume_at, line)


def _read_jsonl(path: Path, offset: int, line: int) -> Iterator[SourceRecord]:
    with path.open("rb") as file:
        file.seek(offset)
        for raw in file:
            offset += len(raw)
            line += 1
            if raw.strip():
                yield SourceRecord(line, offset, _decode(raw))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        return e


def _read_parquet(path: Path, start_row: int) -> Iterator[SourceRecord]:
    parquet = _parquet_file(path)
    missing = [column for column in COLUMNS if column not in parquet.schema_arrow.names]
    if missing:
        raise BulkFileError(f"{path}: no column {', '.join(missing)} (a record needs {', '.join(COLUMNS)})")
    first_group, row = 0, 0
    while first_group < parquet.num_row_groups and row + parquet.metadata.row_group(first_group).num_rows <= start_row:
        row += parquet.metadata.row_group(first_group).num_rows
        first_group += 1
    groups = list(range(first_group, parquet.num_row_groups))
    for batch in parquet.iter_batches(PARQUET_BATCH_ROWS, row_groups=groups, columns=list(COLUMNS)):
        for value in batch.to_pylist():
            row += 1
            if row > start_row:
                yield SourceRecord(row, row, value)


def _parquet_file(path: Path) -> Any:
    _, pq = _pyarrow()
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise BulkFileError(f"{path}: not a readable Parquet file ({e})") from e


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise BulkFileError("Parquet needs pyarrow: pip install 'rerankq[bulk]'") from e
    return pa, pq


def output_line(result: RecordResult) -> bytes:
    """One output record: the record's id, its ranked documents (their ids where given), and the
    model version and revision that scored it."""
    ranked = [
        {"index": doc.index, "score": doc.score} | ({"id": doc.id} if doc.id is not None else {})
        for doc in result.results
    ]
    return _line({"id": result.id, "results": ranked, "model": result.model, "revision": result.revision})


def error_line(result: RecordResult, line: int) -> bytes:
    return _line({"id": result.id, "line": line, "error": result.error})


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() + b"\n"


def jsonl_to_parquet(source: Path, target: Path) -> None:
    """Rewrite a finished JSON Lines output as Parquet, a chunk of lines at a time. Ids keep
    their integer type when every one is an integer, else all become strings."""
    pa, pq = _pyarrow()
    records_int, documents_int = _all_int_ids(source)
    document = pa.struct(
        [("index", pa.int64()), ("score", pa.float64()), ("id", pa.int64() if documents_int else pa.string())]
    )
    schema = pa.schema(
        [
            ("id", pa.int64() if records_int else pa.string()),
            ("results", pa.list_(document)),
            ("model", pa.string()),
            ("revision", pa.string()),
        ]
    )
    with pq.ParquetWriter(target, schema) as writer:
        for chunk in _chunks(source):
            rows = [_typed(row, records_int, documents_int) for row in chunk]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def _all_int_ids(source: Path) -> tuple[bool, bool]:
    records_int = documents_int = True
    for chunk in _chunks(source):
        for row in chunk:
            records_int &= isinstance(row["id"], int)
            documents_int &= all(isinstance(doc.get("id", 0), int) for doc in row["results"])
    return records_int, documents_int


def _typed(row: dict[str, Any], records_int: bool, documents_int: bool) -> dict[str, Any]:
    def doc_id(value: Any) -> Any:
        return value if value is None or documents_int else str(value)

    results = [doc | {"id": doc_id(doc.get("id"))} for doc in row["results"]]
    typed_id = row["id"] if records_int else str(row["id"])
    return {"id": typed_id, "results": results, "model": row.get("model"), "revision": row.get("revision")}


def _chunks(path: Path) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    with path.open("rb") as file:
        for raw in file:
            chunk.append(json.loads(raw))
            if len(chunk) == CONVERT_CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk

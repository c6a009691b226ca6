"""Raw rows from a data file, each with where it came from: JSONL, JSON (one list), CSV, TSV and Parquet.

Rows are yielded one at a time (a JSONL, CSV or Parquet file is never read whole), as dictionaries, with a
`file:line` (or `file[index]` for a JSON list or Parquet table) that every later complaint can point at.

Two ways to read:
- `scan_rows` never stops at a bad row: it yields a `RawRow` with `problem` set and goes on, which is what
  `data check` and `data clean` need (report everything, reject the bad rows, keep the good ones).
- `read_rows` is strict: the first bad row raises a DataError naming its file:line. Training uses it, since a
  half-read training set is worse than none.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# A single training row this large is a broken export (lost newlines, a whole file on one line), not data.
MAX_ROW_BYTES = 16 * 1024 * 1024
RAW_KEEP_CHARS = 10_000  # how much of an unreadable row's text a .rejected.jsonl keeps


@dataclass
class RawRow:
    where: str  # file:line
    row: dict | None  # None when the row could not be read
    problem: str | None = None  # why not, without the location; says what to do
    raw: str | None = None  # the row's text as found, for rows that could not be read

    def error(self) -> DataError:
        return DataError(f"{self.where}: {self.problem}")


def check_exists(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Give a {', '.join(SUFFIXES)} file, or a built-in dataset name.")


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text ({e.reason} at byte {e.start} of the row). Re-encode the file as UTF-8."


def _skip_rest_of_line(f, first: bytes) -> int:
    """Read past the rest of an over-long line a megabyte at a time; returns the line's size in bytes."""
    size, chunk = len(first), first
    while not chunk.endswith(b"\n"):
        chunk = f.readline(1 << 20)
        if not chunk:
            break
        size += len(chunk)
    return size


def _jsonl_rows(path: Path, max_row_bytes: int) -> Iterator[RawRow]:
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline(max_row_bytes + 1)
            if not raw:
                return
            number += 1
            where = f"{path}:{number}"
            if len(raw) > max_row_bytes and not raw.endswith(b"\n"):
                size = _skip_rest_of_line(f, raw)
                yield RawRow(where, None, f"this row is {size / 2**20:.0f} MiB, over the {max_row_bytes // 2**20} MiB limit "
                             "for one row: the file has probably lost its line breaks. Each line must be one JSON object.",
                             raw[:RAW_KEEP_CHARS].decode("utf-8", "replace"))
                continue
            line, problem = _decode(raw)
            if problem:
                yield RawRow(where, None, problem, raw[:RAW_KEEP_CHARS].decode("utf-8", "replace"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                cut_off = not raw.endswith(b"\n")  # readline stops short of a newline only at the end of the file
                hint = (" The file ends in the middle of this row: it was probably cut off while being written; "
                        "re-export it or delete the partial last line." if cut_off else " Each line must be one JSON object.")
                yield RawRow(where, None, f"not valid JSON ({e.msg} at column {e.colno}).{hint}", line[:RAW_KEEP_CHARS])
                continue
            if not isinstance(row, dict):
                yield RawRow(where, None, f"expected a JSON object, got a {type(row).__name__}. Each line must be one object "
                             "like {\"messages\": [...]}.", line[:RAW_KEEP_CHARS])
                continue
            yield RawRow(where, row)


def _json_rows(path: Path) -> Iterator[RawRow]:
    # A JSON list cannot be streamed with the standard library; a file too big to load should be JSONL.
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}). Re-encode the file as UTF-8.") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows; for one row per line use .jsonl.")
    for i, row in enumerate(rows):
        where = f"{path}[{i}]"
        if isinstance(row, dict):
            yield RawRow(where, row)
        else:
            yield RawRow(where, None, f"expected a JSON object, got a {type(row).__name__}.", json.dumps(row)[:RAW_KEEP_CHARS])


def _has_undecodable(fields: list[str]) -> bool:
    # Opened with errors="surrogateescape", bytes that are not UTF-8 turn into lone surrogates U+DC80..U+DCFF.
    return any("\udc80" <= ch <= "\udcff" for field in fields for ch in field if "\ud800" <= ch <= "\udfff")


def _delimited_rows(path: Path, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise DataError(f"{path}:1: malformed header ({e}).") from None
        if header is None:
            return
        if _has_undecodable(header):
            raise DataError(f"{path}:1: the header is not UTF-8 text. Re-encode the file as UTF-8.")
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield RawRow(f"{path}:{start}", None, f"malformed {path.suffix[1:].upper()} ({e}).")
                continue
            where = f"{path}:{start}"
            raw = delimiter.join(fields)
            if not any(x.strip() for x in fields):
                continue
            if _has_undecodable(fields):
                yield RawRow(where, None, "not UTF-8 text. Re-encode the file as UTF-8.",
                             raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:RAW_KEEP_CHARS])
                continue
            if len(fields) != len(header):
                yield RawRow(where, None, f"{len(fields)} fields where the header has {len(header)} ({', '.join(header)}). "
                             "Quote fields that contain the delimiter.", raw[:RAW_KEEP_CHARS])
                continue
            yield RawRow(where, dict(zip(header, fields)))


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq  # ~0.2 s, only for Parquet files
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError("Reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({e}). Re-export it, or convert it to JSONL.") from None
    index = 0
    for batch in table.iter_batches(batch_size=1024):  # streamed: one batch of rows in memory at a time
        for row in batch.to_pylist():
            yield RawRow(f"{path}[{index}]", row)
            index += 1


def scan_rows(path: str | Path, max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[RawRow]:
    """Every row of a data file, readable or not. Raises only for problems with the file as a whole."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"'{path}': unknown data file type '{suffix}'. Use one of {', '.join(SUFFIXES)}.")
    check_exists(path)
    if suffix == ".jsonl":
        return _jsonl_rows(path, max_row_bytes)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    return _delimited_rows(path, "," if suffix == ".csv" else "\t")


def read_rows(path: str | Path) -> Iterator[tuple[dict, str]]:
    """(row, file:line) for every row; the first unreadable row raises a DataError."""
    rows = scan_rows(path)

    def strict():
        for r in rows:
            if r.problem:
                raise r.error()
            yield r.row, r.where

    return strict()

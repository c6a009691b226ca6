"""Raw rows from a data file, each with where it came from: JSONL, JSON (one list), CSV and TSV.

Rows are yielded one at a time (a JSONL or CSV file is never read whole), as dictionaries, with a
`file:line` (or `file[index]` for a JSON list) that every later complaint can point at.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from ..errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def _open_text(path: Path):
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Give a .jsonl, .json, .csv or .tsv file, or a built-in dataset name.")
    return open(path, encoding="utf-8", newline="")


def _utf8_error(path: Path, e: UnicodeDecodeError, line: int | None = None) -> DataError:
    where = f"{path}:{line}" if line else str(path)
    return DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}). Re-encode the file as UTF-8.")


def _jsonl_rows(path: Path) -> Iterator[tuple[dict, str]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, e, number) from None
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}). Each line must be one JSON object.") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got a {type(row).__name__}. Each line must be one object.")
            yield row, where


def _json_rows(path: Path) -> Iterator[tuple[dict, str]]:
    with _open_text(path) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
        except UnicodeDecodeError as e:
            raise _utf8_error(path, e) from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows; for one row per line use .jsonl.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}[{i}]: expected a JSON object, got a {type(row).__name__}.")
        yield row, f"{path}[{i}]"


def _delimited_rows(path: Path, delimiter: str) -> Iterator[tuple[dict, str]]:
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            for fields in reader:
                where = f"{path}:{reader.line_num}"
                if not any(x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise DataError(
                        f"{where}: {len(fields)} fields where the header has {len(header)} ({', '.join(header)}). "
                        "Quote fields that contain the delimiter."
                    )
                yield dict(zip(header, fields)), where
        except UnicodeDecodeError as e:
            raise _utf8_error(path, e, reader.line_num + 1) from None
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e}).") from None


def read_rows(path: str | Path) -> Iterator[tuple[dict, str]]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        if not path.is_file():
            _open_text(path)
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix in (".csv", ".tsv"):
        return _delimited_rows(path, "," if suffix == ".csv" else "\t")
    raise DataError(f"'{path}': unknown data file type '{suffix}'. Use one of {', '.join(SUFFIXES)}.")

"""metrics.jsonl and friends: one JSON record per line, appended as a run goes.

Appending one line is not atomic, but a torn last line only loses that line: the reader skips it, and a resume
rewrites the file up to its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return records

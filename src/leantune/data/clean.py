"""`leantune data clean`: the fixes `data check` points at, applied, with every dropped row accounted for.

Two streaming passes over the input: the first is exactly `data check`'s (so the two always agree on what is
wrong), the second writes each row either to the clean file (text repaired and trimmed, in the row's own
schema, as JSONL) or to `<output>.rejected.jsonl` with the reason. The input is never modified; both outputs
are written to temporary files and renamed into place only when complete. Cleaning a cleaned file changes
nothing: the repairs are idempotent and the duplicate rules keep the first row of each group.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_path
from ..errors import DataError
from .check import Checker, CheckReport
from .rows import scan_rows
from .textfix import fix_text


@dataclass
class CleanSummary:
    input: str
    output: str
    rejected_output: str
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    repaired: int = 0  # kept rows whose text changed (encoding repaired or whitespace trimmed)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["dropped"] = dict(self.dropped)
        return d


def fix_row(value):
    """Every string value repaired and trimmed; keys, numbers and structure untouched."""
    if isinstance(value, str):
        return fix_text(value)
    if isinstance(value, dict):
        return {k: fix_row(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fix_row(v) for v in value]
    return value


def rejected_path_for(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".rejected.jsonl")


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str) + "\n"


def clean_file(data: str | Path, output: str | Path, *, fmt: str = "auto", columns: dict[str, str] | None = None,
               near_threshold: float = 0.8, drop_near_duplicates: bool = True, progress=None) -> CleanSummary:
    source, output = Path(data), Path(output)
    if output.suffix.lower() != ".jsonl":
        raise DataError(f"-o {output}: the clean file is written as JSONL; give it a .jsonl name.")
    rejected = rejected_path_for(output)
    if source.exists() and any(p.exists() and p.resolve() == source.resolve() for p in (output, rejected)):
        raise DataError(f"-o {output} would overwrite the input {source}; write the clean file under another name.")
    started = time.perf_counter()

    # pass 1: what is wrong, exactly as `data check` sees it
    checker = Checker(fmt, columns, near_threshold)
    report = CheckReport(path=str(source))
    rows = checker.examples_from(scan_rows(source), report)
    for _, example, _ in progress(rows) if progress else rows:
        if example is not None:
            checker.observe(example, report)
    dropped = checker.finish(report)
    if report.rows == 0:
        raise DataError(f"'{source}' holds no rows; there is nothing to clean.")

    # pass 2: write every row to one of the two files
    summary = CleanSummary(str(source), str(output), str(rejected))
    again = Checker(fmt, columns, near_threshold)
    position = 0
    with atomic_path(output) as clean_tmp, atomic_path(rejected) as rejected_tmp:
        with open(clean_tmp, "w", encoding="utf-8") as keep, open(rejected_tmp, "w", encoding="utf-8") as drop:
            for raw, example, issue in again.examples_from(scan_rows(source), CheckReport(path=str(source))):
                summary.rows += 1
                if example is not None:
                    position += 1
                    reason = dropped.get(position - 1)
                    if reason and (drop_near_duplicates or reason[0] != "near_duplicates"):
                        issue = reason
                if issue is not None:
                    code, detail = issue
                    record = {"where": raw.where, "reason": code, "detail": detail}
                    record["row" if raw.row is not None else "raw"] = raw.row if raw.row is not None else raw.raw
                    drop.write(_dump(record))
                    summary.dropped[code] += 1
                    continue
                fixed = fix_row(raw.row)
                summary.repaired += fixed != raw.row
                keep.write(_dump(fixed))
                summary.kept += 1
            if position != report.examples:  # the file changed between the passes: keep neither output
                raise DataError(f"'{source}' changed while it was being cleaned; run `data clean` again.")
    summary.seconds = time.perf_counter() - started
    return summary

"""`leantune data check`: every problem in a dataset found in one streaming pass, before a GPU-hour is spent.

Memory stays bounded whatever the file size: rows are read one at a time and each leaves only fixed-size
traces behind (three 64-bit keys, 64 bytes of MinHash, a few band keys, its length and where it came from), so
exact duplicates, near duplicates and conflicts are found at the end with numpy over those arrays.

Errors are what breaks or poisons training (unreadable rows, missing fields, roles out of order, mixed schemas,
evaluation rows that are also training rows); warnings are what wastes money or skews a model (duplicates,
conflicts, over-long rows, label imbalance, broken text, personal data). `check` exits 1 when there are errors.
"""

from __future__ import annotations

import json
import re
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import DataError
from .batches import padding_fraction
from .builtin import BUILTIN
from .dedup import NearDupIndex, ReferenceIndex, Signer, exact_duplicates, key64
from .formats import FORMATS, check_format_name, detect_format, rename, to_example, unknown_schema
from .records import Example, RowError
from .rows import RawRow, scan_rows
from .textfix import REPLACEMENT_CHAR, fix_text, has_mojibake, personal_data

SHOW = 5  # rows named per finding
MAX_LABELS = 20  # answers drawn from at most this many distinct values make a dataset classification-style
IMBALANCE = 0.8  # warn when one label holds more than this share


class Sources:
    """Where each example came from, in a dozen bytes a row: 'path:123' is kept as a shared 'path:' plus the
    number, rather than one Python string per row (which was most of a 1 GiB check's memory)."""

    _SPLIT = re.compile(r"^(.*?)(\d+)(\]?)$", re.S)

    def __init__(self):
        self.shapes: list[tuple[str, str]] = []
        self._shape_ids: dict[tuple[str, str], int] = {}
        self.shape_of, self.number = array("I"), array("q")

    def append(self, where: str) -> None:
        m = self._SPLIT.match(where)
        shape, number = ((m.group(1), m.group(3)), int(m.group(2))) if m else ((where, ""), -1)
        index = self._shape_ids.get(shape)
        if index is None:
            index = self._shape_ids[shape] = len(self.shapes)
            self.shapes.append(shape)
        self.shape_of.append(index)
        self.number.append(number)

    def __getitem__(self, position: int) -> str:
        head, tail = self.shapes[self.shape_of[position]]
        number = self.number[position]
        return head + tail if number < 0 else f"{head}{number}{tail}"

    def __len__(self) -> int:
        return len(self.number)


@dataclass(frozen=True)
class Kind:
    severity: str  # error | warning
    title: str
    hint: str


KINDS = {
    "unreadable": Kind("error", "rows that cannot be read", "fix or delete these lines; `leantune data clean` drops them"),
    "fields": Kind("error", "missing, empty or wrongly typed fields", "fill in or drop these rows (`data clean` drops them)"),
    "roles": Kind("error", "roles missing or out of order", "conversations go [system], user, assistant, user, ... and end with the assistant"),
    "schema": Kind("error", "rows whose schema differs from the rest", "use one row format per file, or map columns with --column"),
    "eval_overlap": Kind("error", "training rows whose prompt is also in the eval set",
                         "remove them from one side: the eval score would reward memorisation"),
    "eval_near_overlap": Kind("warning", "training rows nearly identical to an eval row", "likely leakage; review them"),
    "exact_duplicates": Kind("warning", "exact duplicates (after trimming whitespace and repairing encoding)",
                             "each repeat is paid for again and over-weights that row; `data clean` keeps the first"),
    "near_duplicates": Kind("warning", "near duplicates (MinHash estimate of word 3-gram Jaccard similarity)",
                            "`data clean` keeps the first of each; raise --near-dup-threshold to be stricter"),
    "conflicts": Kind("warning", "the same prompt with different answers", "decide which answer is right; conflicting labels cap accuracy"),
    "too_long": Kind("warning", "rows longer than the sequence length", "they are truncated (data.truncation) or split; raise --seq-len or shorten them"),
    "label_imbalance": Kind("warning", "one answer dominates a classification-style dataset",
                            "a model that always gives it scores this share; judge by balanced accuracy, or rebalance"),
    "mojibake": Kind("warning", "broken text encoding (mojibake)", "`data clean` repairs it (ftfy)"),
    "replacement_chars": Kind("warning", "replacement characters (U+FFFD): bytes lost before the file was written",
                              "nothing can restore them; re-export from the source if you can"),
    "personal_data": Kind("warning", "suspected personal data (emails, phone numbers)", "remove or mask it unless the task needs it"),
}


@dataclass
class Finding:
    code: str
    count: int = 0
    rows: list[str] = field(default_factory=list)  # the first few: "file:line" (+ detail)

    @property
    def severity(self) -> str:
        return KINDS[self.code].severity

    def add(self, where: str, detail: str = "") -> None:
        self.count += 1
        if len(self.rows) < SHOW:
            self.rows.append(f"{where} {detail}".strip())


@dataclass
class Lengths:
    p50: int
    p95: int
    max: int

    @classmethod
    def of(cls, values) -> "Lengths | None":
        if len(values) == 0:
            return None
        a = np.asarray(values)
        return cls(int(np.percentile(a, 50)), int(np.percentile(a, 95)), int(a.max()))


@dataclass
class CheckReport:
    path: str
    rows: int = 0  # rows read, readable or not
    examples: int = 0  # rows that became a valid example
    formats: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    chars: Lengths | None = None
    tokens: Lengths | None = None
    seq_len: int | None = None
    labels: dict[str, int] | None = None
    padding: dict[str, float] | None = None  # share of paid token slots that are padding
    eval_path: str | None = None
    eval_examples: int = 0
    seconds: float = 0.0
    bytes: int = 0

    @property
    def errors(self) -> int:
        return sum(f.count for f in self.findings.values() if f.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(f.count for f in self.findings.values() if f.severity == "warning")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["findings"] = [
            {"code": f.code, "severity": f.severity, "title": KINDS[f.code].title, "count": f.count, "rows": f.rows,
             "hint": KINDS[f.code].hint}
            for f in self.sorted_findings()
        ]
        d["errors"], d["warnings"] = self.errors, self.warnings
        return d

    def sorted_findings(self) -> list[Finding]:
        order = list(KINDS)
        return sorted((f for f in self.findings.values() if f.count),
                      key=lambda f: (f.severity != "error", order.index(f.code)))


@dataclass
class Keys:
    """What dedup, conflicts and overlap need from one example, computed on the repaired, trimmed text."""

    exact: int
    prompt: int  # 0 for plain text (no prompt)
    answer: int
    text: str  # what near-duplicate detection compares (system prompts left out: they repeat by design)


def example_keys(ex: Example) -> Keys:
    if ex.kind == "text":
        text = fix_text(ex.text)
        return Keys(key64(json.dumps(["text", text])), 0, 0, text)
    messages = [[m["role"], fix_text(m["content"])] for m in ex.messages]
    rejected = fix_text(ex.rejected) if ex.rejected is not None else None
    prompt = messages[:-1]
    return Keys(
        exact=key64(json.dumps([ex.kind, messages, rejected])),
        prompt=key64(json.dumps(prompt)) or 1,
        answer=key64(messages[-1][1]),
        text="\n".join(c for role, c in messages if role != "system"),
    )


def example_strings(ex: Example) -> list[str]:
    if ex.kind == "text":
        return [ex.text]
    return [m["content"] for m in ex.messages] + ([ex.rejected] if ex.rejected is not None else [])


def render_for_length(tokenizer, ex: Example) -> str:
    if ex.kind == "text":
        return ex.text
    text = tokenizer.apply_chat_template(list(ex.messages), tokenize=False)
    if ex.rejected is not None:  # the longer of the two sequences DPO will run
        rejected = list(ex.messages[:-1]) + [{"role": "assistant", "content": ex.rejected}]
        text = max(text, tokenizer.apply_chat_template(rejected, tokenize=False), key=len)
    return text


class Checker:
    """One streaming pass over a dataset. `row_outcomes` is what `data clean` builds on."""

    def __init__(self, fmt: str = "auto", columns: dict[str, str] | None = None, near_threshold: float = 0.8,
                 tokenizer=None, seq_len: int | None = None, micro_batch_size: int = 8):
        check_format_name(fmt)
        if not 0 < near_threshold <= 1:
            raise DataError(f"--near-dup-threshold must be in (0, 1], got {near_threshold}.")
        self.fmt, self.columns, self.tokenizer = fmt, columns or {}, tokenizer
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.signer = Signer()
        self.near = NearDupIndex(near_threshold)
        self.near_threshold = near_threshold
        self.reference: ReferenceIndex | None = None
        self.reference_sources: list[str] = []
        # per valid example ("position"), fixed size
        self.exact, self.prompt, self.answer = array("Q"), array("Q"), array("Q")
        self.format_of = array("B")
        self.chars, self.tokens = array("I"), array("I")
        self.sources = Sources()
        self.label_counts: Counter | None = Counter()
        self.pending: list[tuple[int, str]] = []  # (position, rendered text) awaiting batched tokenisation

    # ------------------------------------------------------------ reading
    def examples_from(self, raw_rows: Iterable[RawRow], report: CheckReport) -> Iterator[tuple[RawRow, Example | None, tuple[str, str] | None]]:
        """Each row with its Example, or with None and (finding code, what is wrong) when the row is bad; the
        finding is recorded in the report."""
        for raw in raw_rows:
            report.rows += 1
            if raw.problem:
                issue = ("unreadable", raw.problem)
            else:
                row = rename(raw.row, self.columns)
                fmt = self.fmt if self.fmt != "auto" else detect_format(row)
                try:
                    if fmt is None:
                        raise unknown_schema(row, raw.where)
                    example = to_example(row, fmt, raw.where)
                except RowError as e:
                    issue = (e.category, str(e).removeprefix(f"{raw.where}: "))
                else:
                    report.formats[fmt] = report.formats.get(fmt, 0) + 1
                    self.format_of.append(FORMATS.index(fmt))
                    yield raw, example, None
                    continue
            self.finding(report, issue[0]).add(raw.where, issue[1])
            yield raw, None, issue

    @staticmethod
    def finding(report: CheckReport, code: str) -> Finding:
        return report.findings.setdefault(code, Finding(code))

    def add_reference(self, examples: Iterable[Example]) -> int:
        self.reference = ReferenceIndex(self.near_threshold)
        for ex in examples:
            keys = example_keys(ex)
            self.reference.add(keys.prompt or keys.exact, self.signer(keys.text))
            self.reference_sources.append(ex.source)
        return len(self.reference_sources)

    # ------------------------------------------------------------ per example
    def observe(self, ex: Example, report: CheckReport) -> None:
        position = len(self.sources)
        self.sources.append(ex.source)
        keys = example_keys(ex)
        self.exact.append(keys.exact)
        self.prompt.append(keys.prompt)
        self.answer.append(keys.answer)
        signature = self.signer(keys.text)
        self.near.add(signature)
        strings = example_strings(ex)
        self.chars.append(sum(len(s) for s in strings))
        if self.reference is not None:
            hit = self.reference.match(keys.prompt or keys.exact, signature)
            if hit:
                kind, q, sim = hit
                code = "eval_overlap" if kind == "exact" else "eval_near_overlap"
                self.finding(report, code).add(ex.source, f"~ {self.reference_sources[q]}" + (f" ({sim:.2f})" if kind == "near" else ""))
        if any(REPLACEMENT_CHAR in s for s in strings):
            self.finding(report, "replacement_chars").add(ex.source)
        elif any(has_mojibake(s) for s in strings):
            self.finding(report, "mojibake").add(ex.source)
        pii = sorted({kind for s in strings for kind in personal_data(s)})
        if pii:
            self.finding(report, "personal_data").add(ex.source, "/".join(pii))
        if self.label_counts is not None and ex.kind != "text":
            answer = fix_text(ex.answer)
            self.label_counts[answer] += 1
            if len(self.label_counts) > MAX_LABELS:
                self.label_counts = None  # free-form answers: not classification-style
        if self.tokenizer is not None:
            self.pending.append((position, render_for_length(self.tokenizer, ex)))
            if len(self.pending) >= 512:
                self.flush_tokens()

    def flush_tokens(self) -> None:
        if not self.pending:
            return
        encoded = self.tokenizer([text for _, text in self.pending], add_special_tokens=False)["input_ids"]
        for (_, _), ids in zip(self.pending, encoded):
            self.tokens.append(len(ids))
        self.pending = []

    # ------------------------------------------------------------ at the end
    def dropped_positions(self, report: CheckReport) -> dict[int, tuple[str, str]]:
        """position -> (finding code, detail) for every valid example that `clean` drops: rows in a minority
        format, exact duplicates, then near duplicates of a kept row. Findings are recorded as it goes."""
        n = len(self.sources)
        dropped: dict[int, tuple[str, str]] = {}
        skip = np.zeros(n, bool)
        if len(report.formats) > 1:
            majority = FORMATS.index(max(report.formats, key=report.formats.get))
            for p in np.flatnonzero(np.frombuffer(self.format_of, np.uint8)[:n] != majority).tolist():
                detail = f"format {FORMATS[self.format_of[p]]}, most rows are {FORMATS[majority]}"
                self.finding(report, "schema").add(self.sources[p], detail)
                dropped[p] = ("schema", detail)
                skip[p] = True
        exact = np.frombuffer(self.exact, np.uint64)[:n]
        for p, first in exact_duplicates(exact, skip):
            detail = f"= {self.sources[first]}"
            self.finding(report, "exact_duplicates").add(self.sources[p], detail)
            dropped[p] = ("exact_duplicates", detail)
            skip[p] = True
        for dup in self.near.find(skip):
            detail = f"~ {self.sources[dup.of]} ({dup.similarity:.2f})"
            self.finding(report, "near_duplicates").add(self.sources[dup.position], detail)
            dropped[dup.position] = ("near_duplicates", detail)
        return dropped

    def conflicts(self, report: CheckReport) -> None:
        n = len(self.sources)
        prompt, answer = np.frombuffer(self.prompt, np.uint64)[:n], np.frombuffer(self.answer, np.uint64)[:n]
        has_prompt = np.flatnonzero(prompt != 0)
        order = has_prompt[np.lexsort((has_prompt, answer[has_prompt], prompt[has_prompt]))]
        p_sorted = prompt[order]
        starts = np.flatnonzero(np.concatenate([[True], p_sorted[1:] != p_sorted[:-1]]))
        ends = np.append(starts[1:], len(order))
        for s, e in zip(starts.tolist(), ends.tolist()):
            group = order[s:e]
            if len(group) > 1 and len(set(answer[group].tolist())) > 1:
                first = int(group.min())
                for p in sorted(group.tolist()):
                    if p != first and answer[p] != answer[first]:
                        self.finding(report, "conflicts").add(self.sources[p], f"vs {self.sources[first]}")

    def finish(self, report: CheckReport) -> dict[int, tuple[str, str]]:
        self.flush_tokens()
        dropped = self.dropped_positions(report)
        self.conflicts(report)
        report.examples = len(self.sources)
        report.chars = Lengths.of(self.chars)
        report.tokens = Lengths.of(self.tokens)
        report.seq_len = self.seq_len
        if self.tokens and self.seq_len:
            lengths = np.frombuffer(self.tokens, np.uint32)
            for p in np.flatnonzero(lengths > self.seq_len).tolist():
                self.finding(report, "too_long").add(self.sources[p], f"{int(lengths[p])} tokens")
            sample = lengths if len(lengths) <= 100_000 else lengths[np.random.default_rng(0).choice(len(lengths), 100_000, replace=False)]
            clipped = np.minimum(sample, self.seq_len).tolist()
            report.padding = {
                "micro_batch_size": self.micro_batch_size,
                "padded": round(padding_fraction(clipped, self.micro_batch_size), 4),
                "packed": round(padding_fraction(clipped, self.micro_batch_size, capacity=self.seq_len), 4),
                "rows_sampled": len(clipped),
            }
        if self.label_counts and report.examples >= 20 and len(self.label_counts) > 1:
            report.labels = dict(self.label_counts.most_common())
            top, count = self.label_counts.most_common(1)[0]
            if count / report.examples > IMBALANCE:
                self.finding(report, "label_imbalance").add(f"'{top}'", f"{count / report.examples:.1%} of rows")
        return dropped


def check_examples(checker: Checker, report: CheckReport, rows: Iterable[tuple]):
    for _, ex, _ in rows:
        if ex is not None:
            checker.observe(ex, report)
    return checker.finish(report)


def builtin_rows(name: str) -> Iterator[tuple[None, Example, None]]:
    for ex in BUILTIN[name]():
        yield None, ex, None


def check_dataset(data: str, eval_data: str | None = None, *, fmt: str = "auto", columns: dict[str, str] | None = None,
                  near_threshold: float = 0.8, tokenizer=None, seq_len: int | None = None, micro_batch_size: int = 8,
                  progress=None) -> CheckReport:
    """Check a data file or built-in dataset (and, with `eval_data`, its overlap with an eval set)."""

    started = time.perf_counter()
    checker = Checker(fmt, columns, near_threshold, tokenizer, seq_len, micro_batch_size)
    report = CheckReport(path=data, seq_len=seq_len)
    if eval_data is not None:
        eval_report = CheckReport(path=eval_data)
        eval_checker = Checker(fmt, columns, near_threshold)
        pairs = builtin_rows(eval_data) if eval_data in BUILTIN else eval_checker.examples_from(scan_rows(eval_data), eval_report)
        report.eval_examples = checker.add_reference(ex for _, ex, _ in pairs if ex is not None)
        report.eval_path = eval_data
        for code, found in eval_report.findings.items():  # a broken eval row is as much an error as a training one
            merged = Checker.finding(report, code)
            merged.count += found.count
            merged.rows = (merged.rows + found.rows)[:SHOW]
    if data in BUILTIN:
        pairs = builtin_rows(data)
    else:
        path = Path(data)
        report.bytes = path.stat().st_size if path.is_file() else 0
        pairs = checker.examples_from(scan_rows(data), report)
    if progress is not None:
        pairs = progress(pairs)
    check_examples(checker, report, pairs)
    if data in BUILTIN:
        report.rows = report.examples
        report.formats = {"chat": report.examples}
    report.seconds = time.perf_counter() - started
    if report.rows == 0:
        raise DataError(f"'{data}' holds no rows. Add at least one example.")
    return report

"""read -> normalise to chat records -> tokenise (mask prompt) -> batch."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..errors import DataError
from .builtin import BUILTIN, stratified_split
from .formats import FORMATS, normalise
from .preference import require_pairs
from .records import ChatExample
from .rows import SUFFIXES, read_rows


def read_examples(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> list[ChatExample]:
    """A data file (JSONL, JSON list, CSV, TSV, Parquet) in any supported row format -> ChatExamples."""
    examples = normalise(read_rows(path), fmt, columns)
    if not examples:
        raise DataError(f"Data file '{path}' holds no examples. Add at least one row.")
    return examples


def load_examples(spec: str, fmt: str = "auto", columns: dict[str, str] | None = None) -> list[ChatExample]:
    """A built-in dataset name or a path to a data file."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if path.suffix.lower() not in SUFFIXES and not path.exists():
        names = ", ".join(BUILTIN)
        raise DataError(f"Dataset '{spec}' is neither a built-in dataset ({names}) nor an existing file. Check data.train.")
    return read_examples(path, fmt, columns)


def sft_examples(examples: list[ChatExample], spec: str) -> list[ChatExample]:
    if examples and examples[0].kind == "preference":
        raise DataError(f"'{spec}' holds preference pairs (prompt, chosen, rejected): train them with objective.name=dpo. "
                        "For supervised fine-tuning give chat, ShareGPT, Alpaca, prompt/completion or text rows.")
    return examples


class Splits(NamedTuple):
    train: list[ChatExample]
    eval: list[ChatExample]
    # Training rows whose prompt is also an eval row's: removed from a split we made (our split must not leak),
    # counted but kept for an eval file the user gave (`leantune data check --eval` lists them).
    leaked_removed: int = 0
    leaked_kept: int = 0

    def leak_notes(self, train: str, eval: str | None) -> list[str]:
        notes = []
        if self.leaked_removed:
            notes.append(f"data: {self.leaked_removed} training rows repeat a held-out eval prompt (duplicates in "
                         f"{train}); left out of training so the eval stays unseen")
        if self.leaked_kept:
            notes.append(f"[yellow]data: {self.leaked_kept} training rows have a prompt that is also in {eval}: the eval "
                         "score will reward memorising them (`leantune data check --eval` lists them)[/]")
        return notes


def prompt_key(example: ChatExample) -> int:
    from .check import example_keys  # check.py imports this package: a top-level import would be a loop

    keys = example_keys(example)
    return keys.prompt or keys.exact


def load_splits(train: str, eval: str | None, eval_size: int, seed: int, max_train: int | None = None,
                fmt: str = "auto", columns: dict[str, str] | None = None, objective: str = "sft") -> Splits:
    """Train and eval examples for a run's data config, with no eval prompt among the training rows when we
    made the split (duplicated rows in a dataset would otherwise put the same prompt on both sides)."""
    check = require_pairs if objective == "dpo" else sft_examples
    examples = load_examples(train, fmt, columns)
    check(examples, train)
    if eval:
        eval_examples = load_examples(eval, fmt, columns)
        check(eval_examples, eval)
        train_examples = examples
    else:
        train_examples, eval_examples = stratified_split(examples, eval_size, seed)
    eval_prompts = {prompt_key(e) for e in eval_examples}
    clean = [e for e in train_examples if prompt_key(e) not in eval_prompts]
    leaked = len(train_examples) - len(clean)
    if not eval:
        train_examples = clean
    if max_train is not None:
        train_examples = train_examples[:max_train]
    if not train_examples:
        raise DataError(f"No training examples left from '{train}'. Add data or lower data.eval_size.")
    return Splits(train_examples, eval_examples, leaked if not eval else 0, leaked if eval else 0)


def run_splits(config) -> Splits:
    """The splits a run's config makes (its data section, seed and objective): what it trained on and held out."""
    d = config.data
    return load_splits(d.train, d.eval, d.eval_size, config.training.seed, d.max_train_examples, d.format, d.columns,
                       objective=config.objective.name)


__all__ = ["FORMATS", "ChatExample", "load_examples", "load_splits", "read_examples", "run_splits", "stratified_split"]

"""read -> normalise to chat records -> tokenise (mask prompt) -> batch."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .builtin import BUILTIN, stratified_split
from .records import ChatExample, read_chat_json, read_chat_jsonl


def load_examples(spec: str) -> list[ChatExample]:
    """A built-in dataset name or a path to a chat JSONL file."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if path.suffix.lower() not in (".jsonl", ".json") and not path.exists():
        names = ", ".join(BUILTIN)
        raise DataError(f"Dataset '{spec}' is neither a built-in dataset ({names}) nor an existing file. Check data.train.")
    return read_chat_json(path) if path.suffix.lower() == ".json" else read_chat_jsonl(path)


def load_splits(train: str, eval: str | None, eval_size: int, seed: int, max_train: int | None = None):
    """(train_examples, eval_examples) for a run's data config."""
    examples = load_examples(train)
    if eval:
        train_examples, eval_examples = examples, load_examples(eval)
    else:
        train_examples, eval_examples = stratified_split(examples, eval_size, seed)
    if max_train is not None:
        train_examples = train_examples[:max_train]
    if not train_examples:
        raise DataError(f"No training examples left from '{train}'. Add data or lower data.eval_size.")
    return train_examples, eval_examples


__all__ = ["ChatExample", "load_examples", "load_splits", "read_chat_json", "read_chat_jsonl", "stratified_split"]

"""The one internal record type, and a reader for OpenAI-style chat JSONL.

A chat example is a list of messages with roles system / user / assistant. Every row remembers where it
came from (`file:line`) so that any later complaint can point at it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[dict, ...]
    source: str = ""
    label: str | None = field(default=None, compare=False)  # set by classification-style datasets

    @property
    def prompt(self) -> tuple[dict, ...]:
        """Every message before the last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def answer(self) -> str:
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]


def validate_messages(messages, where: str) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content'; got {m!r:.80}.")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {i} content must be a string, got {type(m['content']).__name__}.")
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise DataError(f"{where}: no assistant message, so there is nothing to learn from this row. Add the reply the model should give.")
    return tuple(clean)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Give a JSONL file of {{\"messages\": [...]}} rows or a built-in dataset name (sms-spam).")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}). Re-encode the file as UTF-8.") from None


def _chat_row(row, where: str) -> ChatExample:
    if not isinstance(row, dict) or "messages" not in row:
        raise DataError(f"{where}: expected an object with a 'messages' list (OpenAI chat format).")
    return ChatExample(validate_messages(row["messages"], where), source=where)


def read_chat_json(path: str | Path) -> list[ChatExample]:
    """Read a JSON file holding one list of `{"messages": [...]}` rows; rows are named file[index]."""
    path = Path(path)
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows; for one row per line use .jsonl.")
    examples = [_chat_row(row, f"{path}[{i}]") for i, row in enumerate(rows)]
    if not examples:
        raise DataError(f"Data file '{path}' holds no examples. Add at least one {{\"messages\": [...]}} row.")
    return examples


def read_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """Read `{"messages": [...]}` rows. Blank lines are skipped; any bad row stops with its file:line."""
    path = Path(path)
    examples = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}). Each line must be one JSON object.") from None
        examples.append(_chat_row(row, where))
    if not examples:
        raise DataError(f"Data file '{path}' holds no examples. Add at least one {{\"messages\": [...]}} row.")
    return examples

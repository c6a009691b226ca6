"""The one internal record type for supervised fine-tuning data.

A chat example is a list of messages with roles system / user / assistant. Every row remembers where it
came from (`file:line`) so that any later complaint can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

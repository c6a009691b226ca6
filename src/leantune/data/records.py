"""The one internal record type every row format is normalised to.

An `Example` is one of three kinds:
- chat: a list of messages with roles system / user / assistant (SFT learns the assistant turns);
- text: plain text for continued pretraining (every token is learned);
- preference: a conversation ending in the preferred assistant reply (`messages`) plus the `rejected` reply
  to the same prompt, for DPO.
Every record remembers where it came from (`file:line`) so that any later complaint can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DataError

ROLES = ("system", "user", "assistant")


class RowError(DataError):
    """One row that cannot become an Example. `category` groups it in `data check`'s report."""

    def __init__(self, message: str, category: str = "fields"):
        super().__init__(message)
        self.category = category  # fields | roles | schema


@dataclass(frozen=True)
class Example:
    messages: tuple[dict, ...] = ()
    source: str = ""
    label: str | None = field(default=None, compare=False)  # set by classification-style datasets
    text: str | None = None  # kind "text"
    rejected: str | None = None  # kind "preference": the dispreferred last assistant reply

    @property
    def kind(self) -> str:
        if self.text is not None:
            return "text"
        return "preference" if self.rejected is not None else "chat"

    @property
    def prompt(self) -> tuple[dict, ...]:
        """Every message before the last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def answer(self) -> str:
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]


ChatExample = Example  # the name the SFT code grew up with


def validate_messages(messages, where: str) -> tuple[dict, ...]:
    """Messages as a tuple of {role, content}, or a RowError saying what is wrong with which message."""
    if not isinstance(messages, list) or not messages:
        raise RowError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"{where}: message {i} must be an object with 'role' and 'content'; got {m!r:.80}.")
        if m["role"] not in ROLES:
            raise RowError(f"{where}: message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}.", "roles")
        if not isinstance(m["content"], str):
            raise RowError(f"{where}: message {i} content must be a string, got {type(m['content']).__name__}.")
        if m["role"] != "system" and not m["content"].strip():
            raise RowError(f"{where}: message {i} ({m['role']}) is empty. Fill it in or drop the row.")
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise RowError(f"{where}: no assistant message, so there is nothing to learn from this row. "
                       "Add the reply the model should give.", "roles")
    _check_role_order(clean, where)
    return tuple(clean)


def _check_role_order(messages: list[dict], where: str) -> None:
    # Many chat templates (Llama 2, Mistral, Gemma) refuse anything else, and a model trained on two user turns
    # in a row learns a conversation shape it will never be shown.
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            raise RowError(f"{where}: message {i} is a system message after the conversation started; "
                           "put the system message first.", "roles")
        if i > 0 and m["role"] == messages[i - 1]["role"]:
            raise RowError(f"{where}: messages {i - 1} and {i} are both '{m['role']}'; user and assistant turns must "
                           "alternate. Merge the two turns.", "roles")
    if messages[-1]["role"] != "assistant":
        raise RowError(f"{where}: the conversation ends with a {messages[-1]['role']} turn that has no reply; "
                       "end it with the assistant's answer or drop the last turn.", "roles")

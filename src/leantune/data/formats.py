"""Row schemas in the wild, detected and normalised to ChatExample.

| format | fields |
|---|---|
| chat | {"messages": [{"role", "content"}, ...]} (OpenAI) |
| sharegpt | {"conversations": [{"from": human/gpt/system, "value"}, ...]} |
| alpaca | {"instruction", "input" (optional), "output"} |
| prompt_completion | {"prompt", "completion"} |
| preference | {"prompt", "chosen", "rejected"} (DPO; recognised, trained by a later objective) |

`columns` renames a file's own field names to these first, e.g. {"prompt": "question", "completion": "answer"}.
"""

from __future__ import annotations

from ..errors import DataError
from .records import ChatExample, validate_messages

FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion", "preference")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                  "model": "assistant", "system": "system"}


def rename(row: dict, columns: dict[str, str] | None) -> dict:
    if not columns:
        return row
    out = dict(row)
    for ours, theirs in columns.items():
        if theirs in out:
            out[ours] = out.pop(theirs)
    return out


def detect_format(row: dict) -> str | None:
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    return None


def _text(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{where}: field '{key}' is missing or empty.")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be text, got {type(value).__name__}.")
    return value


def to_chat(row: dict, fmt: str, where: str) -> ChatExample:
    if fmt == "chat":
        return ChatExample(validate_messages(row.get("messages"), where), source=where)
    if fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise DataError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} objects.")
        messages = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or "from" not in t or "value" not in t:
                raise DataError(f"{where}: conversation turn {i} must have 'from' and 'value'.")
            role = SHAREGPT_ROLES.get(str(t["from"]).lower())
            if role is None:
                raise DataError(f"{where}: turn {i} is from {t['from']!r}; use one of {', '.join(SHAREGPT_ROLES)}.")
            messages.append({"role": role, "content": t["value"]})
        return ChatExample(validate_messages(messages, where), source=where)
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction", where), _text(row, "input", where, required=False)
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output", where)}]
        return ChatExample(validate_messages(messages, where), source=where)
    if fmt == "prompt_completion":
        messages = [{"role": "user", "content": _text(row, "prompt", where)},
                    {"role": "assistant", "content": _text(row, "completion", where)}]
        return ChatExample(validate_messages(messages, where), source=where)
    if fmt == "preference":
        raise DataError(f"{where}: preference pairs (prompt, chosen, rejected) train with the DPO objective, which is not "
                        "available yet. For supervised fine-tuning give chat, ShareGPT, Alpaca or prompt/completion rows.")
    raise DataError(f"Unknown data.format '{fmt}'; use auto or one of {', '.join(FORMATS)}.")


def normalise(rows, fmt: str = "auto", columns: dict[str, str] | None = None) -> list[ChatExample]:
    """Rows (with their file:line) -> ChatExamples. With 'auto' the first row decides, and every row must agree."""
    examples = []
    chosen = None if fmt == "auto" else fmt
    if chosen is not None and chosen not in FORMATS:
        raise DataError(f"Unknown data.format '{fmt}'; use auto or one of {', '.join(FORMATS)}.")
    for row, where in rows:
        row = rename(row, columns)
        found = detect_format(row)
        if chosen is None:
            if found is None:
                raise DataError(
                    f"{where}: cannot tell the format from the fields {sorted(row)}. Expected one of: messages (chat), "
                    "conversations (ShareGPT), instruction/output (Alpaca), prompt/completion, prompt/chosen/rejected. "
                    "Map your column names with data.columns, e.g. data.columns={prompt: question, completion: answer}."
                )
            chosen = found
        elif fmt == "auto" and found != chosen:
            raise DataError(f"{where}: this row's fields {sorted(row)} do not match the file's format '{chosen}' (set by its first row).")
        examples.append(to_chat(row, chosen, where))
    return examples

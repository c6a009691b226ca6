"""Row schemas in the wild, detected and normalised to one Example record.

| format | fields |
|---|---|
| chat | {"messages": [{"role", "content"}, ...]} (OpenAI) |
| sharegpt | {"conversations": [{"from": human/gpt/system, "value"}, ...]} |
| alpaca | {"instruction", "input" (optional), "output"} |
| prompt_completion | {"prompt", "completion"} |
| preference | {"prompt", "chosen", "rejected"} (DPO); prompt may be text or messages, replies text or messages |
| text | {"text"} (continued pretraining: every token is learned) |

`columns` renames a file's own field names to these first, e.g. {"prompt": "question", "completion": "answer"}.
"""

from __future__ import annotations

from ..errors import DataError
from .records import ROLES, Example, RowError, validate_messages

FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion", "preference", "text")
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
    if "text" in keys:
        return "text"
    return None


def _text(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"{where}: field '{key}' is missing or empty.")
        return ""
    if not isinstance(value, str):
        raise RowError(f"{where}: field '{key}' must be text, got {type(value).__name__}.")
    return value


def _reply(row: dict, key: str, where: str) -> str:
    """A preference reply: text, or (TRL's conversational form) a list of messages ending in the assistant's."""
    value = row.get(key)
    if isinstance(value, list):
        messages = validate_messages(value, f"{where} ({key})") if value and value[0].get("role") == "user" else None
        if messages is None:
            replies = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
            if not replies or not isinstance(replies[-1].get("content"), str) or not replies[-1]["content"].strip():
                raise RowError(f"{where}: '{key}' must be text or a list of messages ending in an assistant reply.")
            return replies[-1]["content"]
        return messages[-1]["content"]
    return _text(row, key, where)


def _preference(row: dict, where: str) -> Example:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt_messages = list(prompt)
        for i, m in enumerate(prompt_messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise RowError(f"{where}: prompt message {i} must be an object with a role and text 'content'.")
    else:
        prompt_messages = [{"role": "user", "content": _text(row, "prompt", where)}]
    chosen, rejected = _reply(row, "chosen", where), _reply(row, "rejected", where)
    if chosen == rejected:
        raise RowError(f"{where}: 'chosen' and 'rejected' are the same text, so the pair teaches nothing. Drop the row.")
    messages = validate_messages(prompt_messages + [{"role": "assistant", "content": chosen}], where)
    return Example(messages, source=where, rejected=rejected)


def to_example(row: dict, fmt: str, where: str) -> Example:
    """One row (already renamed) in a known format -> Example, or a RowError."""
    if fmt == "chat":
        return Example(validate_messages(row.get("messages"), where), source=where)
    if fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise RowError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} objects.")
        messages = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or "from" not in t or "value" not in t:
                raise RowError(f"{where}: conversation turn {i} must have 'from' and 'value'.")
            role = SHAREGPT_ROLES.get(str(t["from"]).lower())
            if role is None:
                raise RowError(f"{where}: turn {i} is from {t['from']!r}; use one of {', '.join(SHAREGPT_ROLES)}.", "roles")
            messages.append({"role": role, "content": t["value"]})
        return Example(validate_messages(messages, where), source=where)
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction", where), _text(row, "input", where, required=False)
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output", where)}]
        return Example(validate_messages(messages, where), source=where)
    if fmt == "prompt_completion":
        messages = [{"role": "user", "content": _text(row, "prompt", where)},
                    {"role": "assistant", "content": _text(row, "completion", where)}]
        return Example(validate_messages(messages, where), source=where)
    if fmt == "preference":
        return _preference(row, where)
    if fmt == "text":
        return Example(source=where, text=_text(row, "text", where))
    raise DataError(f"Unknown data.format '{fmt}'; use auto or one of {', '.join(FORMATS)}.")


def unknown_schema(row: dict, where: str) -> RowError:
    return RowError(
        f"{where}: cannot tell the format from the fields {sorted(row)}. Expected one of: messages (chat), "
        "conversations (ShareGPT), instruction/output (Alpaca), prompt/completion, prompt/chosen/rejected, text. "
        "Map your column names with data.columns, e.g. data.columns={prompt: question, completion: answer}.",
        "schema",
    )


def check_format_name(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"Unknown data.format '{fmt}'; use auto or one of {', '.join(FORMATS)}.")


def normalise(rows, fmt: str = "auto", columns: dict[str, str] | None = None) -> list[Example]:
    """Rows (with their file:line) -> Examples. With 'auto' the first row decides, and every row must agree."""
    check_format_name(fmt)
    examples = []
    chosen = None if fmt == "auto" else fmt
    for row, where in rows:
        row = rename(row, columns)
        found = detect_format(row)
        if chosen is None:
            if found is None:
                raise unknown_schema(row, where)
            chosen = found
        elif fmt == "auto" and found != chosen:
            raise RowError(f"{where}: this row's fields {sorted(row)} do not match the file's format '{chosen}' "
                           "(set by its first row).", "schema")
        examples.append(to_example(row, chosen, where))
    return examples

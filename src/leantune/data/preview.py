"""`leantune data preview`: rows exactly as the model will see them, trained tokens told apart from the
masked ones, so a wrong template or mask is caught before training rather than after."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .records import ChatExample
from .tokenize import IGNORE, TRAIN_ON, TRUNCATION, tokenize_example


@dataclass
class PreviewRow:
    source: str
    segments: list[tuple[str, bool]]  # (decoded text, carries loss)
    tokens: int
    trained_tokens: int
    truncated_at: int | None  # max_seq_len when the row is longer
    rejected: str | None = None  # preference rows: the dispreferred reply (the segments show the chosen one)
    dropped: str = ""  # the text training cuts off by data.truncation ("" when nothing is cut)
    dropped_where: str = ""  # "start" | "end" | "row" (truncation: drop) | "" 


def check_preview_options(train_on: str, truncation: str) -> None:
    """Refuse unknown --train-on / --truncation values before any tokenizer is loaded."""
    if train_on not in TRAIN_ON:
        raise ConfigError(f"--train-on '{train_on}' is not one of {', '.join(TRAIN_ON)}.")
    if truncation not in TRUNCATION:
        raise ConfigError(f"--truncation '{truncation}' is not one of {', '.join(TRUNCATION)}.")


def preview_rows(tokenizer, examples: list[ChatExample], max_seq_len: int, train_on: str = "all_assistant",
                 truncation: str = "keep_end") -> list[PreviewRow]:
    rows = []
    for example in examples:
        tok = tokenize_example(tokenizer, example, train_on=train_on)
        segments: list[tuple[str, bool]] = []
        run: list[int] = []
        trained = None
        for token, label in zip(tok.input_ids, tok.labels):
            is_trained = label != IGNORE
            if trained is not None and is_trained != trained:
                segments.append((tokenizer.decode(run), trained))
                run = []
            run.append(token)
            trained = is_trained
        if run:
            segments.append((tokenizer.decode(run), bool(trained)))
        over = len(tok.input_ids) - max_seq_len
        truncated = max_seq_len if over > 0 else None
        dropped, where = "", ""
        if over > 0 and example.kind != "text":  # plain text is split into pieces, not cut
            where = {"keep_end": "start", "keep_start": "end", "drop": "row"}[truncation]
            ids = tok.input_ids[:over] if where == "start" else tok.input_ids[max_seq_len:] if where == "end" else tok.input_ids
            dropped = tokenizer.decode(ids)
        rows.append(PreviewRow(example.source, segments, len(tok.input_ids), tok.n_label_tokens, truncated, example.rejected,
                               dropped, where))
    return rows

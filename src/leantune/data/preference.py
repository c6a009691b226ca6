"""Preference pairs -> token ids for DPO: the prompt with the chosen reply, and the same prompt with the
rejected one, each labelled only on its final reply (and its end-of-turn token)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from .records import Example
from .tokenize import TokenizedExample, TokenizeStats, fit_to_length, start_tokenizing, tokenize_chat


@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    index: int  # position in the training set: precomputed reference log-probs are looked up by it

    @property
    def n_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def require_pairs(examples: list[Example], spec: str) -> None:
    if not examples or examples[0].kind != "preference":
        kind = examples[0].kind if examples else "no"
        raise DataError(
            f"objective.name=dpo trains on preference pairs, but '{spec}' holds {kind} rows: each row needs the fields "
            "'prompt', 'chosen' and 'rejected' (map yours with data.columns, e.g. {chosen: good, rejected: bad}). "
            "For chat or instruction data use objective.name=sft."
        )


def tokenize_pairs(tokenizer, examples: list[Example], max_seq_len: int, truncation: str = "keep_end"
                   ) -> tuple[list[TokenizedPair], TokenizeStats]:
    eot, stats = start_tokenizing(tokenizer, truncation)
    pairs = []
    for example in examples:
        rejected_example = Example(example.messages[:-1] + ({"role": "assistant", "content": example.rejected},),
                                   example.source)
        sides = []
        for side in (example, rejected_example):
            tok = tokenize_chat(tokenizer, side, eot, train_on="last_assistant")
            stats.longest = max(stats.longest, len(tok.input_ids))
            if len(tok.input_ids) > max_seq_len:
                stats.truncated += truncation != "drop"
                stats.dropped_too_long += truncation == "drop"
            fitted = fit_to_length(tok, max_seq_len, truncation, is_text=False)
            sides.append(fitted[0] if fitted and fitted[0].n_label_tokens else None)
        if None in sides:  # both sides are needed; a pair that lost either reply teaches nothing
            stats.dropped_no_labels += 1
            continue
        pairs.append(TokenizedPair(sides[0], sides[1], len(pairs)))
        stats.examples += 1
        stats.tokens += pairs[-1].n_tokens
        stats.label_tokens += sides[0].n_label_tokens + sides[1].n_label_tokens
    return pairs, stats

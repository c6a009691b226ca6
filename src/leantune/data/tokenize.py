"""Chat examples -> token ids with labels only on what the model should learn to say.

We render the conversation with the model's own chat template turn by turn: the tokens between
"everything before this assistant turn + the generation prompt" and "everything up to the end of this
turn" are the assistant's, and only those carry labels, up to and including the end-of-turn token (so the
tuned model learns to stop). That works for any template whose rendering of a prefix of the conversation
is a prefix of the whole rendering, which we check rather than assume.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from .records import ChatExample

IGNORE = -100
# End-of-turn markers of common chat templates (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    source: str = ""
    segments: tuple[int, ...] | None = None  # a packed row: the lengths of the examples in it, in order
    shared_prefix: int = 0  # a packed row whose first segment is a prefix every later segment continues

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0  # cut to max_seq_len by the truncation policy
    split: int = 0  # plain-text rows split into several max_seq_len pieces
    dropped_too_long: int = 0  # truncation: drop
    dropped_no_labels: int = 0  # nothing left to learn after truncation
    tokens: int = 0
    label_tokens: int = 0
    longest: int = 0

    def describe(self, max_seq_len: int, truncation: str) -> str:
        return (f"{self.tokens} tokens ({self.label_tokens} trained), longest {self.longest}; over data.max_seq_len="
                f"{max_seq_len}: {self.truncated} truncated ({truncation}), {self.split} texts split, "
                f"{self.dropped_too_long} dropped; dropped with nothing left to learn: {self.dropped_no_labels}")


def end_of_turn_ids(tokenizer) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids


def render_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    # The template writes its own special tokens; adding a BOS here would double it for some models.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


TRAIN_ON = ("all_assistant", "last_assistant", "everything")


def tokenize_chat(
    tokenizer, example: ChatExample, eot_ids: set[int] | None = None, last_turn_only: bool = False, train_on: str = "all_assistant"
) -> TokenizedExample:
    """Untruncated ids and labels for one conversation: every assistant turn (default), only the last,
    or everything (system and user turns too)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("The model's tokenizer has no chat template, so chat data cannot be formatted for it. Use a chat/instruct model.")
    eot_ids = end_of_turn_ids(tokenizer) if eot_ids is None else eot_ids
    messages = example.messages
    full = render_ids(tokenizer, messages, add_generation_prompt=False)
    if train_on == "everything":
        return TokenizedExample(full, list(full), example.source)
    last_turn_only = last_turn_only or train_on == "last_assistant"
    labels = [IGNORE] * len(full)
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i in assistant_turns[-1:] if last_turn_only else assistant_turns:
        before = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(before)] != before or full[: len(through)] != through:
            raise DataError(
                f"{example.source}: the chat template does not render this conversation turn by turn "
                "(a prefix of the conversation does not tokenise to a prefix of the whole), so the assistant "
                "tokens cannot be located. Report the model name to leantune."
            )
        end = len(through)
        for j in range(len(before), len(through)):
            if full[j] in eot_ids:
                end = j + 1  # learn the end-of-turn token, not the template's whitespace after it
                break
        labels[len(before) : end] = full[len(before) : end]
    return TokenizedExample(full, labels, example.source)


def tokenize_text(tokenizer, example: ChatExample) -> TokenizedExample:
    """Continued pretraining: the text as the model's tokenizer encodes documents, ended with EOS, all learned."""
    ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return TokenizedExample(ids, [IGNORE] + ids[1:], example.source)  # the first token has nothing to predict it from


def tokenize_example(tokenizer, example: ChatExample, eot_ids: set[int] | None = None,
                     train_on: str = "all_assistant") -> TokenizedExample:
    if example.kind == "text":
        return tokenize_text(tokenizer, example)
    return tokenize_chat(tokenizer, example, eot_ids, train_on=train_on)


TRUNCATION = ("keep_end", "keep_start", "drop")


def fit_to_length(tok: TokenizedExample, max_seq_len: int, truncation: str, is_text: bool) -> list[TokenizedExample]:
    """A row over max_seq_len -> the rows to train on: text is split into pieces (nothing lost); chat rows are
    cut from the start (keep_end: the last answer and its end-of-turn token survive) or the end, or dropped."""
    n = len(tok.input_ids)
    if n <= max_seq_len:
        return [tok]
    if is_text:
        return [TokenizedExample(tok.input_ids[i : i + max_seq_len], [IGNORE] + tok.input_ids[i + 1 : i + max_seq_len], tok.source)
                for i in range(0, n, max_seq_len)]
    if truncation == "drop":
        return []
    if truncation == "keep_start":
        return [TokenizedExample(tok.input_ids[:max_seq_len], tok.labels[:max_seq_len], tok.source)]
    labels = list(tok.labels[n - max_seq_len :])
    labels[0] = IGNORE  # the first kept position has no context left to predict it from
    return [TokenizedExample(tok.input_ids[n - max_seq_len :], labels, tok.source)]


def start_tokenizing(tokenizer, truncation: str) -> tuple[set[int], TokenizeStats]:
    """The end-of-turn ids and fresh counters for a tokenising pass, after checking the truncation policy."""
    if truncation not in TRUNCATION:
        raise DataError(f"Unknown data.truncation '{truncation}'; use one of {', '.join(TRUNCATION)}.")
    return end_of_turn_ids(tokenizer), TokenizeStats()


def tokenize_examples(
    tokenizer, examples: list[ChatExample], max_seq_len: int, train_on: str = "all_assistant", truncation: str = "keep_end"
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenise and fit to max_seq_len by the truncation policy, counting what was cut so nothing is lost silently."""
    eot_ids, stats = start_tokenizing(tokenizer, truncation)
    out = []
    for example in examples:
        tok = tokenize_example(tokenizer, example, eot_ids, train_on=train_on)
        stats.longest = max(stats.longest, len(tok.input_ids))
        pieces = fit_to_length(tok, max_seq_len, truncation, example.kind == "text")
        if len(tok.input_ids) > max_seq_len:
            if example.kind == "text":
                stats.split += 1
            elif truncation == "drop":
                stats.dropped_too_long += 1
            else:
                stats.truncated += 1
        for piece in pieces:
            if piece.n_label_tokens == 0:
                stats.dropped_no_labels += 1
                continue
            stats.examples += 1
            stats.tokens += len(piece.input_ids)
            stats.label_tokens += piece.n_label_tokens
            out.append(piece)
    return out, stats

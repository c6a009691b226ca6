"""Multiple choice by log-likelihood: each question's own candidate answers, scored as the assistant's reply by
mean log-probability per token (a sum would favour short answers), the most likely one taken as the answer.
The general-knowledge score for forgetting: trivia questions with other questions' answers as distractors.

Each question's prompt runs once and its KV cache serves all its choices (evaluate/shared_prompt.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.records import Example
from ..data.tokenize import IGNORE, TokenizedExample, end_of_turn_ids, tokenize_chat
from ..models.adapters import eval_mode
from .scoring import score_rows
from .shared_prompt import score_shared_prompts, split_at_answer


@dataclass(frozen=True)
class Question:
    prompt: tuple[dict, ...]
    choices: tuple[str, ...]
    correct: int
    source: str = ""


def questions_with_distractors(examples: list[Example], n_choices: int = 4, seed: int = 0) -> list[Question]:
    """Each example's answer among n_choices - 1 other examples' answers (deterministic for a seed)."""
    rng = random.Random(seed)
    answers = sorted({ex.answer.strip() for ex in examples})
    out = []
    for ex in examples:
        right = ex.answer.strip()
        others = rng.sample([a for a in answers if a != right], min(n_choices - 1, len(answers) - 1))
        choices = others + [right]
        rng.shuffle(choices)
        out.append(Question(ex.prompt, tuple(choices), choices.index(right), ex.source))
    return out


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def choice_rows(tokenizer, question: Question, eot: set[int], score_end_of_turn: bool = True) -> list[TokenizedExample]:
    rows = [tokenize_chat(tokenizer, Example(question.prompt + ({"role": "assistant", "content": c},)), eot, last_turn_only=True)
            for c in question.choices]
    return rows if score_end_of_turn else [answer_tokens_only(row, eot) for row in rows]


def answer_tokens_only(row: TokenizedExample, eot: set[int]) -> TokenizedExample:
    """The row with its end of turn (and whatever follows it) no longer scored: only the answer's own tokens."""
    labels = list(row.labels)
    ends = [i for i, (token, label) in enumerate(zip(row.input_ids, labels)) if label != IGNORE and token in eot]
    if ends and any(label != IGNORE for label in labels[: ends[0]]):
        labels[ends[0] :] = [IGNORE] * (len(labels) - ends[0])
    return TokenizedExample(row.input_ids, labels, row.source, row.segments)


@torch.no_grad()
def choice_scores(model, tokenizer, questions: list[Question], batch_size: int = 16, per_token: bool = True,
                  share_prompt: bool = True) -> list[list[float]]:
    """Each question's choices' log-likelihoods (mean per token by default). With share_prompt, questions whose
    choices all start after the same prompt tokens (every chat template we know) run their prompt once.

    A mean per token scores the answer's own tokens: the end of turn would be a third to a half of a one-word
    answer's score and measures whether the model stops after one word, not whether the word is right (training
    on any one-word task lifted the base's analogy score from 38% to ~60%, bench/results/quality.json at e0c5640).
    A summed score (a label as the whole reply) keeps it: 'spam' must be all of the reply."""
    eot = end_of_turn_ids(tokenizer)
    groups = [choice_rows(tokenizer, q, eot, score_end_of_turn=not per_token) for q in questions]
    shareable = [share_prompt and len({tuple(split_at_answer(r)[0]) for r in g}) == 1 for g in groups]
    out: list[list[float] | None] = [None] * len(questions)
    with eval_mode(model):
        shared = sorted((i for i, ok in enumerate(shareable) if ok), key=lambda i: len(groups[i][0].input_ids))
        # batch_size prompts at a time; their replies up to 4 x batch_size rows and 32 x batch_size tokens at a
        # time: on a CPU a forward pass has a fixed cost (~0.15 s for SmolLM2) that a few short rows do not amortise
        for start in range(0, len(shared), batch_size):
            chunk = shared[start : start + batch_size]
            for i, scores in zip(chunk, score_shared_prompts(model, tokenizer.pad_token_id, [groups[i] for i in chunk],
                                                             per_token, 4 * batch_size, 32 * batch_size)):
                out[i] = scores
        rest = [i for i, ok in enumerate(shareable) if not ok]
        if rest:
            rows = [r for i in rest for r in groups[i]]
            flat = score_rows(model, tokenizer.pad_token_id, rows, batch_size, per_token=per_token).tolist()
            for i in rest:
                out[i], flat = flat[: len(groups[i])], flat[len(groups[i]) :]
    return out  # type: ignore[return-value]


def multiple_choice_correct(model, tokenizer, questions: list[Question], batch_size: int = 16, share_prompt: bool = True) -> list[float]:
    """1.0 where the most likely choice is the right one, else 0.0, per question."""
    scores = choice_scores(model, tokenizer, questions, batch_size, share_prompt=share_prompt)
    return [float(argmax(s) == q.correct) for q, s in zip(questions, scores)]


def multiple_choice_accuracy(model, tokenizer, questions: list[Question], batch_size: int = 16) -> float:
    correct = multiple_choice_correct(model, tokenizer, questions, batch_size)
    return sum(correct) / max(1, len(correct))

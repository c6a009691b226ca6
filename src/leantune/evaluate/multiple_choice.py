"""Multiple choice by log-likelihood: each question's own candidate answers, scored as the assistant's reply by
mean log-probability per token (a sum would favour short answers), the most likely one taken as the answer.
The general-knowledge score for forgetting: trivia questions with other questions' answers as distractors."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.records import Example
from ..data.tokenize import end_of_turn_ids, tokenize_chat
from .scoring import score_rows


@dataclass(frozen=True)
class Question:
    prompt: tuple[dict, ...]
    choices: tuple[str, ...]
    correct: int


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
        out.append(Question(ex.prompt, tuple(choices), choices.index(right)))
    return out


@torch.no_grad()
def multiple_choice_accuracy(model, tokenizer, questions: list[Question], batch_size: int = 16) -> float:
    eot = end_of_turn_ids(tokenizer)
    rows = []
    for q in questions:
        for choice in q.choices:
            example = Example(q.prompt + ({"role": "assistant", "content": choice},))
            rows.append(tokenize_chat(tokenizer, example, eot, last_turn_only=True))
    scores = score_rows(model, tokenizer.pad_token_id, rows, batch_size, per_token=True)
    correct, start = 0, 0
    for q in questions:
        best = int(scores[start : start + len(q.choices)].argmax())
        correct += best == q.correct
        start += len(q.choices)
    return correct / max(1, len(questions))

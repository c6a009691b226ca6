"""Multiple choice by log-likelihood: each question's own candidate answers, scored as the assistant's reply by
mean log-probability per token (a sum would favour short answers), the most likely one taken as the answer.
The general-knowledge score for forgetting: trivia questions with other questions' answers as distractors."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.batches import collate
from ..data.records import Example
from ..data.tokenize import end_of_turn_ids, tokenize_chat
from ..models.forward import sequence_logprobs


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
    rows, owner = [], []
    for qi, q in enumerate(questions):
        for choice in q.choices:
            example = Example(q.prompt + ({"role": "assistant", "content": choice},))
            rows.append(tokenize_chat(tokenizer, example, eot, last_turn_only=True))
            owner.append(qi)
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    scores = torch.empty(len(rows))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logps = sequence_logprobs(model, collate([rows[i] for i in chunk], tokenizer.pad_token_id)).cpu()
        scores[chunk] = logps / torch.tensor([max(rows[i].n_label_tokens, 1) for i in chunk], dtype=torch.float32)
    model.train(was_training)
    correct, start = 0, 0
    for q in questions:
        best = int(scores[start : start + len(q.choices)].argmax())
        correct += best == q.correct
        start += len(q.choices)
    return correct / max(1, len(questions))

"""The general suite: what a base model knows that a fine-tune should not lose, from data the install ships.

- `trivia`: question/answer pairs of chatterbot-corpus 1.2.0 (data.builtin.load_trivia), each answer among
  three other questions' answers;
- `analogies`: the word-analogy file `questions-words.txt` shipped in gensim 4.4.0's test data (Mikolov et al.,
  Apache-2.0), sections capital-common-countries, capital-world, currency and family, as "A is to B as C is
  to ?" with three other answers of the same section as distractors. Only the data file is read: gensim is
  installed with --no-deps and never imported.

Both are multiple choice scored by log-likelihood, so a score needs no generation and no answer parsing.
"""

from __future__ import annotations

import random

from ..data.builtin import analogy_sections, load_trivia
from .multiple_choice import Question, questions_with_distractors

ANALOGY_SECTIONS = ("capital-common-countries", "capital-world", "currency", "family")
ANALOGIES_PER_SECTION = 60  # 240 questions: a +-3 pt standard error at 50% accuracy
GENERAL_TASKS = ("trivia", "analogies")


def analogy_questions(per_section: int = ANALOGIES_PER_SECTION, seed: int = 0, n_choices: int = 4) -> list[Question]:
    sections = analogy_sections()
    rng = random.Random(seed)
    questions = []
    for name in ANALOGY_SECTIONS:
        rows = sections.get(name, [])
        answers = sorted({r[3] for r in rows})
        for a, b, c, d in rng.sample(rows, min(per_section, len(rows))):
            others = [w for w in answers if w not in (a, b, c, d)]
            choices = rng.sample(others, n_choices - 1) + [d]
            rng.shuffle(choices)
            prompt = ({"role": "user", "content": f"Complete the analogy with one word. {a} is to {b} as {c} is to"},)
            questions.append(Question(prompt, tuple(choices), choices.index(d), source=f"questions-words.txt:{name}"))
    return questions


def trivia_questions(seed: int = 0) -> list[Question]:
    return questions_with_distractors(load_trivia(), n_choices=4, seed=seed)


def general_questions(name: str) -> list[Question]:
    return {"trivia": trivia_questions, "analogies": analogy_questions}[name]()

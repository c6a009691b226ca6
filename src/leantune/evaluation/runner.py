"""Scoring tasks for one or two models on the same items, within a time budget.

Items are taken in a fixed random order, a chunk at a time, each chunk scored by every model before the next;
when the budget is spent (and at least `min_items` are done) the task stops, so base and tuned always share
their items and a shortened task is a random sample, not its first rows."""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Callable

from ..data.tokenize import end_of_turn_ids, fit_to_length, tokenize_example
from .generation import greedy_answers
from .metrics import exact_match, paired_bootstrap, token_f1
from .multiple_choice import Question, argmax, choice_scores
from .result import Forgetting, MetricScore, TaskResult
from .scoring import score_rows
from .tasks import Task, shuffled

FEW_SHOT = "few-shot"
CHUNK = 32
BOXED_CHUNK = 8


@dataclass
class Contender:
    name: str  # 'base', 'tuned' or 'model'
    model: object
    context: Callable[[], AbstractContextManager]  # puts the model in the state to score (e.g. adapter off)
    # the task as this contender sees it (the few-shot baseline adds its shots); None: it does not score that task
    task_view: Callable[[Task], Task | None] | None = None
    max_seq_len: int | None = None  # a longer limit than the run's (few-shot prompts)


@dataclass
class Settings:
    batch_size: int = 16
    max_seq_len: int = 2048
    budget_s: float | None = None  # per task; None: every item
    min_items: int = CHUNK
    limit: int | None = None  # at most this many items per task


def score_chunk(task: Task, items: list[int], model, tokenizer, settings: Settings, answer_tokens: int) -> dict[str, list]:
    """Per-item values of each of the task's metrics for one model (loss: (log-likelihood, labelled tokens))."""
    out: dict[str, list] = {}
    bs = settings.batch_size
    for metric in task.metrics:
        if metric == "loss":
            eot = end_of_turn_ids(tokenizer)
            pieces, owner = [], []
            for i in items:
                ex = task.examples[i]
                for piece in fit_to_length(tokenize_example(tokenizer, ex, eot), settings.max_seq_len, "keep_end", ex.kind == "text"):
                    if piece.n_label_tokens:
                        pieces.append(piece), owner.append(i)
            logps = score_rows(model, tokenizer.pad_token_id, pieces, bs).tolist() if pieces else []
            per_item = {i: [0.0, 0] for i in items}
            for i, lp, piece in zip(owner, logps, pieces):
                per_item[i][0] += lp
                per_item[i][1] += piece.n_label_tokens
            out[metric] = [tuple(per_item[i]) for i in items]
        elif metric == "accuracy":
            questions = [Question(task.examples[i].prompt, task.labels, 0) for i in items]
            scores = choice_scores(model, tokenizer, questions, bs, per_token=False)  # summed: a label is a whole reply
            out[metric] = [(task.labels[argmax(s)], (task.examples[i].label or task.examples[i].answer).strip())
                           for i, s in zip(items, scores)]
        elif metric in ("multiple_choice", "preference_accuracy"):
            questions = [task.questions[i] for i in items]
            # multiple choice: mean per token (a sum favours short answers); a preference: the whole reply, as DPO sees it
            scores = choice_scores(model, tokenizer, questions, bs, per_token=metric == "multiple_choice")
            out[metric] = [float(argmax(s) == q.correct) for q, s in zip(questions, scores)]
        else:  # exact_match, token_f1
            examples = [task.examples[i] for i in items]
            replies = greedy_answers(model, tokenizer, examples, max_new_tokens=answer_tokens, batch_size=bs)
            fn = exact_match if metric == "exact_match" else token_f1
            out[metric] = [fn(reply, ex.answer) for reply, ex in zip(replies, examples)]
    return out


def summarise(metric: str, values: list) -> tuple[float, dict[str, float]]:
    """(the metric's value, extra values) from per-item values."""
    if metric == "loss":
        total, n = sum(v[0] for v in values), sum(v[1] for v in values)
        loss = -total / max(n, 1)
        return loss, {"perplexity": math.exp(min(loss, 50))}
    if metric == "accuracy":
        correct = [p == t for p, t in values]
        by_label: dict[str, list[bool]] = {}
        for (p, t), ok in zip(values, correct):
            by_label.setdefault(t, []).append(ok)
        balanced = sum(sum(v) / len(v) for v in by_label.values()) / max(len(by_label), 1)
        return sum(correct) / max(len(correct), 1), {"balanced_accuracy": balanced}
    return sum(values) / max(len(values), 1), {}


def item_points(metric: str, values: list) -> list[float]:
    """Per-item values a paired bootstrap can resample (not for loss: its items differ in weight)."""
    if metric == "accuracy":
        return [float(p == t) for p, t in values]
    return list(values)


def evaluate_task(task: Task, contenders: list[Contender], tokenizer, settings: Settings, progress=None) -> TaskResult:
    started = time.perf_counter()
    order = shuffled(len(task))
    if settings.limit:
        order = order[: settings.limit]
    answer_tokens = 16
    if any(m in ("exact_match", "token_f1") for m in task.metrics):
        longest = max(len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) for ex in task.examples)
        answer_tokens = min(256, longest + 8)  # room for the longest reference answer, and no more
    views = {c.name: c.task_view(task) if c.task_view else task for c in contenders}
    contenders = [c for c in contenders if views[c.name] is not None]
    values: dict[str, dict[str, list]] = {c.name: {m: [] for m in task.metrics} for c in contenders}
    done = 0
    # a time-boxed task checks its clock every few items, so it overshoots its share by little
    chunk = CHUNK if settings.budget_s is None else min(BOXED_CHUNK, settings.min_items)
    while done < len(order):
        chunk_started = time.perf_counter()
        items = order[done : done + chunk]
        for c in contenders:
            own = settings if c.max_seq_len is None else replace(settings, max_seq_len=c.max_seq_len)
            with c.context():
                for metric, v in score_chunk(views[c.name], items, c.model, tokenizer, own, answer_tokens).items():
                    values[c.name][metric].extend(v)
        done += len(items)
        if progress:
            progress(task.name, done, len(order))
        last_chunk_s = time.perf_counter() - chunk_started
        # stop before a chunk that would end past the budget (the last one's time is the estimate)
        if settings.budget_s is not None and done >= settings.min_items and \
                time.perf_counter() - started + last_chunk_s > settings.budget_s:
            break
    metrics = []
    for metric in task.metrics:
        scores, extra = {}, {}
        for c in contenders:
            scores[c.name], more = summarise(metric, values[c.name][metric])
            for k, v in more.items():
                extra.setdefault(k, {})[c.name] = v
        score = MetricScore(metric, scores, extra)
        if {"base", "tuned"} <= scores.keys():
            score.delta = scores["tuned"] - scores["base"]
            if metric != "loss":
                _, lo, hi = paired_bootstrap(item_points(metric, values["tuned"][metric]), item_points(metric, values["base"][metric]))
                score.ci = (lo, hi)
        if {FEW_SHOT, "tuned"} <= scores.keys():
            score.vs_few_shot = scores["tuned"] - scores[FEW_SHOT]
            if metric != "loss":
                _, lo, hi = paired_bootstrap(item_points(metric, values["tuned"][metric]),
                                             item_points(metric, values[FEW_SHOT][metric]))
                score.vs_few_shot_ci = (lo, hi)
        metrics.append(score)
    return TaskResult(task.name, done, len(task), task.general, metrics, time.perf_counter() - started, values)


def forgetting_score(results: list[TaskResult]) -> Forgetting | None:
    """base - tuned over every general-suite question, each question weighing the same."""
    base, tuned, names = [], [], []
    for r in results:
        items = r.items
        if not r.general or "base" not in items or "tuned" not in items:
            continue
        metric = next(m.metric for m in r.metrics)
        base += item_points(metric, items["base"][metric])
        tuned += item_points(metric, items["tuned"][metric])
        names.append(r.task)
    if not base:
        return None
    points, lo, hi = paired_bootstrap(base, tuned)
    return Forgetting(points * 100, (lo * 100, hi * 100), len(base), names)

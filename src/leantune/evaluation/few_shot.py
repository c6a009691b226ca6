"""The few-shot baseline: was fine-tuning worth it against putting k training rows in the prompt?

The base model (adapter off) answers each held-out item after k of the run's own training rows, given as earlier
user / assistant turns of the same chat (the model's chat template renders them, as it renders the item). For a
classification task the shots are dealt round-robin across the labels, so the base sees every answer it may give;
rows much longer than usual are not used as shots. k is the largest up to `max_shots` whose longest prompt fits the
model's context window. Only the run's own tasks get the baseline (shots from its training rows mean nothing for the
general suite).

What it costs: every request of the few-shot model carries the shots, measured in tokens as the chat template
renders them, priced per million prompt tokens; the fine-tune paid once. Break-even: the request count at which the
shots' prompt tokens have cost what the fine-tune did."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, replace

from ..data.records import Example
from ..data.tokenize import end_of_turn_ids, tokenize_example
from ..errors import UserError
from .tasks import Task

DEFAULT_MAX_SHOTS = 8
# a typical hosted price for an 8B-class model's prompt tokens (2025 list prices run $0.05-0.20 per million);
# `--prompt-usd-per-mtok` sets the user's own
DEFAULT_PROMPT_USD_PER_MTOK = 0.10
LONG_ROW = 2.0  # rows longer than this many times the median are not used as shots


@dataclass
class FewShot:
    shots: list[Example]

    def turns(self) -> tuple[dict, ...]:
        out: list[dict] = []
        for shot in self.shots:
            out += [m for m in shot.prompt if m["role"] != "system"] + [{"role": "assistant", "content": shot.answer}]
        return tuple(out)

    def with_shots(self, messages: tuple[dict, ...]) -> tuple[dict, ...]:
        """The shots as earlier turns, after the item's system message if it has one."""
        system = tuple(m for m in messages[:1] if m["role"] == "system")
        return system + self.turns() + tuple(messages[len(system):])

    def view(self, task: Task) -> Task | None:
        """The task as the few-shot model sees it; None for the general suite."""
        if task.general:
            return None
        examples = [replace(ex, messages=self.with_shots(ex.messages)) if ex.kind == "chat" else ex for ex in task.examples]
        questions = [replace(q, prompt=self.with_shots(q.prompt)) for q in task.questions]
        return replace(task, examples=examples, questions=questions)


def _length(tokenizer, example: Example, eot) -> int:
    return len(tokenize_example(tokenizer, example, eot).input_ids)


def choose_shots(train: list[Example], eval_examples: list[Example], tokenizer, context_tokens: int,
                 max_shots: int = DEFAULT_MAX_SHOTS, labels: tuple[str, ...] = (), seed: int = 0) -> FewShot:
    """Up to max_shots training rows, as many as fit the context with the longest held-out item."""
    chat = [ex for ex in train if ex.kind == "chat"]
    if not chat:
        raise UserError("--baseline few-shot needs chat rows (a prompt and an answer) in the run's training data; "
                        "this run trained on plain text or preference pairs.")
    eot = end_of_turn_ids(tokenizer)
    rng = random.Random(seed)
    pool = rng.sample(chat, min(len(chat), 400))
    lengths = {id(ex): _length(tokenizer, ex, eot) for ex in pool}
    cap = LONG_ROW * statistics.median(lengths.values())
    pool = [ex for ex in pool if lengths[id(ex)] <= cap]
    if labels:  # round-robin over the labels, in a seeded order
        by_label = {label: [ex for ex in pool if (ex.label or ex.answer).strip() == label] for label in labels}
        ordered = []
        while any(by_label.values()):
            for label in labels:
                if by_label[label]:
                    ordered.append(by_label[label].pop())
        pool = ordered
    longest_item = max((_length(tokenizer, ex, eot) for ex in eval_examples if ex.kind == "chat"), default=0)
    shots: list[Example] = []
    longest = longest_item  # the longest prompt so far: that item after every shot taken
    for candidate in pool[:max_shots]:
        longest += lengths[id(candidate)]
        if longest > context_tokens:
            break
        shots.append(candidate)
    if not shots:
        raise UserError(f"--baseline few-shot: not even one training row fits the model's context of {context_tokens} "
                        "tokens beside the longest held-out item; this task cannot be prompted few-shot.")
    return FewShot(shots)


def extra_prompt_tokens(few_shot: FewShot, examples: list[Example], tokenizer) -> float:
    """Mean prompt tokens the shots add to a request, as the chat template renders them."""
    eot = end_of_turn_ids(tokenizer)
    chat = [ex for ex in examples if ex.kind == "chat"][:50]
    added = [_length(tokenizer, replace(ex, messages=few_shot.with_shots(ex.messages)), eot) - _length(tokenizer, ex, eot)
             for ex in chat]
    return sum(added) / max(len(added), 1)


@dataclass
class FewShotCost:
    shots: int
    extra_prompt_tokens: float  # per request
    prompt_usd_per_mtok: float
    usd_per_million_requests: float  # what the shots cost in prompt tokens over a million requests
    training_usd: float | None
    break_even_requests: float | None  # requests after which the fine-tune was the cheaper choice

    def describe(self) -> str:
        line = (f"Few-shot's {self.shots} shots add {self.extra_prompt_tokens:,.0f} prompt tokens a request: "
                f"${self.usd_per_million_requests:,.2f} per million requests at ${self.prompt_usd_per_mtok:g} per "
                "million prompt tokens")
        if self.break_even_requests is not None:
            return line + (f"; the fine-tune (${self.training_usd:,.4f}) pays for itself after "
                           f"{self.break_even_requests:,.0f} requests.")
        return line + "; the fine-tune's cost is unknown (no price: set cost.usd_per_hour), so no break-even."


def few_shot_cost(few_shot: FewShot, examples: list[Example], tokenizer, prompt_usd_per_mtok: float,
                  training_usd: float | None) -> FewShotCost:
    extra = extra_prompt_tokens(few_shot, examples, tokenizer)
    per_request = extra * prompt_usd_per_mtok / 1e6
    break_even = training_usd / per_request if training_usd and per_request > 0 else None
    return FewShotCost(len(few_shot.shots), extra, prompt_usd_per_mtok, per_request * 1e6, training_usd, break_even)

"""Against forgetting: replay mixes general-domain examples into the training rows, so every epoch keeps
rehearsing what the base model could already do.

`replay_fraction` is a share of the trained tokens by default (`replay_balance: tokens`): the loss is a mean over
trained tokens, so that is the share of the loss replay takes. Balanced by examples instead, 10% of rows were 40%
of the trained tokens on sms-spam (trivia answers are long, spam/ham labels one token) and the task was not
learned (bench/results/quality.json). DPO rows (pairs) have no label tokens and are balanced by examples.

The replayed rows are appended after the task's, and the batch order (data/batches.epoch_order) spreads them evenly
through the task rows' own order: the run meets the same task examples in the same order as the run without replay
at its seed. Until that, the order was one permutation of both together, so adding replay also drew other task
examples (on sms-spam, 40 steps see 320 of ~5,000), and its effect on the task could not be told from the draw's."""

from __future__ import annotations

import random

from ..lineage import examples_for


def _weight(row, by: str) -> int:
    tokens = getattr(row, "n_label_tokens", None)
    return 1 if by == "examples" or tokens is None else tokens


def replay_rows(train_rows: list, replay_rows_pool: list, fraction: float, seed: int, by: str = "tokens") -> list:
    """Training rows with general-domain rows mixed in so that they make up `fraction` of the total, counted in
    trained tokens (`by='tokens'`) or in rows (`by='examples'`)."""
    if fraction <= 0 or not replay_rows_pool:
        return train_rows
    wanted = fraction / (1 - fraction) * sum(_weight(r, by) for r in train_rows)
    rng = random.Random(seed)
    added, total = [], 0
    for _ in range(10 * len(replay_rows_pool) + int(wanted) + 1):  # bounded: rows without trained tokens add 0
        if total >= wanted:
            break
        row = replay_rows_pool[rng.randrange(len(replay_rows_pool))]
        weight = _weight(row, by)
        if added and abs(total + weight - wanted) > abs(total - wanted):
            break  # one more row would overshoot by more than stopping undershoots
        added.append(row)
        total += weight
    return train_rows + added


def mix_replay(objective, tokenizer, train_rows: list, config, note) -> list:
    forget = config.forgetting
    if not forget.replay_fraction:
        return train_rows
    replay, _ = objective.tokenize(tokenizer, examples_for(forget.replay_data, config, "forgetting.replay_data"))
    by = forget.replay_balance
    mixed = replay_rows(train_rows, replay, forget.replay_fraction, config.training.seed, by)
    added = mixed[len(train_rows):]
    task_tokens, replay_tokens = (sum(_weight(r, "tokens") for r in rows) for rows in (train_rows, added))
    note(f"replay: {len(added)} rows from {forget.replay_data} mixed into {len(train_rows)} training rows, "
         f"{forget.replay_fraction:.0%} of the {by} asked; they are {len(added) / max(len(mixed), 1):.0%} of the "
         f"rows and {replay_tokens / max(task_tokens + replay_tokens, 1):.0%} of the trained tokens")
    return mixed

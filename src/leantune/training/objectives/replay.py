"""Against forgetting: replay mixes general-domain examples into the training rows (`replay_fraction` of them),
so every epoch keeps rehearsing what the base model could already do."""

from __future__ import annotations

import random

from ...data import load_examples


def replay_rows(train_rows: list, replay_rows_pool: list, fraction: float, seed: int) -> list:
    """Training rows with general-domain rows mixed in so that they make up `fraction` of the total."""
    if fraction <= 0 or not replay_rows_pool:
        return train_rows
    wanted = round(fraction / (1 - fraction) * len(train_rows))
    rng = random.Random(seed)
    return train_rows + [replay_rows_pool[rng.randrange(len(replay_rows_pool))] for _ in range(wanted)]


def mix_replay(objective, tokenizer, train_rows: list, config, note) -> list:
    forget = config.forgetting
    if not forget.replay_fraction:
        return train_rows
    replay, _ = objective.tokenize(tokenizer, load_examples(forget.replay_data))
    mixed = replay_rows(train_rows, replay, forget.replay_fraction, config.training.seed)
    note(f"replay: {len(mixed) - len(train_rows)} rows from {forget.replay_data} mixed into {len(train_rows)} "
         f"training rows ({forget.replay_fraction:.0%} of the total)")
    return mixed

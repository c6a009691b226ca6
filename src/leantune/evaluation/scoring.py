"""Scoring many candidate replies at once: the log-probability of each row's labelled tokens, in length-sorted
batches (little padding), returned in the rows' original order."""

from __future__ import annotations

import torch

from ..data.batches import collate
from ..data.tokenize import TokenizedExample
from ..models.adapters import eval_mode
from ..models.forward import sequence_logprobs


@torch.no_grad()
def score_rows(model, pad_id: int, rows: list[TokenizedExample], batch_size: int = 16, per_token: bool = False) -> torch.Tensor:
    """Summed (or, with per_token, mean) log-probability of each row's labelled tokens."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    scores = torch.empty(len(rows))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            logps = sequence_logprobs(model, collate([rows[i] for i in chunk], pad_id)).float().cpu()
            if per_token:
                logps = logps / torch.tensor([max(rows[i].n_label_tokens, 1) for i in chunk], dtype=torch.float32)
            scores[chunk] = logps
    return scores

"""Deterministic batching: the order is a function of (seed, epoch), so a resumed run sees exactly the
batches an uninterrupted run would have seen from the same data position."""

from __future__ import annotations

import torch

from .tokenize import IGNORE, TokenizedExample


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def collate(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch (not to max_seq_len: padding is paid-for compute)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def micro_batches_for_step(
    examples: list[TokenizedExample], step: int, micro_batch_size: int, grad_accum: int, seed: int
) -> list[list[TokenizedExample]]:
    """The micro-batches of optimizer step `step` (0-based). Epochs follow each other without a gap;
    the last step of an epoch may be smaller."""
    per_step = micro_batch_size * grad_accum
    steps_per_epoch = -(-len(examples) // per_step)
    epoch, within = divmod(step, steps_per_epoch)
    order = epoch_order(len(examples), seed, epoch)
    chosen = [examples[i] for i in order[within * per_step : (within + 1) * per_step]]
    return [chosen[i : i + micro_batch_size] for i in range(0, len(chosen), micro_batch_size)]


def steps_per_epoch(n_examples: int, micro_batch_size: int, grad_accum: int) -> int:
    return -(-n_examples // (micro_batch_size * grad_accum))

"""What a training returns (`leantune.train(...)`), and the peak memory it reports."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import torch


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: the whole process's peak


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    eval_loss: float | None
    tokens: int
    elapsed_s: float  # time inside training steps (what tokens/s is measured over)
    tokens_per_s: float
    peak_memory_mb: float
    cost_usd: float | None  # billed: the whole process's wall time at the run's price; None without a price
    billed_s: float = 0.0
    model: object = field(repr=False, default=None)
    tokenizer: object = field(repr=False, default=None)
    eval_examples: list = field(repr=False, default_factory=list)
    evaluation: object = field(repr=False, default=None)  # evaluation.result.EvalResult when eval.after_train ran

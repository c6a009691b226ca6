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
    update: dict | None = field(repr=False, default=None)  # an update's parent-vs-child comparison (update.json)

    def summary(self) -> str:
        """One line for the end of `leantune train`."""
        eval_part = f", eval loss {self.eval_loss:.4f}" if self.eval_loss is not None else ""
        cost = f"${self.cost_usd:.4f}" if self.cost_usd is not None else "cost unknown (no price)"
        return (f"{self.steps} steps, loss {self.final_loss:.4f}{eval_part}, {self.tokens_per_s:.0f} tok/s, {cost} for "
                f"{self.billed_s:.0f} s. Adapter and report in {self.run_dir}")

"""`leantune demo` / `make demo`: LoRA fine-tune of the bundled SmolLM2-135M on the bundled SMS spam data
on a CPU, then the held-out accuracy of the base model and of the tuned model on the same examples.

The settings are sized for 2 CPU cores and at most ~10 minutes in all (README has the measured time):
sequences padded only to the longest in each batch (median SMS example: 73 tokens), and a few dozen optimizer steps, which is enough
because the task is learning a two-word answer format and a decision the base model half-knows.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from . import atomic
from .config import RunConfig
from .data.builtin import SMS_LABELS
from .evaluation.classify import classification_accuracy
from .runs.report import append_to_report
from .runs.rundir import RunDir
from .training.api import train

DEMO_OVERRIDES = {
    "model": {"base": "smollm2-135m"},
    "data": {"train": "sms-spam", "eval_size": 200, "max_seq_len": 256},
    "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.05},
    "training": {"max_steps": 80, "micro_batch_size": 8, "lr": 5e-4, "warmup_ratio": 0.1, "checkpoint_every": 20, "eval_every": 40, "seed": 0},
    "output": {"name": "demo-sms-spam"},
}


def demo_config(runs_dir: str = "runs", steps: int | None = None) -> RunConfig:
    config = RunConfig.model_validate(DEMO_OVERRIDES)
    config.output.runs_dir = runs_dir
    if steps:
        config.training.max_steps = steps
    return config


def run_demo(runs_dir: str = "runs", steps: int | None = None, console: Console | None = None,
             started_at: float | None = None) -> dict:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    config = demo_config(runs_dir, steps)
    console.print(f"[bold]leantune demo[/]: LoRA on {config.model.base}, data {config.data.train}, {config.training.max_steps} steps")
    result = train(config, console=console, allow_duplicate=True, started_at=started_at)  # a demo is meant to be run again
    console.print(f"evaluating base and tuned model on the same {len(result.eval_examples)} held-out messages ...")
    model, tokenizer, examples = result.model, result.tokenizer, result.eval_examples
    labels = list(SMS_LABELS)
    t0 = time.perf_counter()
    with model.disable_adapter():
        base = classification_accuracy(model, tokenizer, examples, labels)
    tuned = classification_accuracy(model, tokenizer, examples, labels)
    eval_seconds = time.perf_counter() - t0
    total = time.perf_counter() - started

    table = Table(title=f"held-out accuracy, {base.n} SMS ({sum(1 for e in examples if e.answer == 'spam')} spam)")
    for col in ("model", "accuracy", "balanced acc.", "spam recall", "ham recall"):
        table.add_column(col)
    for name, r in (("base (no adapter)", base), ("tuned (LoRA)", tuned)):
        table.add_row(name, f"{r.accuracy:.1%}", f"{r.balanced_accuracy:.1%}", f"{r.recall.get('spam', 0):.1%}", f"{r.recall.get('ham', 0):.1%}")
    Console().print(table)
    console.print(
        f"always answering 'ham' would score {base.majority_baseline:.1%}. Training {result.elapsed_s:.0f}s, "
        f"eval {eval_seconds:.0f}s, total {total:.0f}s. Run directory: {result.run_dir}"
    )
    summary = {
        "base": base.to_dict(),
        "tuned": tuned.to_dict(),
        "train_seconds": result.elapsed_s,
        "eval_seconds": eval_seconds,
        "total_seconds": total,
        "steps": result.steps,
        "run_dir": str(result.run_dir),
    }
    atomic.write_json(result.run_dir / "demo.json", summary)
    append_to_report(
        RunDir(result.run_dir),
        "## Held-out classification accuracy (log-likelihood of 'spam' vs 'ham')\n\n"
        "| model | accuracy | balanced accuracy |\n|---|---|---|\n"
        f"| base | {base.accuracy:.1%} | {base.balanced_accuracy:.1%} |\n"
        f"| tuned | {tuned.accuracy:.1%} | {tuned.balanced_accuracy:.1%} |\n",
    )
    return summary

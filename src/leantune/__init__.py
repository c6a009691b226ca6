"""leantune: fine-tune open-weight language models for the least money that does the job.

`leantune.train(...)`, `leantune.evaluate(...)` and `leantune.load_base(...)` are plain functions that import the
heavy parts (torch, transformers) when called, so `import leantune` stays cheap for the verbs that touch no model.
"""

from __future__ import annotations

from .config import RunConfig, load_config

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Fine-tune: see `leantune.training.api.train` for the arguments. Returns a TrainResult."""
    from .training.api import train as run_training

    return run_training(*args, **kwargs)


def evaluate(*args, **kwargs):
    """Score a run against its base, or a model alone: see `leantune.evaluation.api.evaluate`. Returns an EvalResult."""
    from .evaluation.api import evaluate as run_evaluation

    return run_evaluation(*args, **kwargs)


def load_base(*args, **kwargs):
    """Load a base model and its tokenizer: see `leantune.models.loading.load_base`."""
    from .models.loading import load_base as load

    return load(*args, **kwargs)


__all__ = ["RunConfig", "evaluate", "load_base", "load_config", "train"]

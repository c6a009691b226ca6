"""leantune: fine-tune open-weight language models for the least money that does the job.

The heavy pieces (torch, transformers) are imported on first use, so `import leantune` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name):
    if name == "train":
        from .train import train

        return train
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    if name == "load_base":
        from .models import load_base

        return load_base
    if name in ("RunConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["RunConfig", "evaluate", "load_base", "load_config", "train"]

"""The loop: objectives, accumulation, schedule, checkpoint/resume, signals.

Only signals is imported eagerly; the rest pulls in torch, which `leantune plan` must not pay for.
"""

from .signals import BudgetReached, Preempted, TrainingStopped


def __getattr__(name):
    if name in ("train", "TrainResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["BudgetReached", "Preempted", "TrainResult", "TrainingStopped", "train"]

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


def _train(*args, **kwargs):
    from .api import train

    return train(*args, **kwargs)


from ..callable_module import make_callable  # noqa: E402

make_callable(__name__, _train)  # `leantune.train(...)` even after `import leantune.train`

"""Evaluation: task metrics and the forgetting check, for a run (tuned vs base) or a plain model."""

from .api import evaluate
from .classify import ClassificationResult, classification_accuracy, classify
from .result import EvalResult

__all__ = ["ClassificationResult", "EvalResult", "classification_accuracy", "classify", "evaluate"]

from ..callable_module import make_callable

make_callable(__name__, evaluate)

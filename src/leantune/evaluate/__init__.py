"""Task metrics. For now: classification accuracy by comparing answer log-likelihoods."""

from .classify import ClassificationResult, classify, classification_accuracy

__all__ = ["ClassificationResult", "classification_accuracy", "classify"]

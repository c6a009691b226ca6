"""Keeping a model current: drift detection (check.py over the statistics in stats.py)."""

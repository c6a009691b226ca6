"""Evaluation: task metrics and the forgetting check, for a run (tuned vs base) or a plain model.
`api.evaluate` is the entry point (`leantune.evaluate`)."""

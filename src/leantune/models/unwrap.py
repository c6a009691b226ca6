"""The transformers model inside whatever leantune wrapped it in."""

from __future__ import annotations


def transformers_model(model):
    """The transformers model under a PEFT wrapper, or `model` itself when it is not wrapped: where its config,
    decoder and output layer are."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model

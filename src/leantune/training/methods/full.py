"""Full fine-tuning: every weight trains; the result is a whole Hugging Face model directory (tokenizer included)."""

from __future__ import annotations

from pathlib import Path

from .base import Method


class Full(Method):
    name = "full"
    trains_base_weights = True

    def describe(self) -> str:
        return "full fine-tuning" + (" (8-bit AdamW)" if self.config.optimizer == "adamw8bit" else "")

    def attach(self, model, seed: int, total_steps: int):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def saved_to(self, run) -> Path:
        return run.full_model

    def save_extra(self, tokenizer, folder: Path) -> None:
        tokenizer.save_pretrained(folder)

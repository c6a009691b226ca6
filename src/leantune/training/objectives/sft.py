"""Supervised fine-tuning: next-token cross-entropy on the labelled (assistant) tokens.

One optimizer step's loss is the mean over every labelled token of the step: each micro-batch's summed loss is
divided by the whole step's label count, so gradient accumulation gives exactly the gradient of one big batch
(dividing each micro-batch by its own count would weight short examples more)."""

from __future__ import annotations

from ...data.tokenize import tokenize_examples
from ...models.forward import summed_label_loss
from .base import Batches, Objective, StepBatches


class SFT(Objective):
    name = "sft"

    def tokenize(self, tokenizer, examples: list):
        d = self.config.data
        return tokenize_examples(tokenizer, examples, d.max_seq_len, d.train_on, d.truncation)

    def step(self, model, batches: Batches, step: StepBatches) -> tuple[float, int, dict]:
        n_labels = sum(e.n_label_tokens for mb in step.whole for e in mb)
        total, n_tokens = 0.0, 0
        for examples, weight in step.runs():
            summed, _ = summed_label_loss(model, batches.collate(examples), batches.loss_chunk)
            step.backward(summed * (weight / n_labels))
            total += weight * summed.item()
            n_tokens += int(weight) * sum(len(e.input_ids) for e in examples)
        return total / n_labels, n_tokens, {}

    def eval_loss(self, model, batches: Batches, data: list) -> tuple[float, dict]:
        total, count = 0.0, 0
        for examples in batches.chunks(data):
            summed, n = summed_label_loss(model, batches.collate(examples), batches.loss_chunk)
            total, count = total + summed.item(), count + n
        return total / max(count, 1), {}

"""Distillation: the student learns the teacher's whole next-token distribution at every labelled position,
not just the one right token (Hinton et al. 2015):

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(student, labels)

with both distributions softened by the temperature T (the T^2 keeps the gradient scale independent of T).
Teacher logits are computed on the fly, at labelled positions only (like the student's, models/forward.py).
The teacher is another model sharing the student's tokenizer, or, with no teacher given, the base model itself
with the adapter switched off (no second copy of the weights). The eval loss is the plain cross-entropy (SFT's),
so runs with and without distillation compare."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...models.adapters import base_behaviour
from ...models.forward import label_logits
from ...models.loading import load_base
from ...models.segment_attention import use_segment_attention
from .base import Batches, StepBatches
from .sft import SFT


class Teacher:
    """A separate model, or the student itself, whose adapter is then switched off for the teacher's pass."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def logits(self, batch) -> torch.Tensor:
        with base_behaviour(self.model):
            return label_logits(self.model, batch)[0]


def load_teacher(spec: str | None, student, student_tokenizer, dtype: str, device: str) -> Teacher:
    if spec is None:
        if not hasattr(student, "disable_adapter"):
            raise ConfigError("objective.name=distill without objective.teacher distils from the base model with the "
                              "adapter switched off, which needs an adapter method (lora, dora, qlora, adalora). "
                              "Set objective.teacher for full fine-tuning.")
        return Teacher(student)
    teacher = load_base(spec, dtype, device)
    probe = "Distillation needs one vocabulary: The quick brown fox, 12345, éàü."
    if (teacher.model.get_output_embeddings().weight.shape[0] != student.get_output_embeddings().weight.shape[0]
            or teacher.tokenizer(probe)["input_ids"] != student_tokenizer(probe)["input_ids"]):
        raise ConfigError(f"objective.teacher={spec} does not share the student's tokenizer and vocabulary, so their "
                          "token distributions cannot be compared. Pick a teacher from the same model family.")
    teacher.model.requires_grad_(False)
    use_segment_attention(teacher.model)  # the student's packed rows, example by example (as the student runs them)
    return Teacher(teacher.model)


def distill_terms(student_logits, teacher_logits, targets, temperature: float, alpha: float):
    """(summed loss, summed KL term, summed cross-entropy) over the labelled positions."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                  log_target=True, reduction="sum") * t * t
    ce = F.cross_entropy(student_logits, targets, reduction="sum")
    return alpha * kl + (1 - alpha) * ce, kl.detach(), ce.detach()


class Distillation(SFT):
    name = "distill"

    def prepare(self, model, tokenizer, batches, train_data, eval_data, device, note) -> None:
        o = self.config.objective
        self.teacher = load_teacher(o.teacher, model, tokenizer, self.config.model.dtype, device)
        note(f"distillation from {o.teacher or 'the base model (adapter off)'}: T={o.temperature}, alpha={o.alpha}")

    def step(self, model, batches: Batches, step: StepBatches) -> tuple[float, int, dict]:
        o = self.config.objective
        n_labels = sum(e.n_label_tokens for mb in step.whole for e in mb)
        n_tokens = sum(len(e.input_ids) for mb in step.whole for e in mb)
        total = kl_total = ce_total = 0.0
        for examples, _ in step.runs():  # one process (training/distributed.py refuses distillation on several)
            batch = batches.collate(examples)
            student, targets, _ = label_logits(model, batch)
            summed, kl, ce = distill_terms(student, self.teacher.logits(batch), targets, o.temperature, o.alpha)
            step.backward(summed / n_labels)
            total, kl_total, ce_total = total + summed.item(), kl_total + kl.item(), ce_total + ce.item()
        return total / n_labels, n_tokens, {"distill_kl": kl_total / n_labels, "sft_loss": ce_total / n_labels}

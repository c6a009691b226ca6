"""Distillation: the student learns the teacher's whole next-token distribution at every labelled position,
not just the one right token (Hinton et al. 2015):

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(student, labels)

with both distributions softened by the temperature T (the T^2 keeps the gradient scale independent of T).
Teacher logits are computed on the fly, at labelled positions only (like the student's, models/forward.py).
The teacher is another model sharing the student's tokenizer, or, with no teacher given, the base model itself
with the adapter switched off (no second copy of the weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.adapters import base_behaviour
from ..models.forward import label_logits


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
    from ..models import load_base

    teacher = load_base(spec, dtype, device)
    probe = "Distillation needs one vocabulary: The quick brown fox, 12345, éàü."
    if (teacher.model.get_output_embeddings().weight.shape[0] != student.get_output_embeddings().weight.shape[0]
            or teacher.tokenizer(probe)["input_ids"] != student_tokenizer(probe)["input_ids"]):
        raise ConfigError(f"objective.teacher={spec} does not share the student's tokenizer and vocabulary, so their "
                          "token distributions cannot be compared. Pick a teacher from the same model family.")
    teacher.model.requires_grad_(False)
    return Teacher(teacher.model)


def distill_terms(student_logits, teacher_logits, targets, temperature: float, alpha: float):
    """(summed loss, summed KL term, summed cross-entropy) over the labelled positions."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                  log_target=True, reduction="sum") * t * t
    ce = F.cross_entropy(student_logits, targets, reduction="sum")
    return alpha * kl + (1 - alpha) * ce, kl.detach(), ce.detach()

"""Distillation: the student moves towards the teacher's distributions; the teacher must share its vocabulary."""

import json

import pytest
import torch

from conftest import tiny_overrides
from leantune.errors import ConfigError
from tiny_model import build_tiny_model
from leantune import train
from leantune.training.objectives.distill import distill_terms


def steps(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_the_teacher_term_is_zero_when_student_matches_teacher():
    logits = torch.randn(5, 11)
    targets = torch.randint(0, 11, (5,))
    loss, kl, ce = distill_terms(logits, logits.clone(), targets, temperature=2.0, alpha=1.0)
    assert abs(kl.item()) < 1e-5 and abs(loss.item()) < 1e-5 and ce.item() > 0
    other, kl2, _ = distill_terms(logits, torch.randn(5, 11), targets, temperature=2.0, alpha=1.0)
    assert kl2.item() > 0.1


def test_student_moves_towards_a_different_teacher(tiny_model_dir, chat_file, tmp_path):
    # same tokenizer (trained on the same text), different random weights: a real gap to close
    teacher = build_tiny_model(tmp_path / "teacher", seed=1)
    values = {"objective.name": "distill", "objective.teacher": str(teacher), "objective.alpha": 1.0,
              "method.name": "full", "training.lr": 3e-3, "training.max_steps": 12, "method.dropout": 0.0}
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "run", **values))
    kl = [s["distill_kl"] for s in steps(result.run_dir)]
    assert kl[-1] < 0.6 * kl[0], kl


def test_self_distillation_from_the_base_with_the_adapter_off(tiny_model_dir, chat_file, tmp_path):
    values = {"objective.name": "distill", "objective.alpha": 0.5, "training.max_steps": 4}
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **values))
    first = steps(result.run_dir)[0]
    assert first["distill_kl"] == pytest.approx(0.0, abs=1e-4)  # B = 0: the student starts as its teacher
    assert first["sft_loss"] > 0


def test_a_teacher_with_another_vocabulary_is_refused(tiny_model_dir, chat_file, tmp_path):
    teacher = build_tiny_model(tmp_path / "other-vocab", vocab_size=320)
    values = {"objective.name": "distill", "objective.teacher": str(teacher), "training.max_steps": 1}
    with pytest.raises(ConfigError, match="does not share the student's tokenizer"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "run", **values))
